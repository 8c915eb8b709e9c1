"""The single-run train program as `jobs/setup.programs` compiles it, against the same
function compiled other ways: which compile option costs the loop its time.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_program_options.py --rounds=7
  python scripts/bench_program_options.py --rounds=2 --steps=200     # smoke run

`scripts/bench_step_parts.py` found jaxtrain's step, compiled with its data as constants and
its whole carry donated, as fast as a bare step; `scripts/bench_loop.py` finds `train.run`
slower. Both call the same Python function (`train_one` in `jobs/setup.programs`); this
script calls it, one step per call in a Python loop, as:

  as_built          `prog.train`: `placement.jit_train` (in/out shardings on the mesh; state,
                    sums and order donated, the guard not)
  no_shardings      `jax.jit` of the same function, the same donation, no shardings
  donate_guard      no shardings, the guard donated too
  data_constant     no shardings, the guard donated, the split and its key closed over as
                    constants (as bench_step_parts compiles it)

Config: `configs/digits_mlp.py` on one device. Variants run round-robin, `--steps` calls
each per round; medians of steps/s and of process-CPU µs per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench_loop import load_config  # The same config loader (scripts/ is on sys.path).

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--steps", type=int, default=1000, help="calls (one step each) per timing")
  args = p.parse_args(argv)
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import setup  # pylint: disable=g-import-not-at-top

  c = load_config(str(REPO / "configs" / "digits_mlp.py"), [])
  s = setup.build(c)
  prog = setup.programs(s)
  train_one = prog.train.__wrapped__  # The Python function placement.jit_train compiled.

  def with_constant_data(data_args):
    split, data_key = data_args
    def fn(state, acc, guard, order):
      return train_one(state, acc, guard, order, split, data_key)
    return jax.jit(fn, donate_argnums=(0, 1, 2, 3))

  variants = {}
  for name in ("as_built", "no_shardings", "donate_guard", "data_constant"):
    acc, guard, order, data_args = setup.initial_args(s)
    state = prog.create(s.train_data.sample_batch(), np.int32(c.seed))
    if name == "data_constant":
      call, extra = with_constant_data(data_args), ()
    else:
      call = {"as_built": prog.train,
              "no_shardings": jax.jit(train_one, donate_argnums=(0, 1, 3)),
              "donate_guard": jax.jit(train_one, donate_argnums=(0, 1, 2, 3))}[name]
      extra = tuple(data_args)
    variants[name] = {"call": call, "extra": extra, "carry": [state, acc, guard, order]}

  def run(v, steps):
    state, acc, guard, order = v["carry"]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
      state, acc, guard, order = v["call"](state, acc, guard, order, *v["extra"])
    jax.block_until_ready((state, acc, guard, order))
    v["carry"] = [state, acc, guard, order]
    return steps / (time.perf_counter() - t0), 1e6 * (time.process_time() - c0) / steps

  for v in variants.values():
    run(v, 50)  # Compile and warm up.
  rates = {k: [] for k in variants}
  cpu = {k: [] for k in variants}
  for _ in range(args.rounds):
    for name, v in variants.items():
      rate, cpu_us = run(v, args.steps)
      rates[name].append(rate)
      cpu[name].append(cpu_us)
  base = statistics.median(rates["as_built"])
  print("| program | steps/s (median) | vs as_built | CPU µs/step | per round |")
  print("|---|---:|---:|---:|---|")
  result = {}
  for name in variants:
    med = statistics.median(rates[name])
    result[name] = {"steps_per_sec": med, "cpu_us": statistics.median(cpu[name]),
                    "rounds": rates[name]}
    print(f"| {name} | {med:.0f} | {med / base:.3f} | {result[name]['cpu_us']:.0f} | "
          f"{' / '.join(f'{r:.0f}' for r in rates[name])} |")
  return result


if __name__ == "__main__":
  main()
