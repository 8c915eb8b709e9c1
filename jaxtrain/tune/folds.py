"""Cross-validation folds as a population (pure): members differ only by fold mask.

Member `f` of a k-fold population trains on every training example outside
fold `f`, in its own data order over those examples, and is scored on fold `f`.
All members start from the same initialization (the config's seed), so a member
is exactly the single run that would train on its examples alone: the batch of
step `s` is `subset[order[s]]` with `subset` the member's examples in index
order and `order` the epoch permutation `pipeline.refresh_order` gives a single
run over `len(subset)` examples. Here it is gathered as `data[train_index[order]]`,
which selects the same rows without a copy of the split per member.

A holdout split is the one-member case: the held-out set is a seeded random
`fraction` of the training split.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.core import step as step_lib
from jaxtrain.data import pipeline

_FOLD_SEED = 0xC5  # Separates the fold assignment from other uses of the seed.


def held_out_masks(num_examples: int, seed: int, folds: int = 0,
                   holdout_fraction: float = 0.0, labels: np.ndarray | None = None
                   ) -> np.ndarray:
  """bool [P, n]: which examples member p holds out (k folds: P = k; holdout: P = 1).

  k folds partition a seeded permutation of the examples into k contiguous
  chunks whose sizes differ by at most one (`np.array_split`), so every
  example is held out by exactly one member. With `labels` the split is
  stratified: every fold (or the holdout) keeps the class proportions, by
  scikit-learn's `StratifiedKFold` / `train_test_split(stratify=...)`.
  """
  if labels is not None:
    return _stratified_masks(np.asarray(labels), seed, folds, holdout_fraction)
  order = np.random.default_rng([seed, _FOLD_SEED]).permutation(num_examples)
  if folds:
    masks = np.zeros((folds, num_examples), bool)
    for f, chunk in enumerate(np.array_split(order, folds)):
      masks[f, chunk] = True
    return masks
  masks = np.zeros((1, num_examples), bool)
  masks[0, order[:int(round(holdout_fraction * num_examples))]] = True
  return masks


def _stratified_masks(labels: np.ndarray, seed: int, folds: int,
                      holdout_fraction: float) -> np.ndarray:
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  n = len(labels)
  random_state = int(np.random.default_rng([seed, _FOLD_SEED]).integers(2**31 - 1))
  if folds:
    splitter = model_selection.StratifiedKFold(folds, shuffle=True, random_state=random_state)
    masks = np.zeros((folds, n), bool)
    for f, (_, held) in enumerate(splitter.split(np.zeros(n), labels)):
      masks[f, held] = True
    return masks
  _, held = model_selection.train_test_split(
      np.arange(n), test_size=int(round(holdout_fraction * n)), stratify=labels,
      random_state=random_state)
  masks = np.zeros((1, n), bool)
  masks[0, held] = True
  return masks


def train_indices(held_out_PxN: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
  """Each member's training examples in index order, padded: (int32 [P, M], counts)."""
  counts = tuple(int(n) for n in (~held_out_PxN).sum(axis=1))
  index = np.zeros((held_out_PxN.shape[0], max(counts)), np.int32)
  for p, row in enumerate(~held_out_PxN):
    index[p, :counts[p]] = np.flatnonzero(row)
  return index, counts


def new_orders(counts: tuple[int, ...]) -> pipeline.EpochOrder:
  return pipeline.new_epoch_order(max(counts), (len(counts),))


def make_train_fn(model, tx, schedule, batch_size: int, counts: tuple[int, ...]) -> Callable:
  """Returns `fn(pop, acc, orders, data, train_index_PxM, data_keys_P) -> (pop, acc, orders)`.

  One vmapped step of every fold member. Members' training sets can differ in
  size by one example, so each member's epoch permutation is refreshed with
  its own static size (a Python loop over the k members; the permutation is
  recomputed only when that member's epoch changes) and padded to the largest.
  Not jitted (the caller jits and donates).
  """
  steps_per_epoch = jnp.asarray([n // batch_size for n in counts], jnp.int32)

  def refresh(orders, data_keys, steps):
    out_order, out_epoch = [], []
    for p, n in enumerate(counts):
      mine = pipeline.EpochOrder(orders.order[p, :n], orders.epoch[p])
      mine = pipeline.refresh_order(mine, data_keys[p], steps[p], n, batch_size)
      out_order.append(jnp.pad(mine.order, (0, orders.order.shape[1] - n)))
      out_epoch.append(mine.epoch)
    return pipeline.EpochOrder(jnp.stack(out_order), jnp.stack(out_epoch))

  def member_step(state, acc, order, index, per_epoch, data):
    start = (state.step % per_epoch) * batch_size
    positions = jax.lax.dynamic_slice_in_dim(order.order, start, batch_size)
    rows = index[positions]  # The subset's rows as rows of the whole split.
    batch = {k: jnp.take(v, rows, axis=0) for k, v in data.items()}
    return step_lib.accumulate_train_step(model, tx, schedule, state, acc, batch)

  members_step = jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, None))

  def fn(pop, acc, orders, data, train_index, data_keys):
    orders = refresh(orders, data_keys, pop.step)
    pop, acc = members_step(pop, acc, orders, train_index, steps_per_epoch, data)
    return pop, acc, orders

  return fn


def make_eval_fn(model) -> Callable:
  """Returns `fn(pop, batch, held_out_PxB) -> metric sums [P]`: each member on its fold.

  The batch (a slice of the training split with its padding `mask`) is shared;
  each member counts only the examples it held out.
  """
  def member_eval(state, batch, held_out_B):
    mask = batch["mask"] * held_out_B.astype(jnp.float32)
    return step_lib.eval_step(model, state, {**batch, "mask": mask})

  return jax.vmap(member_eval, in_axes=(0, None, 0))
