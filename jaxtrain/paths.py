"""One way to name a place for local folders and cloud storage.

A workdir, a checkpoint directory, a TensorBoard logdir, an export or a report may
be a local path or a `gs://bucket/...` URL. Everything that touches one goes through
`of()` (which refuses a URL that cannot work, in one line) and the pathlib methods
of what it returns (read_text, write_text, open, mkdir, exists, iterdir, glob, ...),
never `open()` or `os.path` on a string, so that the same code runs on both: a URL
becomes an `etils.epath.Path`, a local path stays a `pathlib.Path` (exactly what
local runs used before, so local files are written as they were). Orbax reaches gs:// with TensorStore's GCS driver, tensorboardX with
google-cloud-storage, and epath with gcsfs (`pip install "jaxtrain[gcs]"`).

What "written whole or not at all" means per backend:
- local: write a sibling file, then rename it over the target (POSIX rename is
  atomic), and the workdir lock is an OS file lock released when its process dies;
- gs://: an object upload replaces the object whole (a reader sees the old object
  or the new one, never a mix), so records are written in place; there is no
  rename and no lock (see `jobs/workdir.lock`): two runs started on one gs://
  workdir at once are not refused. metrics.jsonl and lineage.jsonl, appended to
  locally, are rewritten whole at each record (objects cannot be appended to).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import time
from typing import Union

from etils import epath

from jaxtrain import errors

# What `of()` returns (for annotations): pathlib for a local path, epath for a URL.
Path = Union[pathlib.Path, epath.Path]
PathLike = Union[str, os.PathLike]

# Schemes whose workdirs work end to end (Orbax, TensorStore, tensorboardX, epath).
SUPPORTED_SCHEMES = ("gs",)
# Why the other URLs are refused (epath knows s3/az/hf, but Orbax 0.12's TensorStore
# specs do not: it writes arrays to gs:// or to a local absolute path only).
_REFUSED = {
    "s3": "Orbax writes checkpoints to gs:// or local paths only",
    "az": "Orbax writes checkpoints to gs:// or local paths only",
    "hf": "Hugging Face repositories are read-only model stores",
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: PathLike) -> str | None:
  """'gs' for gs://bucket/x (any URL's scheme), None for a local path."""
  match = _URL.match(os.fspath(path))
  return match.group(1).lower() if match else None


def is_url(path: PathLike) -> bool:
  """True for a URL (gs://...), False for a local path."""
  return scheme(path) is not None


def check(what: str, path: PathLike) -> None:
  """Refuses, in one line naming `what` (e.g. 'workdir'), a URL that cannot work: a
  scheme other than gs://, or gs:// without gcsfs installed."""
  name = scheme(path)
  if name is None:
    return
  if name not in SUPPORTED_SCHEMES:
    why = _REFUSED.get(name, "jaxtrain reads and writes local paths and gs:// URLs")
    raise errors.UserError(
        f"{what}={path}: {name}:// is not supported ({why}); use a gs:// or local path, "
        "or mount the storage (e.g. with FUSE) and pass that path")
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise errors.UserError(
        f"{what}={path}: gs:// paths need gcsfs and google-cloud-storage; "
        "pip install \"jaxtrain[gcs]\"") from None


def of(path: PathLike, what: str = "path") -> Path:
  """`path` as a path object: a URL as an `epath.Path` (after `check`), a local path
  as a `pathlib.Path` with ~ expanded."""
  check(what, path)
  text = os.fspath(path)
  return epath.Path(text) if is_url(text) else pathlib.Path(text).expanduser()


def absolute(path: PathLike, what: str = "path") -> Path:
  """`of(path)`, made absolute when local (pathlib's absolute() would turn a URL into
  a local folder named 'gs:')."""
  p = of(path, what)
  return p if is_url(p) else p.absolute()


def write_text_atomic(path: PathLike, text: str) -> None:
  """Writes `text` to `path` so that a crash leaves the old file or the new one,
  never a truncated one: locally a sibling written then renamed over `path`; on
  object storage one upload (an object is replaced whole)."""
  path = of(path)
  if is_url(path):
    path.write_text(text, encoding="utf-8")
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)


class LineLog:
  """A text file that grows by lines (metrics.jsonl, lineage.jsonl): appended to
  and flushed locally. Object storage has no append: each upload replaces the
  object whole, so there the lines are uploaded at most every `UPLOAD_EVERY_SEC`
  (the first line at once) and at `sync` and `close`. Writers call `sync` before a
  checkpoint commits: a crash loses only lines past the last checkpoint, which the
  resumed run writes again. (Uploading at every line rewrote the whole file per
  log step: quadratic bytes, and a blocking upload in the training loop.)"""

  UPLOAD_EVERY_SEC = 10.0

  def __init__(self, path: PathLike, kept: list[str] | None):
    """`kept`: the lines the file starts with (rewritten at the first `add`, dropping
    any others); None keeps the file as it is."""
    self.path = of(path)
    self._kept = kept
    self._file = None
    self._lines: list[str] | None = None  # Object storage: everything written so far.
    self._uploaded = 0  # Object storage: how many of `_lines` the object holds.
    self._upload_time = -math.inf

  def add(self, line: str) -> None:
    """Appends `line` (without its newline); a local file is complete after each call."""
    if is_url(self.path):
      if self._lines is None:
        self._lines = (self._kept if self._kept is not None else
                       self.path.read_text(encoding="utf-8").splitlines()
                       if self.path.exists() else [])
      self._lines.append(line)
      if time.monotonic() - self._upload_time >= self.UPLOAD_EVERY_SEC:
        self.sync()
      return
    if self._file is None:
      if self._kept is not None:
        write_text_atomic(self.path, "".join(l + "\n" for l in self._kept))
      self._file = self.path.open("a", encoding="utf-8")
    self._file.write(line + "\n")
    self._file.flush()

  def sync(self) -> None:
    """Object storage: uploads the lines not yet uploaded (the whole object). Local: a no-op
    (`add` flushed already)."""
    if self._lines is not None and self._uploaded < len(self._lines):
      self.path.write_text("".join(l + "\n" for l in self._lines), encoding="utf-8")
      self._uploaded = len(self._lines)
      self._upload_time = time.monotonic()

  def close(self) -> None:
    self.sync()
    if self._file is not None:
      self._file.close()
