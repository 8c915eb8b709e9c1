"""A user's own arrays as a dataset: `data.name = "npz:PATH"`.

The file (numpy's `.npz`) holds `x_train, y_train` and, optionally, `x_val, y_val`
and `x_test, y_test`: inputs of any shape `[N, ...]` (float, or uint8 images scaled
to [0, 1] like the catalog's) and integer class labels `[N]` in `0..K-1`, where K is
one more than the largest label of any split. Splits are named `train`,
`validation` and `test`, with TFDS's slice syntax: `train[:80%]`, `train[800:]`.
Every check is one line before anything is compiled: missing or mismatched arrays,
non-integer or negative labels, non-finite inputs, an empty split.

The split is served as a random-access source (`len`, `__getitem__`,
`__getitems__`), so both pipelines (device and Grain) read it as they read TFDS.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from jaxtrain import errors, paths

PREFIX = "npz:"
CSV_PREFIX = "csv:"
SPLITS = {"train": "train", "validation": "val", "test": "test"}
_SPLIT = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # TFDS's 'name:1.0.0' is a version.


def is_function(name: str) -> bool:
  """'package.module:function': a user's function returning the splits."""
  return bool(_FUNCTION.match(name)) and not name.startswith((PREFIX, CSV_PREFIX))


def is_reference(name: str) -> bool:
  return name.startswith((PREFIX, CSV_PREFIX)) or is_function(name)


class ArraySource:
  """Random access to (inputs, labels) arrays, one example a dict as TFDS's are."""

  def __init__(self, inputs: np.ndarray, labels: np.ndarray):
    self.inputs, self.labels = inputs, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i):
    return {"inputs": self.inputs[i], "label": self.labels[i]}

  def __getitems__(self, indices):
    indices = list(indices)
    return [{"inputs": x, "label": y}
            for x, y in zip(self.inputs[indices], self.labels[indices])]


def _load(name: str, label_column: str) -> dict[str, np.ndarray]:
  """The file's arrays, checked (read once per version of the file)."""
  if is_function(name):
    return _from_function(name)
  path = name.split(":", 1)[1]
  try:
    if paths.is_url(path):  # An object's generation shows in its time and size.
      info = paths.of(path).stat()
      stamp = (info.mtime, info.length)
    else:
      stamp = Path(path).expanduser().stat().st_mtime_ns
  except OSError:
    stamp = None
  return _load_checked(name, label_column if name.startswith(CSV_PREFIX) else "", stamp)


