"""Class filtering and few-shot subsets of a split (`data.classes`, `data.examples_per_class`).

Both are views over a random-access source (`SubsetSource`), so the device
and Grain pipelines, evaluation and the tuner see the same examples. Labels
keep their dataset ids (a model for classes 5-9 of digits still has 10
outputs), which lets a run fine-tuned on some classes start from a run trained
on others without touching the head's shape.

The few-shot choice is a pure function of the seed and the split: the same
config picks the same examples on every machine and every rerun.
"""

from __future__ import annotations

import numpy as np

from jaxtrain import errors


def check_config(data_config) -> None:
  """Raises `UserError` for negative, duplicate or non-integer classes or counts."""
  classes = tuple(data_config.classes)
  if any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in classes):
    raise errors.UserError(f"data.classes={classes!r} must be a tuple of class ids >= 0, "
                           "e.g. '(5,6,7,8,9)'")
  if len(set(classes)) != len(classes):
    raise errors.UserError(f"data.classes={classes!r} lists a class twice")
  if data_config.examples_per_class < 0:
    raise errors.UserError(
        f"data.examples_per_class={data_config.examples_per_class} must be >= 0 (0 = all)")


class SubsetSource:
  """The examples `indices` of a random-access source, as a random-access source."""

  def __init__(self, source, indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    return self._source[int(self._indices[i])]

  def __getitems__(self, indices):
    return self._source.__getitems__([int(self._indices[i]) for i in indices])


def select(labels: np.ndarray, classes: tuple[int, ...], per_class: int,
           seed: int) -> np.ndarray:
  """Sorted indices of the examples kept: those of `classes` (all when empty),
  at most `per_class` of each (0 = all) drawn without replacement with `seed`."""
  labels = np.asarray(labels)
  keep = np.isin(labels, classes) if classes else np.ones(len(labels), bool)
  indices = np.flatnonzero(keep)
  if per_class <= 0:
    return indices
  rng = np.random.default_rng([seed, 0x5B5E7])
  chosen = []
  for k in np.unique(labels[indices]):
    of_k = indices[labels[indices] == k]
    chosen.append(rng.permutation(of_k)[:per_class])
  return np.sort(np.concatenate(chosen)) if chosen else indices


def apply(source, info, data_config, split: str, seed: int, train: bool):
  """`source` restricted by data.classes (and, if `train`, data.examples_per_class).

  Raises:
    UserError: a class id outside the dataset, or no example left.
  """
  classes = tuple(data_config.classes)
  per_class = int(data_config.examples_per_class) if train else 0
  if not classes and per_class <= 0:
    return source
  bad = [k for k in classes if k >= info.num_classes]
  if bad:
    raise errors.UserError(
        f"data.classes={classes!r}: {bad} not in {info.name}, which has classes "
        f"0..{info.num_classes - 1}")
  examples = source.__getitems__(range(len(source)))
  labels = np.asarray([ex[info.label_key] for ex in examples])
  indices = select(labels, classes, per_class, seed)
  if len(indices) == 0:
    raise errors.UserError(f"data.classes={classes!r} leaves no example in "
                           f"{info.name}:{split}; choose classes that occur there")
  return SubsetSource(source, indices)
