"""Finding datasets: the embedded ones and the TFDS catalog, one path for both.

Every dataset is opened with `tfds.data_source` from an array_record copy in
the data dir. The embedded datasets (`digits`, `mnist1d`) are prepared there on
first use from the Python packages that ship them; catalog datasets (`mnist`,
`cifar10`, ...) must have been prepared by the user, since nothing downloads at
run time. Every failure becomes one `UserError` line that says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
from pathlib import Path

import numpy as np

from jaxtrain import errors, redact
from jaxtrain.data import arrays

EMBEDDED = ("digits", "mnist1d", "charlm")


def default_data_dir() -> str:
  """$JAXTRAIN_DATA_DIR, else ~/.cache/jaxtrain/tensorflow_datasets."""
  env = os.environ.get("JAXTRAIN_DATA_DIR")
  if env:
    return env
  return str(Path.home() / ".cache" / "jaxtrain" / "tensorflow_datasets")


@functools.cache
def _catalog_names() -> tuple[str, ...]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jaxtrain.data import builders  # pylint: disable=g-import-not-at-top,unused-import
  # Community datasets are excluded: listing them goes to the network.
  return tuple(tfds.list_builders(with_community_datasets=False))


_USER_BUILDERS: set[str] = set()  # Builders defined in data.import_modules: prepared here.


def import_modules(modules) -> None:
  """Imports `data.import_modules` so that the TFDS builders they define register
  themselves, and notes those builders: their datasets are prepared locally on first
  use, as the embedded ones are (nothing is downloaded).

  Raises:
    UserError: a module that does not import (one line naming it).
  """
  import importlib  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for name in modules:
    try:
      module = importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except  (any error in the user's module)
      raise errors.UserError(
          f"data.import_modules: cannot import {name!r} ({type(e).__name__}: "
          f"{_first_line(e)}); put it on PYTHONPATH, in the current directory or beside the "
          "config file") from None
    # By the classes the module defines (not by what the import added: a module imported
    # before, e.g. in a notebook, registers nothing new).
    _USER_BUILDERS.update(
        obj.name for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, tfds.core.DatasetBuilder)
        and obj.__module__ == module.__name__ and getattr(obj, "name", None))


def check_name(name: str) -> None:
  """Raises a `UserError` unless `name` is an embedded or TFDS catalog dataset, a
  builder of `data.import_modules`, or a user's arrays ('npz:PATH', data/arrays.py)."""
  if arrays.is_reference(name):
    return
  base = name.split("/")[0].split(":")[0]
  if base in EMBEDDED or base in _USER_BUILDERS:  # (TFDS lists only its own catalog.)
    return
  names = _catalog_names()
  if base not in names:
    raise errors.UserError(
        f"data.name={name!r} is not a known dataset{errors.did_you_mean(base, names)}; "
        f"embedded: {', '.join(EMBEDDED)}; or any TFDS catalog name "
        "(e.g. mnist, cifar10) prepared in array_record format")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the loop needs to know about a dataset."""
  name: str
  input_key: str
  label_key: str
  num_classes: int
  input_shape: tuple[int, ...]
  input_dtype: str
  label_shape: tuple[int, ...] = ()  # (T,) for per-token labels (language modelling).
  # What the stored inputs are (the builder's description: e.g. digits' pixels / 16).
  # At batch time `to_model_inputs` adds only uint8 -> [0, 1] scaling.
  description: str = ""


def _prepare_hint(name: str, data_dir: str) -> str:
  return (f"prepare it with `tfds build {name} --data_dir={data_dir} "
          "--file_format=array_record` on a machine with internet access (or with "
          "--manual_dir for manually downloaded files), then copy the data dir here "
          "or set data.data_dir")


def split_of(data_config, split: str):
  """`open_split` of `split` of the dataset `data_config` (config.data) names."""
  return open_split(data_config.name, split, data_config.data_dir, data_config.label_column,
                    fractions={"validation": data_config.validation_fraction,
                               "test": data_config.test_fraction},
                    seed=data_config.split_seed)


@errors.absl_warnings_muted()  # TFDS warns about unprepared folders; the UserError says it.
def open_split(name: str, split: str, data_dir: str = "", label_column: str = "label",
               fractions: dict[str, float] | None = None, seed: int = 0):
  """Returns (random-access source, DatasetInfo) for one split of a dataset.

  The source supports `len()`, `source[i]` and `source.__getitems__(indices)`,
  each example a dict of numpy values.

  Raises:
    UserError: the dataset is not available here, or the split does not exist.
  """
  if arrays.is_reference(name):  # A user's arrays: no TFDS, no data_dir.
    source, fields = arrays.open_split(name, split, label_column, fractions, seed)
    return source, DatasetInfo(**fields)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jaxtrain.data import builders  # pylint: disable=g-import-not-at-top,unused-import

  check_name(name)
  data_dir = redact.resolve("data.data_dir", data_dir) or default_data_dir()
  base = name.split("/")[0].split(":")[0]
  embedded = base in EMBEDDED or base in _USER_BUILDERS  # Prepared here if need be.
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # TFDS raises many types here; all mean "cannot open".
    raise errors.UserError(f"dataset {name!r} cannot be opened from {data_dir}: "
                           f"{_first_line(e)}") from None
  if not builder.is_prepared():
    if not embedded:
      raise errors.UserError(
          f"dataset {name!r} is not prepared in {data_dir} and nothing is downloaded "
          f"at run time; {_prepare_hint(name, data_dir)}")
    try:
      Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise errors.UserError(f"data.data_dir={data_dir!r} cannot be created ({e.strerror}); "
                             "set data.data_dir to a writable directory") from None
    tfds.disable_progress_bar()  # The data is small; a bar per split is noise.
    # Processes that start together (the hosts of one run, parallel tests) share the data
    # dir: one prepares while the others wait, then find it prepared. Unlocked, two
    # preparations raced and one failed, leaving its peers blocked in jax.distributed.
    import filelock  # pylint: disable=g-import-not-at-top
    with filelock.FileLock(str(Path(data_dir) / f".{base}.prepare.lock")):
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        # TFDS prints "Downloading and preparing dataset ..." to stdout, where --mode=eval
        # and --mode=compile print their JSON: a first run's output did not parse.
        with contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare(
              download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  file_format = builder.info.file_format
  if file_format is not None and getattr(file_format, "value", file_format) != "array_record":
    raise errors.UserError(
        f"dataset {name!r} in {data_dir} is prepared as {getattr(file_format, 'value', file_format)}, "
        f"but random access needs array_record; {_prepare_hint(name, data_dir)}")
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # Unknown or malformed split strings.
    splits = sorted(builder.info.splits.keys())
    hint = errors.did_you_mean(split.split("[")[0], splits)
    raise errors.UserError(
        f"split {split!r} of dataset {name!r} cannot be read ({_first_line(e)}){hint}; "
        f"available splits: {', '.join(splits)}") from None
  return source, _info_of(name, builder.info)


def check_splits(data_config) -> None:
  """Raises `UserError` unless data.train_split and data.eval_split both open.

  The loop reads the eval split only after the training data is on the device;
  this finds a bad eval split before that (and before any compilation).
  """
  for split in (data_config.train_split, data_config.eval_split):
    split_of(data_config, split)


def _info_of(name: str, info) -> DatasetInfo:
  if not info.supervised_keys:
    raise errors.UserError(
        f"dataset {name!r} has no supervised (input, label) keys; jaxtrain trains "
        "classifiers on datasets that declare them")
  input_key, label_key = info.supervised_keys[:2]
  label_feature = info.features[label_key]
  # A label per token (language modelling, e.g. charlm): an int Tensor [T] with
  # the number of classes (vocabulary size) in the dataset's metadata.
  label_shape = tuple(getattr(label_feature, "shape", ()) or ())
  num_classes = getattr(label_feature, "num_classes", None) or (
      (info.metadata or {}).get("num_classes") if label_shape else None)
  if not num_classes:
    raise errors.UserError(f"dataset {name!r}: label {label_key!r} is not a ClassLabel")
  input_feature = info.features[input_key]
  return DatasetInfo(
      name=name, input_key=input_key, label_key=label_key, num_classes=int(num_classes),
      input_shape=tuple(input_feature.shape), input_dtype=np.dtype(input_feature.np_dtype).name,
      label_shape=label_shape, description=info.description or "")

def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


def to_model_inputs(inputs: np.ndarray) -> np.ndarray:
  """Model inputs: uint8 images scaled to float32 [0, 1], token ids int32, floats float32.

  A batch-level transform (the same function serves both pipelines), so it
  costs one vectorized numpy call per batch.
  """
  if inputs.dtype == np.uint8:
    return inputs.astype(np.float32) / np.float32(255.0)
  if np.issubdtype(inputs.dtype, np.signedinteger):  # Token ids (e.g. charlm) stay integers.
    return inputs.astype(np.int32, copy=False)
  return inputs.astype(np.float32, copy=False)


def load_arrays(source, info: DatasetInfo, *, raw: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split into (inputs, labels int32) numpy arrays (see `to_model_inputs`;
  with `raw` the inputs as the dataset stores them, e.g. uint8 images)."""
  examples = source.__getitems__(range(len(source)))
  inputs = np.stack([ex[info.input_key] for ex in examples])
  labels = np.asarray([ex[info.label_key] for ex in examples], np.int32)
  return (inputs if raw else to_model_inputs(inputs)), labels
