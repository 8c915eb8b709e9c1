"""How much the per-epoch order cache saves in a population step.

Times a vmapped MNIST-1D MLP population (40-100-100-10, batch 128) with three
ways of choosing each member's batch inside the step: the cached per-epoch
permutation jaxtrain uses, a permutation of the whole split recomputed every
step (what a naive implementation does), and contiguous slices (no shuffling;
an upper bound). Warm timings, side by side in one process.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_epoch_order.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from jaxtrain.core import metrics, step as step_lib
from jaxtrain.config import base_config
from jaxtrain.data import pipeline
from jaxtrain.jobs import setup
from jaxtrain.tune import population as pop_lib


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--members", type=int, default=16)
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()

  c = base_config()
  c.data.name, c.model.hidden_sizes, c.optim.name = "mnist1d", (100, 100), "adamw"
  c.train.num_steps = 3000
  data, info = pipeline.create_train_data(c.data, 0)
  r = setup.recipe(c, info)
  model, tx, schedule = r.model, r.tx, r.schedule
  size, batch_size, n = args.members, c.data.batch_size, data.num_examples
  keys = jnp.stack([jax.random.PRNGKey(i) for i in range(size)])

  def cached():
    return jax.jit(pop_lib.make_train_fn(model, tx, schedule, batch_size, "vmap"),
                   donate_argnums=(0, 1, 2))

  def custom(batch_of):
    def member(state, acc, key):
      batch = batch_of(state.step, key)
      return step_lib.accumulate_train_step(model, tx, schedule, state, acc, batch)
    fn = jax.vmap(member)
    return jax.jit(lambda p, a, o, act, d, k: (*fn(p, a, k), o), donate_argnums=(0, 1))

  def per_step(step, key):
    spe = n // batch_size
    order = pipeline.epoch_permutation(key, step // spe, n)
    idx = jax.lax.dynamic_slice_in_dim(order, (step % spe) * batch_size, batch_size)
    return {k: v[idx] for k, v in data.arrays.items()}

  def contiguous(step, key):
    del key
    idx = (step * batch_size) % (n - batch_size) + jnp.arange(batch_size)
    return {k: v[idx] for k, v in data.arrays.items()}

  variants = {"cached per-epoch permutation (jaxtrain)": cached(),
              "permutation recomputed every step": custom(per_step),
              "contiguous slices, no shuffling (bound)": custom(contiguous)}
  print("| batch order | population steps/s | member-steps/s |\n|---|---:|---:|")
  for name, fn in variants.items():
    pop = pop_lib.create(model, tx, data.sample_batch(), r.hparams, keys)
    acc = metrics.new_sums((size,))
    orders = pipeline.new_epoch_order(n, (size,))
    active = jnp.ones((size,), bool)
    pop, acc, orders = fn(pop, acc, orders, active, data.arrays, keys)
    jax.block_until_ready(acc)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      pop, acc, orders = fn(pop, acc, orders, active, data.arrays, keys)
    jax.block_until_ready(acc)
    rate = args.steps / (time.perf_counter() - t0)
    print(f"| {name} | {rate:.0f} | {rate * size:.0f} |")


if __name__ == "__main__":
  main()
