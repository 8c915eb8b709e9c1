"""Training and evaluation input: a device-resident path and a Grain path.

Both produce batches `{"inputs": float32[B, ...], "labels": int32[B]}` and
both resume exactly. For the same seed they give the same examples in the same
order (tests/test_data.py), so `data.pipeline=auto` choosing by size never
changes what a run trains on:

- `DeviceData`: the whole split lives on the device; the batch for step `s` is
  gathered inside jit from a per-epoch permutation, so the order is a pure
  function of `(data_key, s)` and the train state's step is all resume needs.
  This is the fast path: no host work per step. The permutation is cached in
  an `EpochOrder` that the step carries and recomputes once per epoch.
- `GrainData`: a Grain `MapDataset` of batches read from the TFDS data source
  (the same per-epoch permutations, a batch-level transform) with a
  checkpointable iterator, for data that does not fit on the device. Its
  iterator state is saved with the train state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import errors
from jaxtrain.data import arrays, catalog, subset

PIPELINES = ("auto", "device", "grain")


def check_config(data_config) -> None:
  """Raises a one-line `UserError` for a bad `data.*` value (nothing is read)."""
  for key in ("batch_size", "eval_batch_size", "device_max_mb"):
    errors.check_positive(f"data.{key}", data_config[key])
  if data_config.pipeline not in PIPELINES:
    raise errors.unknown_choice("data.pipeline", data_config.pipeline, PIPELINES)
  for key in ("validation_fraction", "test_fraction"):
    if not 0 <= data_config[key] < 1:
      raise errors.UserError(f"data.{key}={data_config[key]} must be in [0, 1) (0: no split "
                             "carved from train)")
  catalog.import_modules(data_config.import_modules)  # A user's TFDS builders register.
  catalog.check_name(data_config.name)
  carved = [k for k in ("validation_fraction", "test_fraction") if data_config[k]]
  if carved and not arrays.is_reference(data_config.name):
    raise errors.UserError(
        f"data.{carved[0]} carves a split from your own arrays (npz:, csv:, module:function); "
        f"for the TFDS dataset {data_config.name!r} slice its splits instead, e.g. "
        "data.train_split='train[:90%]' data.eval_split='train[90%:]'")
  subset.check_config(data_config)


class EpochOrder(NamedTuple):
  """The permutation of the current epoch, computed once per epoch.

  A cache, not state: it is a pure function of `(data_key, epoch)`, so it is
  never checkpointed; `epoch = -1` means "not computed yet".
  """
  order: jax.Array  # int32 [N] (with leading member axes in a population)
  epoch: jax.Array  # int32 []


def new_epoch_order(num_examples: int, leading: tuple[int, ...] = ()) -> EpochOrder:
  """An empty cache (host arrays: made without a device program)."""
  return EpochOrder(np.zeros(leading + (num_examples,), np.int32),
                    np.full(leading, -1, np.int32))


def base_data_key(seed) -> jax.Array:
  """fold_in(PRNGKey(seed), 0x0DA7A): a run's data-order key (pure; `seed` may be traced)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 0x0DA7A)


_data_key = jax.jit(base_data_key)


def data_key_of(seed: int, member: int = -1) -> jax.Array:
  """The key of a run's data order: fold_in(PRNGKey(seed), 0x0DA7A), as one program;
  for member `member` >= 0 of a population with per-member data orders (or a single
  run with tune.member set), `member_data_key` of it."""
  key = _data_key(np.int32(seed))
  return key if member < 0 else member_data_key(key, member)


def member_data_key(data_key: jax.Array, member) -> jax.Array:
  """Member `member`'s data-order key in a population with per-member data orders."""
  return jax.random.fold_in(data_key, member)


