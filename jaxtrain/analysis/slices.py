"""Which slice each evaluation example belongs to, from `eval.slice_key`.

A slice key is `"label"` (one slice per class), the name of a dataset feature
with one scalar per example (read from the eval split's TFDS source), or
`"module:function"`: a function of the eval split's `(inputs, labels)` numpy
arrays that returns one slice id (int or str) per example, e.g. in an
experiment module. Everything here runs before anything is compiled, so a bad
key is a one-line `UserError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import numpy as np

from jaxtrain import errors

MAX_SLICES = 100


@dataclasses.dataclass(frozen=True)
class Slices:
  """Slice membership of the eval split: `ids[i]` indexes `names`."""
  key: str
  ids: np.ndarray  # int32 [N]
  names: tuple[str, ...]


def resolve(key: str, data_config, inputs: np.ndarray, labels: np.ndarray) -> Slices | None:
  """The slices of the eval split named by `key` ("" = none).

  Raises:
    UserError: unknown feature, unimportable function, wrong number of ids,
      or more than MAX_SLICES distinct values.
  """
  if not key:
    return None
  if key == "label":
    values = labels
  elif ":" in key:
    values = _from_function(key, inputs, labels)
  else:
    values = _from_feature(key, data_config)
  if values.shape != (len(labels),):
    raise errors.UserError(
        f"eval.slice_key={key!r} gave slice ids of shape {values.shape}; need one slice id "
        f"per eval example, shape ({len(labels)},)")
  names, ids = np.unique(values, return_inverse=True)
  if len(names) > MAX_SLICES:
    raise errors.UserError(
        f"eval.slice_key={key!r} has {len(names)} distinct values (at most {MAX_SLICES}); "
        "slice by a coarser feature or bin it in a 'module:function' slice key")
  names = tuple(_name(v) for v in names)
  return Slices(key=key, ids=ids.astype(np.int32).reshape(-1), names=names)


def _name(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  return str(value.item() if hasattr(value, "item") else value)


def _from_function(key: str, inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  module_name, function_name = key.split(":")
  # `python -m jaxtrain.main` runs from the repository root; make its
  # experiment modules importable from there too when called from Python.
  if str(Path.cwd()) not in sys.path:
    sys.path.insert(0, str(Path.cwd()))
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise errors.UserError(f"eval.slice_key={key!r}: cannot import {module_name!r} ({e}); "
                           "give an importable module, e.g. 'experiments.slices:by_ink'") from None
  function = getattr(module, function_name, None)
  if not callable(function):
    raise errors.UserError(f"eval.slice_key={key!r}: module {module_name!r} has no function "
                           f"{function_name!r}")
  try:
    values = function(inputs, labels)
  except Exception as e:  # The user's code: report it on one line.
    raise errors.UserError(f"eval.slice_key={key!r} raised {type(e).__name__}: {e}") from None
  return np.asarray(values)


def _from_feature(key: str, data_config) -> np.ndarray:
  from jaxtrain.data import catalog, subset  # pylint: disable=g-import-not-at-top
  source, info = catalog.split_of(data_config, data_config.eval_split)
  # The same examples as the evaluation (data.classes filters the eval split too).
  source = subset.apply(source, info, data_config, data_config.eval_split, 0, train=False)
  examples = source.__getitems__(range(len(source)))
  features = sorted(examples[0]) if len(examples) else []
  if key not in features:
    raise errors.UserError(
        f"eval.slice_key={key!r} is not a feature of {data_config.name}"
        f"{errors.did_you_mean(key, features)}; features: {', '.join(features)}; or use "
        "'label' or 'module:function'")
  values = [np.asarray(ex[key]) for ex in examples]
  if any(v.ndim for v in values):
    raise errors.UserError(
        f"eval.slice_key={key!r}: feature {key!r} has shape {values[0].shape} per example; "
        "slicing needs one scalar per example (use a 'module:function' slice key)")
  return np.asarray([v.item() for v in values])


def summarize(table: list[dict]) -> dict:
  """The worst slice (lowest accuracy) and the largest accuracy gap between slices.

  `table` rows need "slice", "count" and "accuracy"; empty slices are ignored.
  """
  rows = [r for r in table if r["count"] > 0]
  if not rows:
    return {}
  worst = min(rows, key=lambda r: r["accuracy"])
  best = max(rows, key=lambda r: r["accuracy"])
  return {"worst_slice": worst["slice"], "worst_accuracy": worst["accuracy"],
          "best_slice": best["slice"], "best_accuracy": best["accuracy"],
          "largest_gap": best["accuracy"] - worst["accuracy"]}
