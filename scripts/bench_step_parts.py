"""Where jaxtrain's single-run train step spends the time a bare hand-written step does not.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_step_parts.py --rounds=8
  python scripts/bench_step_parts.py --rounds=2 --steps=50      # smoke run, ~30 s

`scripts/bench_loop.py` compares whole loops; this script takes the loop away and times
only the compiled step of `configs/digits_mlp.py` (MLP 64-256-256-10, batch 128) in one
process, in four variants that share the model, the initial parameters and the
device-resident data:

  hand             optax.adam, the loss and its gradient; nothing else; the batch gathered
                   by jaxtrain's per-epoch order (`pipeline.refresh_order`, a `cond` per step)
  hand_stream      the same step reading a precomputed index stream instead, as
                   scripts/bench_loop.py's hand-written loop does
  jaxtrain         jaxtrain's own step (`core.step.guarded_train_step` after the device batch,
                   as `jobs/setup.programs` builds it): metrics (loss, accuracy, gradient and
                   update norms, learning rate), the non-finite guard of
                   `train.nan_policy=stop`
  no_guard         the same with `train.nan_policy=none`: metrics, no guard
  guard_no_unorm   the guard deciding from the loss and the gradient norm alone: NOT a
                   jaxtrain option (it would apply an update whose norm overflows, see
                   docs/guide/failures.md); it shows what deciding after the update costs,
                   because the update must then be kept and the state selected in a
                   second pass instead of inside the optimizer's fused update

Each variant runs `--steps` steps inside one `lax.scan` (device time, no dispatch) and
`--steps` calls of one step each (with dispatch), round-robin over `--rounds`; medians
of wall and process-CPU microseconds per step.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

from bench_loop import load_config  # The same config loader (scripts/ is on sys.path).

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--steps", type=int, default=200, help="steps per timing (scan length)")
  args = p.parse_args(argv)
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxtrain.core import metrics, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  from jaxtrain.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import setup  # pylint: disable=g-import-not-at-top

  c = load_config(str(REPO / "configs" / "digits_mlp.py"), [])
  s = setup.build(c)
  r, data = s.recipe, s.train_data
  n, bs, key, arrays, model = (data.num_examples, c.data.batch_size, data.data_key,
                               data.arrays, r.model)
  steps = args.steps

  def programs(fn, carry):
    """(scan of `steps` steps, one step) jitted with the carry donated; both warmed up."""
    scan = jax.jit(lambda carry: jax.lax.scan(lambda c, _: (fn(*c), None), carry, None,
                                              length=steps)[0], donate_argnums=0)
    one = jax.jit(lambda carry: fn(*carry), donate_argnums=0)
    carry = jax.block_until_ready(one(scan(carry)))
    return {"scan": scan, "one": one, "carry": carry}

  def fresh_state():
    return jax.jit(lambda: state_lib.create(model, r.tx, data.sample_batch(), r.hparams,
                                            jax.random.PRNGKey(c.seed)))()

  def jaxtrain_variant(policy, guard_fn=step_lib.guard_nonfinite):
    def one(state, acc, guard, order):
      order = pipeline.refresh_order(order, key, state.step, n, bs)
      batch = pipeline.device_batch(arrays, order, state.step, bs)
      new, step_metrics = step_lib.train_step(model, r.tx, r.schedule, state, batch)
      new, step_metrics, guard = guard_fn(policy, state, new, step_metrics, guard)
      return new, metrics.merge(acc, step_metrics), guard, order
    return programs(one, (fresh_state(), metrics.new_sums(), step_lib.new_guard(),
                          pipeline.new_epoch_order(n)))

  def guard_without_update_norm(policy, old, new, step_metrics, guard):
    unorm = step_metrics["update_norm"]
    new, out, guard = step_lib.guard_nonfinite(
        policy, old, new, {**step_metrics, "update_norm": jnp.zeros((), jnp.float32)}, guard)
    return new, {**out, "update_norm": unorm}, guard

  def hand_variant():
    tx = optax.adam(c.optim.learning_rate)
    params = fresh_state().params

    def loss_fn(p, batch):
      logits, _ = model.apply({"params": p}, batch, key, True, {"dropout_rate": 0.0})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    def one(params, opt_state, step, order):
      order = pipeline.refresh_order(order, key, step, n, bs)
      batch = pipeline.device_batch(arrays, order, step, bs)
      updates, opt_state = tx.update(jax.grad(loss_fn)(params, batch), opt_state, params)
      return optax.apply_updates(params, updates), opt_state, step + 1, order
    return programs(one, (params, tx.init(params), jnp.zeros((), jnp.int32),
                          pipeline.new_epoch_order(n)))

  def hand_stream_variant():
    """`hand` reading its batch from a precomputed index stream (scripts/bench_loop.py's
    hand-written loop): no per-step epoch-order `cond`, no order in the carry."""
    tx = optax.adam(c.optim.learning_rate)
    params = fresh_state().params
    per_epoch = n // bs
    epochs = (args.rounds * 2 * steps + 3 * steps) // per_epoch + 2
    stream = jnp.concatenate([pipeline.epoch_permutation(key, e, n)[:per_epoch * bs]
                              for e in range(epochs)]).astype(jnp.int32)

    def loss_fn(p, batch):
      logits, _ = model.apply({"params": p}, batch, key, True, {"dropout_rate": 0.0})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    def one(params, opt_state, step):
      indices = jax.lax.dynamic_slice_in_dim(stream, step * bs, bs)
      batch = {k: jnp.take(v, indices, axis=0) for k, v in arrays.items()}
      updates, opt_state = tx.update(jax.grad(loss_fn)(params, batch), opt_state, params)
      return optax.apply_updates(params, updates), opt_state, step + 1
    return programs(one, (params, tx.init(params), jnp.zeros((), jnp.int32)))

  variants = {"hand": hand_variant(), "hand_stream": hand_stream_variant(), "jaxtrain": jaxtrain_variant("stop"),
              "no_guard": jaxtrain_variant("none"),
              "guard_no_unorm": jaxtrain_variant("stop", guard_without_update_norm)}
  wall = {(k, m): [] for k in variants for m in ("scan", "one")}
  cpu = {key_: [] for key_ in wall}
  for _ in range(args.rounds):
    for name, v in variants.items():
      for mode in ("scan", "one"):
        t0, c0 = time.perf_counter(), time.process_time()
        carry = v["carry"]
        if mode == "scan":
          carry = v["scan"](carry)
        else:
          for _ in range(steps):
            carry = v["one"](carry)
        v["carry"] = jax.block_until_ready(carry)
        wall[(name, mode)].append(1e6 * (time.perf_counter() - t0) / steps)
        cpu[(name, mode)].append(1e6 * (time.process_time() - c0) / steps)
  result = {f"{k} {m}": {"wall_us": statistics.median(wall[(k, m)]),
                         "cpu_us": statistics.median(cpu[(k, m)])} for k, m in wall}
  print("| variant | steps | wall µs/step | vs hand | CPU µs/step |")
  print("|---|---|---:|---:|---:|")
  for mode, label in (("scan", f"{steps} per scan"), ("one", "1 per call")):
    hand = result[f"hand {mode}"]["wall_us"]
    for name in variants:
      row = result[f"{name} {mode}"]
      print(f"| {name} | {label} | {row['wall_us']:.0f} | {hand / row['wall_us']:.3f} | "
            f"{row['cpu_us']:.0f} |")
  # How many separately scheduled kernels one step is (XLA fusions in the compiled program).
  for name, v in variants.items():
    text = v["one"].lower(v["carry"]).compile().as_text()
    entry = text[text.index("ENTRY"):]
    result[f"{name} fusions"] = len(re.findall(r"= \S+ fusion\(", entry))
  print("\nfusions in one step's program: " + ", ".join(
      f"{name} {result[name + ' fusions']}" for name in variants))
  print(f"(jax {jax.__version__}, {os.cpu_count()} CPUs, {args.rounds} rounds)")
  return result


if __name__ == "__main__":
  main()
