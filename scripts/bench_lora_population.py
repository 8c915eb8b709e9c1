"""K LoRA fine-tunes of the char-LM transformer: one population program over one shared
base against K sequential single LoRA runs (memory and throughput).

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_lora_population.py --ks=1,4,8

The model is configs/charlm_transformer.py (2 blocks, width 128, batch 32 x 128 bytes)
with adapters on every kernel (the default model.lora_targets), member ranks cycling
through --ranks and padded to the largest. For each K:

- memory: the compiled population program's `memory_analysis()` (arguments: the stacked
  members' own state + the base once + the data; temporaries: activations and the
  per-member merged kernels), next to the same population step with the base stacked
  in every member (the engine before the base was shared), and the bytes of the base
  and of one member's own state;
- throughput: member-steps per second of the population (tune.steps_per_call steps per
  dispatch, the tuner's own Phase program) against K single LoRA runs one after another
  (the single-run program, setup.programs, the same steps per dispatch), in alternating
  rounds; the ratio is the sequential time over the population time for the same
  member-steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jaxtrain import config as config_lib  # noqa: E402
from jaxtrain.configs import charlm_transformer  # noqa: E402
from jaxtrain.core import metrics  # noqa: E402
from jaxtrain.data import pipeline  # noqa: E402
from jaxtrain.jobs import setup  # noqa: E402
from jaxtrain.tune import phase as phase_lib, population as pop_lib  # noqa: E402


def _config(ranks, steps_per_call: int):
  c = charlm_transformer.get_config()
  c.model.lora_rank = max(ranks)
  c.model.lora_alpha = 16.0
  c.train.num_steps = 1000
  c.train.eval_every_steps = 100
  c.checkpoint.every_steps = 1000
  c.tune.strategy = "random"
  c.tune.steps_per_call = steps_per_call
  c.tune.space.model = dict(lora_rank=f"choice{tuple(ranks)}")
  c.mesh.num_devices = 1
  c.mesh.pop = 1
  return c


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _population(c, s, size: int, ranks):
  members = [{"id": i, "settings": {"model.lora_rank": ranks[i % len(ranks)]},
              "active": True} for i in range(size)]
  phase = phase_lib.Phase(c, members[0]["settings"], s.info, s.train_data, [], [], size)
  return phase, members


def _stacked_program(c, s, phase, size: int):
  """The same population step with the base stacked in every member (the engine before
  the base was shared): (jitted fn, abstract arguments)."""
  r = setup.recipe(phase.config, s.info, searched=phase.lora_keys)
  rngs = jax.ShapeDtypeStruct((size, 2), np.uint32)
  pop = jax.eval_shape(lambda k: pop_lib.create(r.model, r.tx, s.train_data.sample_batch(),
                                                r.hparams, k), rngs)
  acc = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, metrics.new_sums((size,))))
  orders = jax.eval_shape(lambda: pipeline.new_epoch_order(s.train_data.num_examples, (size,)))
  fn = jax.jit(pop_lib.make_train_fn(r.model, r.tx, r.schedule, c.data.batch_size, "vmap",
                                     phase.steps_per_call), donate_argnums=(0, 1, 2))
  return fn, (pop, acc, orders, None, s.train_data.arrays, rngs)


def memory(c, s, size: int, ranks) -> dict:
  phase, members = _population(c, s, size, ranks)
  fn, args = phase.train_program(members)
  out = {"base_mb": _nbytes(args[-1]) / 2**20,
         "member_state_mb": _nbytes(args[0]) / size / 2**20}
  for name, (f, a) in (("shared", (fn, args)), ("stacked", _stacked_program(c, s, phase, size))):
    m = f.lower(*a).compile().memory_analysis()
    out[name] = {"argument_mb": m.argument_size_in_bytes / 2**20,
                 "temp_mb": m.temp_size_in_bytes / 2**20}
  return out


def _time_population(phase, members, calls: int) -> float:
  pop, acc = phase.initial_state(members)
  pop, acc = phase.train(pop, acc, None)  # Compiled and warm.
  jax.block_until_ready(pop)
  t0 = time.perf_counter()
  for _ in range(calls):
    pop, acc = phase.train(pop, acc, None)
  jax.block_until_ready(pop)
  return time.perf_counter() - t0


class _Single:
  """One single LoRA run at `rank` (the single-run programs), ready to time."""

  def __init__(self, c, rank: int, steps_per_call: int):
    single = config_lib.with_settings(c, {"model.lora_rank": rank,
                                          "train.steps_per_call": steps_per_call})
    with single.unlocked():
      single.tune.strategy = "none"
      single.tune.space = ml_collections.ConfigDict()
    self.s = setup.build(single)
    self.prog = setup.programs(self.s)
    self.state = self.prog.create(self.s.train_data.sample_batch(), np.int32(0))
    self.acc, self.guard, self.order, self.data_args = setup.initial_args(self.s)
    self.call()  # Compiled and warm.
    jax.block_until_ready(self.state)

  def call(self):
    self.state, self.acc, self.guard, self.order = self.prog.train_many(
        self.state, self.acc, self.guard, self.order, *self.data_args)


def _time_sequential(singles, calls: int) -> float:
  t0 = time.perf_counter()
  for single in singles:  # K fine-tunes, one after another.
    for _ in range(calls):
      single.call()
    jax.block_until_ready(single.state)
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--ks", default="1,4,8")
  parser.add_argument("--ranks", default="2,4,8")
  parser.add_argument("--steps_per_call", type=int, default=10)
  parser.add_argument("--calls", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  ks = [int(k) for k in args.ks.split(",")]
  ranks = tuple(int(r) for r in args.ranks.split(","))
  c = _config(ranks, args.steps_per_call)
  s = setup.build(c, data_pipeline="device", placement=False)
  singles = {r: _Single(c, r, args.steps_per_call) for r in ranks}
  results = {"backend": jax.default_backend(), "ranks": ranks,
             "steps_per_call": args.steps_per_call, "calls": args.calls, "ks": {}}
  for k in ks:
    row = {"memory": memory(c, s, k, ranks)}
    phase, members = _population(c, s, k, ranks)
    seq_members = [singles[ranks[i % len(ranks)]] for i in range(k)]
    pop_times, seq_times = [], []
    for _ in range(args.rounds):  # Alternating: the machine's load hits both alike.
      pop_times.append(_time_population(phase, members, args.calls))
      seq_times.append(_time_sequential(seq_members, args.calls))
    member_steps = k * args.calls * args.steps_per_call
    pop_t, seq_t = statistics.median(pop_times), statistics.median(seq_times)
    row.update(population_member_steps_per_sec=member_steps / pop_t,
               sequential_member_steps_per_sec=member_steps / seq_t,
               speedup=seq_t / pop_t,
               round_speedups=[q / p for p, q in zip(pop_times, seq_times)])
    results["ks"][k] = row
    print(json.dumps({k: row}), flush=True)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