def epoch_permutation(data_key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
  """The order of the examples in `epoch`: a permutation seeded by (data_key, epoch)."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def refresh_order(cache: EpochOrder, data_key: jax.Array, step: jax.Array,
                  num_examples: int, batch_size: int) -> EpochOrder:
  """`cache` for the epoch of `step`, recomputing the permutation only when it changes.

  Sorting the whole split every step costs several times a small model's step
  (measured: 7x for a 16-member MNIST-1D population), hence the cache.
  """
  epoch = step // (num_examples // batch_size)
  return jax.lax.cond(
      epoch != cache.epoch,
      lambda: EpochOrder(epoch_permutation(data_key, epoch, num_examples).astype(jnp.int32),
                         epoch.astype(jnp.int32)),
      lambda: cache)


def refresh_orders(cache: EpochOrder, data_keys: jax.Array, steps: jax.Array,
                   num_examples: int, batch_size: int) -> EpochOrder:
  """`refresh_order` for a population (leading member axis on every argument).

  The branch is taken for the whole population at once (a `cond` inside the
  member vmap would compute the permutation every step), and only members whose
  epoch changed take the new permutation.
  """
  epochs = (steps // (num_examples // batch_size)).astype(jnp.int32)
  stale = epochs != cache.epoch

  def refresh():
    fresh = jax.vmap(epoch_permutation, in_axes=(0, 0, None))(data_keys, epochs, num_examples)
    return EpochOrder(jnp.where(stale[:, None], fresh.astype(jnp.int32), cache.order), epochs)

  return jax.lax.cond(jnp.any(stale), refresh, lambda: cache)


def device_batch(data: dict[str, jax.Array], order: EpochOrder, step: jax.Array,
                 batch_size: int) -> dict[str, jax.Array]:
  """The batch for `step` from device-resident `data` (pure; call inside jit).

  `order` must hold the permutation of the epoch of `step` (see
  `refresh_order`). Each epoch is a fresh permutation of the split seeded by
  `(data_key, epoch)`; the last incomplete batch of an epoch is dropped, as in
  the Grain path.
  """
  num_examples = data["labels"].shape[0]
  start = (step % (num_examples // batch_size)) * batch_size
  indices = jax.lax.dynamic_slice_in_dim(order.order, start, batch_size)
  return {k: jnp.take(v, indices, axis=0) for k, v in data.items()}


@dataclasses.dataclass
class DeviceData:
  """A training split held on the device (see `device_batch`)."""
  arrays: dict[str, jax.Array]
  seed: int
  batch_size: int
  sample: dict[str, np.ndarray]  # The first batch_size examples, on the host.
  kind: str = "device"
  member: int = -1  # >= 0: the data order of this member of a population (data_key_of).

  @functools.cached_property
  def data_key(self) -> jax.Array:
    return data_key_of(self.seed, self.member)

  @property
  def num_examples(self) -> int:
    return int(self.arrays["labels"].shape[0])

  def sample_batch(self) -> dict[str, np.ndarray]:
    return dict(self.sample)


class GrainData:
  """A Grain pipeline over a TFDS data source with a checkpointable iterator.

  Batch `s` holds the examples the device path gathers at step `s` for the same
  seed, in the same order: epoch `e` is `epoch_permutation(data_key, e, n)`, cut
  into `n // batch_size` batches (its last partial batch dropped, so every example
  is seen at most once an epoch). Grain iterates the steps (`MapDataset.range`)
  and checkpoints the position; each step reads its rows from the source in one
  batched call. The order is made here, not with Grain's own shuffle, so that the
  two pipelines train on the same sequence whichever `data.pipeline` picks. With
  several processes each reads its contiguous block of the global batch's rows.
  """

  kind = "grain"

  def __init__(self, source, info: catalog.DatasetInfo, batch_size: int,
               data_key: jax.Array, permute_seed: int = 0):
    import grain  # pylint: disable=g-import-not-at-top
    self.batch_size = batch_size
    n = len(source)
    per_epoch = n // batch_size
    rows = batch_size // jax.process_count()
    first_row = jax.process_index() * rows
    key = np.asarray(jax.device_get(data_key))
    cache = {}  # epoch -> permutation: one device call per epoch, not per batch.

    def order_of(epoch: int) -> np.ndarray:
      if epoch not in cache:
        cache.clear()
        cache[epoch] = np.asarray(epoch_permutation(key, epoch, n))
      return cache[epoch]

    def read(step: int) -> dict[str, np.ndarray]:
      start = (step % per_epoch) * batch_size + first_row
      indices = order_of(step // per_epoch)[start:start + rows]
      examples = source.__getitems__(indices.tolist())
      inputs = catalog.to_model_inputs(np.stack([ex[info.input_key] for ex in examples]))
      return {"inputs": permute_features(inputs, permute_seed),
              "labels": np.asarray([ex[info.label_key] for ex in examples], np.int32)}

    self.iterator = iter(grain.MapDataset.range(2**62).map(read))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iterator

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self.iterator)

  def sample_batch(self) -> dict[str, np.ndarray]:
    # Peek without advancing: copy the state, read one batch, put it back.
    state = self.iterator.get_state()
    batch = next(self.iterator)
    self.iterator.set_state(state)
    return batch


def permute_features(inputs: np.ndarray, seed: int) -> np.ndarray:
  """Inputs with their feature positions shuffled by a permutation fixed by `seed`.

  The same permutation for every example and split (seed 0 = unchanged): a
  model that relies on spatial order loses it, one that does not is unaffected.
  """
  if seed <= 0:
    return inputs
  flat = inputs.reshape(inputs.shape[0], -1)
  order = np.random.default_rng(seed).permutation(flat.shape[1])
  return flat[:, order].reshape(inputs.shape)


def choose_pipeline(requested: str, num_examples: int, input_shape, max_mb: int) -> str:
  """'device' or 'grain' for data.pipeline='auto' by the split's size in float32."""
  if requested != "auto":
    return requested
  megabytes = num_examples * math.prod(input_shape) * 4 / 2**20
  return "device" if megabytes <= max_mb else "grain"


def create_train_data(data_config, seed: int, member: int = -1):
  """Opens the training split; returns (DeviceData or GrainData, DatasetInfo). The
  examples depend on `seed` alone; their order on (`seed`, `member`): `data_key_of`."""
  source, info = catalog.split_of(data_config, data_config.train_split)
  source = subset.apply(source, info, data_config, data_config.train_split, seed, train=True)
  kind = choose_pipeline(data_config.pipeline, len(source), info.input_shape,
                         data_config.device_max_mb)
  if len(source) < data_config.batch_size:
    raise errors.UserError(
        f"data.batch_size={data_config.batch_size} is larger than the "
        f"{len(source)} examples of {data_config.name}:{data_config.train_split}; "
        "lower data.batch_size")
  if kind == "device":  # Both paths' order comes from data_key_of(seed).
    inputs, labels = catalog.load_arrays(source, info)
    inputs = permute_features(inputs, data_config.permute_features_seed)
    host = {"inputs": np.asarray(inputs), "labels": np.asarray(labels, np.int32)}
    sample = {k: v[:data_config.batch_size].copy() for k, v in host.items()}
    return DeviceData(jax.device_put(host), seed, data_config.batch_size, sample,
                      member=member), info
  return GrainData(source, info, data_config.batch_size, data_key_of(seed, member),
                   data_config.permute_features_seed), info


def load_eval_arrays(data_config, split: str | None = None, *, raw: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The evaluation split (or `split`, read as an evaluation split is: `data.classes`
  applied, every example kept) as host numpy arrays (inputs, labels). With `raw` the
  inputs are as the dataset stores them, before `model_inputs`."""
  split = split or data_config.eval_split
  source, info = catalog.split_of(data_config, split)
  source = subset.apply(source, info, data_config, split, 0, train=False)
  inputs, labels = catalog.load_arrays(source, info, raw=True)
  return (inputs if raw else model_inputs(inputs, data_config)), labels


def model_inputs(raw_inputs: np.ndarray, data_config) -> np.ndarray:
  """A batch of inputs as the dataset stores them, as the model takes them: scaled or
  cast by `catalog.to_model_inputs`, then permuted by `data.permute_features_seed`."""
  return permute_features(catalog.to_model_inputs(raw_inputs), data_config.permute_features_seed)


def eval_batches(inputs: np.ndarray, labels: np.ndarray, batch_size: int):
  """Yields fixed-shape batches with a `mask`; the last one is zero-padded.

  Fixed shapes mean one compiled eval step however the split divides.
  """
  batch_size = min(batch_size, len(labels))
  for start in range(0, len(labels), batch_size):
    x, y = inputs[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - len(y)
    mask = np.ones(batch_size, np.float32)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])  # Labels may be [B, T].
      mask[batch_size - pad:] = 0.0
    yield {"inputs": x, "labels": y, "mask": mask}