@functools.lru_cache(maxsize=8)
def _load_checked(name: str, label_column: str, stamp: int | None) -> dict[str, np.ndarray]:
  del stamp  # The cache key: a rewritten file is read again.
  path = name.split(":", 1)[1]
  if name.startswith(CSV_PREFIX):
    arrays = _read_csv(name, path, label_column)
  else:
    try:
      with paths.of(path).open("rb") as file, np.load(file, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
      raise errors.UserError(f"data.name={name!r}: cannot read {path} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''}); give a .npz "
                             "file with x_train and y_train") from None
  for split, suffix in SPLITS.items():
    x, y = arrays.get(f"x_{suffix}"), arrays.get(f"y_{suffix}")
    if (x is None) != (y is None):
      raise errors.UserError(f"data.name={name!r}: x_{suffix} and y_{suffix} go together; "
                             f"{path} has only {'x' if y is None else 'y'}_{suffix}")
    if x is None:
      if split == "train":
        raise errors.UserError(f"data.name={name!r}: {path} has no x_train/y_train arrays "
                               f"(it has {', '.join(sorted(arrays)) or 'none'})")
      continue
    _check(f"data.name={name!r}", suffix, x, y)
  shapes = {arrays[f"x_{s}"].shape[1:] for s in SPLITS.values() if f"x_{s}" in arrays}
  if len(shapes) > 1:
    raise errors.UserError(f"data.name={name!r}: the splits' inputs differ in shape {sorted(shapes)}")
  return arrays


def _read_csv(name: str, path: str, label_column: str) -> dict[str, np.ndarray]:
  """A CSV file with a header row as the `train` split: every column but `label_column`
  is a numeric feature; labels are integers, or strings numbered in sorted order.

  The csv module reads it (quoting, delimiters): numpy's loadtxt names no line on a
  ragged row, and a row of the wrong length must be refused naming its line.
  """
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  try:
    # Bytes, decoded here: epath's open() (gs://) takes no newline=''; csv wants
    # the text with its line ends as they are.
    with paths.of(path).open("rb") as f:
      rows = list(csv.reader(io.StringIO(f.read().decode("utf-8"), newline="")))
  except (OSError, UnicodeDecodeError) as e:
    raise errors.UserError(f"data.name={name!r}: cannot read {path} "
                           f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
  if not rows:
    raise errors.UserError(f"data.name={name!r}: {path} is empty")
  header = [h.strip() for h in rows[0]]
  if label_column not in header:
    raise errors.UserError(f"data.name={name!r}: no column {label_column!r} in {path} (columns: "
                           f"{', '.join(header)}); set data.label_column")
  li = header.index(label_column)
  features, labels = [], []
  for number, row in enumerate(rows[1:], start=2):
    if not row or all(not c.strip() for c in row):
      continue
    if len(row) != len(header):
      raise errors.UserError(f"data.name={name!r}: {path} line {number} has {len(row)} fields, "
                             f"the header {len(header)}")
    try:
      features.append([float(c) for i, c in enumerate(row) if i != li])
    except ValueError:
      raise errors.UserError(f"data.name={name!r}: {path} line {number} has a feature that is "
                             "not a number") from None
    labels.append(row[li].strip())
  try:
    y = np.asarray([int(v) for v in labels], np.int64)
  except ValueError:  # Named classes: numbered in sorted order.
    classes = sorted(set(labels))
    y = np.asarray([classes.index(v) for v in labels], np.int64)
  return {"x_train": np.asarray(features, np.float32).reshape(len(labels), -1), "y_train": y}


def _check(where: str, suffix: str, x: np.ndarray, y: np.ndarray) -> None:
  where = f"{where}: "
  if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
    raise errors.UserError(f"{where}x_{suffix} {x.shape} and y_{suffix} {y.shape} must be "
                           "[N, ...] inputs and [N] labels")
  if not len(y):
    raise errors.UserError(f"{where}the {suffix} split is empty")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise errors.UserError(f"{where}x_{suffix} has dtype {x.dtype}; inputs must be numbers")
  if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
    bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
    raise errors.UserError(f"{where}x_{suffix}[{bad}] is not finite (NaN or inf); clean the "
                           "inputs first")
  if not np.issubdtype(y.dtype, np.integer):
    if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
      raise errors.UserError(f"{where}y_{suffix} has dtype {y.dtype} with non-integer values; "
                             "labels must be class indices 0..K-1")
  if y.min() < 0:
    raise errors.UserError(f"{where}y_{suffix} has a negative label ({int(y.min())}); labels "
                           "must be class indices 0..K-1")


def _bound(text: str | None, n: int, default: int) -> int:
  if text is None:
    return default
  value = int(text[:-1]) * n // 100 if text.endswith("%") else int(text)
  return max(0, min(n, value + n if value < 0 else value))


def carve(arrays: dict[str, np.ndarray], fractions: dict[str, float], seed: int,
          where: str) -> dict[str, np.ndarray]:
  """`arrays` with each missing split of `fractions` ({'validation': 0.1, 'test': 0.1})
  taken from train: a permutation of train's rows (numpy PCG64 with `seed`) gives the
  test rows first, then the validation rows; train keeps the rest, in their order."""
  wanted = {s: f for s, f in fractions.items() if f > 0 and f"x_{SPLITS[s]}" not in arrays}
  if not wanted:
    return arrays
  n = len(arrays["y_train"])
  counts = {s: int(round(f * n)) for s, f in wanted.items()}
  if sum(fractions.values()) >= 1 or min(counts.values()) < 1:
    raise errors.UserError(
        f"{where}: data.validation_fraction / data.test_fraction "
        f"({', '.join(f'{s}={f}' for s, f in wanted.items())}) must each give at least one of "
        f"train's {n} examples and leave some for training")
  order = np.random.default_rng(seed).permutation(n)
  arrays, start = dict(arrays), 0
  for split in ("test", "validation"):
    if split in counts:
      rows = np.sort(order[start:start + counts[split]])
      arrays[f"x_{SPLITS[split]}"] = arrays["x_train"][rows]
      arrays[f"y_{SPLITS[split]}"] = arrays["y_train"][rows]
      start += counts[split]
  keep = np.sort(order[start:])
  arrays["x_train"], arrays["y_train"] = arrays["x_train"][keep], arrays["y_train"][keep]
  return arrays


def open_split(name: str, split: str, label_column: str = "label",
               fractions: dict[str, float] | None = None, seed: int = 0):
  """(source, the DatasetInfo fields) of split `split` of the file `name` names; the
  splits it lacks carved from train by `fractions` (see `carve`)."""
  arrays = carve(_load(name, label_column), fractions or {}, seed, f"data.name={name!r}")
  match = _SPLIT.match(split.strip())
  if not match or match.group(1) not in SPLITS or f"x_{SPLITS[match.group(1)]}" not in arrays:
    have = [s for s, suffix in SPLITS.items() if f"x_{suffix}" in arrays]
    raise errors.UserError(f"split {split!r} of data.name={name!r} does not exist; available "
                           f"splits: {', '.join(have)} (with slices such as train[:80%])")
  suffix = SPLITS[match.group(1)]
  x, y = arrays[f"x_{suffix}"], arrays[f"y_{suffix}"]
  lo, hi = _bound(match.group(2), len(y), 0), _bound(match.group(3), len(y), len(y))
  if hi <= lo:
    raise errors.UserError(f"split {split!r} of data.name={name!r} is empty ({len(y)} examples)")
  num_classes = int(max(int(arrays[f"y_{s}"].max()) for s in SPLITS.values()
                        if f"y_{s}" in arrays)) + 1
  info = dict(name=name, input_key="inputs", label_key="label", num_classes=num_classes,
              input_shape=tuple(x.shape[1:]), input_dtype=np.dtype(x.dtype).name,
              description="your arrays, as given (uint8 inputs are scaled to [0, 1] at batch "
                          "time)")
  return ArraySource(x[lo:hi], y[lo:hi].astype(np.int32)), info


@functools.lru_cache(maxsize=8)
def _from_function(name: str) -> dict[str, np.ndarray]:
  """The arrays `name`'s function returns ({'train': (x, y), ...}), checked; called
  once per process."""
  import importlib  # pylint: disable=g-import-not-at-top
  module_name, _, attr = name.partition(":")
  where = f"data.name={name!r}"
  try:
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
      obj = getattr(obj, part)
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's module)
    raise errors.UserError(f"{where}: cannot import {name} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''}); put the module "
                           "on PYTHONPATH, in the current directory or beside the config file"
                           ) from None
  try:
    splits = obj()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"{where}: the function raised {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''}") from None
  if not isinstance(splits, dict):
    raise errors.UserError(f"{where} returned a {type(splits).__name__}; return a dict of "
                           f"(inputs, labels) pairs named {', '.join(SPLITS)}")
  return _arrays_of(splits, where)


def _is_source(obj) -> bool:
  """A random-access source (e.g. a grain `RandomAccessDataSource`): len() and [i]."""
  return (not isinstance(obj, (tuple, list, np.ndarray)) and hasattr(obj, "__len__")
          and hasattr(obj, "__getitem__"))


def _read_source(source, where: str) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, labels) of every record of a random-access source. A record is an
  (inputs, label) pair or a dict with one label key ('label' or 'labels') and one other
  key. Read whole: the device pipeline keeps a split in device memory, and the checks
  below see every example."""
  def pair(i, record):
    if isinstance(record, dict):
      label_keys = [k for k in ("label", "labels") if k in record]
      others = [k for k in record if k not in ("label", "labels")]
      if len(label_keys) == 1 and len(others) == 1:
        return record[others[0]], record[label_keys[0]]
      raise errors.UserError(f"{where}: record {i} has keys {sorted(record)}; give a 'label' "
                             "key and one inputs key, or (inputs, label) pairs")
    if isinstance(record, (tuple, list)) and len(record) == 2:
      return record
    raise errors.UserError(f"{where}: record {i} is a {type(record).__name__}; give (inputs, "
                           "label) pairs or dicts with 'label' and one inputs key")
  n = len(source)
  if n == 0:
    raise errors.UserError(f"{where}: a split's source is empty")
  xs, ys = zip(*(pair(i, source[i]) for i in range(n)))
  return np.stack([np.asarray(x) for x in xs]), np.asarray(ys)


def _arrays_of(splits: dict, where: str) -> dict[str, np.ndarray]:
  arrays = {}
  for split, pair in splits.items():
    if split in SPLITS and _is_source(pair):
      pair = _read_source(pair, f"{where}: split {split!r}")
    if split not in SPLITS or not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise errors.UserError(f"{where}: split {split!r}: give splits {', '.join(SPLITS)} as "
                             "(inputs, labels) pairs of arrays, or random-access sources "
                             "(e.g. grain.sources.ArrayRecordDataSource) of such pairs")
    x, y = (np.asarray(a) for a in pair)
    _check(where, SPLITS[split], x, y)
    arrays[f"x_{SPLITS[split]}"], arrays[f"y_{SPLITS[split]}"] = x, y
  if "x_train" not in arrays:
    raise errors.UserError(f"{where}: a 'train' split is needed")
  return arrays


def save_splits(splits: dict, path: Path) -> str:
  """Writes {'train': (x, y), 'validation': ..., 'test': ...} (Python objects, e.g. a
  notebook's arrays) to `path` as the npz this module reads, and returns its
  `data.name`. A file already there must hold the same arrays: a rerun resumes on
  the data it trained on, and other data is refused rather than replacing it.

  Raises:
    UserError: an unknown split name, arrays that fail the checks, or other data
      already in `path`.
  """
  path = paths.absolute(path)
  arrays = _arrays_of(splits, "data=...")
  if path.exists():
    with path.open("rb") as file, np.load(file, allow_pickle=False) as f:
      same = set(f.files) == set(arrays) and all(np.array_equal(f[k], v) for k, v in arrays.items())
    if not same:
      raise errors.UserError(f"{path} holds other data than data=... (this workdir trained on "
                             "it); use a new workdir for new data")
  elif paths.is_url(path):  # One upload: the object appears whole or not at all.
    with path.open("wb") as file:
      np.savez(file, **arrays)
  else:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
  return PREFIX + str(path)
