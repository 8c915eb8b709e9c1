"""How a population's members execute: one vmapped program, or one at a time.

`tune.execution`:

- `vmap`: `population.make_train_fn`, every member in one batched program.
- `map`: `HostLoop`, members one after another through ONE compiled, donated
  single-member step (`population.make_member_train_fn`), called from a Python
  loop with the member index as an array argument, so it compiles once for any
  population size and inactive members (stopped, culled) cost nothing.
- `auto`: a measured rule (`choose`): `map` for convolutional models on the CPU
  backend, `vmap` otherwise. On CPU, vmapped convolutions become grouped
  convolutions that ran 3-5x slower than members one after another, while the
  host loop ran at the speed of N separate single runs (docs/BENCHMARKS.md,
  "Conv check"); for MLPs vmap was 1.3-1.6x faster than N single runs. Timing a
  few steps of each at start-up was not chosen: it compiles both programs (for
  a CNN 3-10 s each, more than a short search) and its answer changes from run
  to run on a loaded machine, which would make a resumed search differ from an
  uninterrupted one. The choice is recorded in `tune/result.json`
  (`execution`, per phase) and in every `metrics.jsonl` record.

Exploit, explore, culls and refills act on the stacked population on device
the same way for both executions; only the train step differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.tune import population as pop_lib

# Models made of convolutions. `cnn` is measured (docs/BENCHMARKS.md); `resnet` is
# included for the same reason (its convolutions become grouped under vmap)
# without a measurement of its own. `vit`'s one patch convolution is not counted.
CONV_MODELS = ("cnn", "resnet")


def choose(requested: str, model_name: str, backend: str | None = None) -> str:
  """'vmap' or 'map' for `tune.execution=requested` (see the module docstring)."""
  if requested != "auto":
    return requested
  backend = backend or jax.default_backend()
  return "map" if model_name in CONV_MODELS and backend == "cpu" else "vmap"


def cpu_devices_for(config, cores: int | None = None) -> int:
  """The CPU devices a command-line run of `config` asks for (`mesh.cpu_devices`; the
  command line applies it with `sharding.use_cpu_devices` before JAX starts).

  Auto (0): a tuning population trained with vmap gets one device per core, at most
  the largest divisor of `tune.population_size`, so its members split over the cores
  (`sharding.population_mesh` puts every device on `pop`). On the CPU backend one small
  model's step keeps about one core busy, vmapped members included, so the members'
  halves on two cores ran about 1.7-2x faster than the whole population on one device
  (docs/BENCHMARKS.md, "Members split over the CPU cores"). Everything else gets one
  device: single runs and cross-validation (their numbers stay those of one device),
  convolutional members run one at a time (`map`), a mesh of the user's own, and
  `tune.shard_population=False`. The split is a property of the process: results
  equal one device's to float rounding, not bitwise (a sharded program may sum in
  another order), so a search resumed with another split is not bitwise that of an
  uninterrupted one.
  """
  m = config.mesh
  if m.cpu_devices:
    return int(m.cpu_devices)
  if config.tune.strategy == "none" or not config.tune.shard_population:
    return 1
  if config.tune.execution == "map" or (config.tune.execution == "auto"
                                        and config.model.name in CONV_MODELS):
    return 1
  if (m.data, m.fsdp, m.model, m.pop, m.num_devices) != (-1, 1, 1, 1, 0):
    return 1  # The user laid out the devices.
  cores = cores or len(os.sched_getaffinity(0))
  size = int(config.tune.population_size)
  return max(d for d in range(1, max(1, min(cores, size)) + 1) if size % d == 0)


class HostLoop:
  """Members one after another through one jitted, donated member step.

  `train(pop, acc, orders, active, data, data_keys)` has the signature of the
  vmapped step (`population.make_train_fn`): only active members are stepped
  (`active` None: all of them).
  """

  def __init__(self, model, tx, schedule, batch_size: int, steps_per_call: int = 1,
               unroll: int | bool = 1, on_trace: Callable[[], None] | None = None):
    member_fn = pop_lib.make_member_train_fn(model, tx, schedule, batch_size, steps_per_call,
                                             unroll)

    def traced(*args):
      if on_trace is not None:
        on_trace()
      return member_fn(*args)

    self._step = jax.jit(traced, donate_argnums=(0, 1, 2))
    # (pop, acc, orders, member index, data, data_keys, shared collections)
    self.member_step = self._step
    # Index arrays made once: a fresh host scalar per call would cost a transfer.
    self._indices: list[jax.Array] = []

  def train(self, pop, acc, orders, active, data, data_keys, shared=None):
    if active is None:
      active = np.ones(orders.epoch.shape[0], bool)
    active = np.asarray(jax.device_get(active), bool)
    while len(self._indices) < len(active):
      self._indices.append(jnp.asarray(len(self._indices), jnp.int32))
    for i in np.flatnonzero(active):
      pop, acc, orders = self._step(pop, acc, orders, self._indices[i], data, data_keys,
                                    shared)
    return pop, acc, orders
