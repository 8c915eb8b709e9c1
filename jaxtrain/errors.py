"""The one exception type for mistakes a user can fix.

`main` prints a `UserError` as a single line on stderr and exits with code 2;
the Python API lets it propagate. The message names the key, path or value and
says what to do about it.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import logging
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterable
from typing import Any
from pathlib import Path

# Exit codes of `python -m jaxtrain.main` (also documented in the README).
EXIT_USER_ERROR = 2  # Bad config, workdir, dataset or checkpoint: fix the input.
EXIT_NONFINITE = 3  # train.nan_policy stopped the run at a non-finite loss/gradient.
EXIT_CHECKPOINT_FAILED = 4  # A checkpoint or metrics.jsonl could not be written (disk full).
EXIT_PREEMPTED = 75  # SIGTERM/SIGINT: checkpoint saved; rerun the same command to resume.


# Whether the command line (python -m jaxtrain.main) is running: errors name its flags
# (--allow_config_change) there, and the Python API's keywords (allow_config_change=True)
# in a notebook or script.
_COMMAND_LINE = [False]


def set_command_line(on: bool) -> None:
  _COMMAND_LINE[0] = bool(on)


def option(name: str, value: Any = True) -> str:
  """How the user passes option `name`: '--name' (or '--name=value') on the command
  line, 'name=value' to the Python API."""
  if _COMMAND_LINE[0]:
    return f"--{name}" if value is True else f"--{name}={value}"
  return f"{name}={value!r}"


def rerun() -> str:
  """How the user runs the same thing again (to resume)."""
  return "rerun the same command" if _COMMAND_LINE[0] else "call the same function again"


def new_workdir() -> str:
  return "a new --workdir" if _COMMAND_LINE[0] else "a new workdir"


class JaxtrainError(Exception):
  """An error reported to the user as one line, with its own exit code."""
  exit_code = 1


class WriteError(JaxtrainError):
  """A run's records (metrics, checkpoints) could not be written."""
  exit_code = EXIT_CHECKPOINT_FAILED


class NonFiniteError(JaxtrainError):
  """Training diverged: train.nan_policy stopped a run, or every member of a search
  has a non-finite score."""
  exit_code = EXIT_NONFINITE


class Interrupted(KeyboardInterrupt):
  """Ctrl-C (a notebook's Stop button) stopped a run called from Python, after its
  checkpoint was saved: raised, so that "Run all" stops at this cell instead of going on
  with a half-trained model. `result` is what the run would have returned; calling it
  again resumes. The command line turns it into exit code 75."""

  def __init__(self, message: str, result: dict):
    super().__init__(message)
    self.result = result


class UserError(JaxtrainError):
  """A problem in the user's input (config, workdir, dataset), not a bug."""
  exit_code = EXIT_USER_ERROR


def did_you_mean(name: str, choices: Iterable[str]) -> str:
  """Returns ' (did you mean X?)' for the closest choice, or ''."""
  close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
  return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(key: str, value: str, choices: Iterable[str]) -> UserError:
  """A `UserError` for a name that is not among `choices`."""
  choices = sorted(choices)
  return UserError(
      f"{key}={value!r} is not known{did_you_mean(value, choices)}; "
      f"choose one of: {', '.join(choices)}")


@contextlib.contextmanager
def absl_warnings_muted():
  """Hides absl-logged warnings (TFDS, ml_collections) while user input is checked.

  They restate, as extra stderr lines, what the one-line `UserError` says
  (e.g. TFDS warns about a dataset folder that is not prepared). Usable as a
  decorator. The absl logger's level is restored on exit.
  """
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)



class LibraryLog:
  """Text appended to WORKDIR/jaxtrain.log, created on first use (never the workdir
  itself: a run refused before it made its workdir leaves none; the text then goes
  to a file in the system's temporary folder)."""

  def __init__(self, workdir, clean=lambda text: text):
    # A workdir on cloud storage (gs://...) keeps its log in the temporary folder: an
    # object cannot be appended to, and the storage client's own log lines would be
    # written through that same client.
    local = workdir is not None and "://" not in str(workdir)
    self.workdir = Path(workdir) if local else None
    self.clean = clean  # main passes redact.text: no password reaches the file.
    self.path: Path | None = None
    self._lock = threading.Lock()

  def write(self, text: str) -> None:
    with self._lock:
      if self.path is None:
        if self.workdir is not None and self.workdir.is_dir():
          self.path = self.workdir / "jaxtrain.log"
        else:
          self.path = Path(tempfile.gettempdir()) / f"jaxtrain-{os.getpid()}.log"
      try:
        text = self.clean(text)  # Libraries log URLs (storage, data) as they are given.
        with open(self.path, "a", encoding="utf-8") as f:
          f.write(text if text.endswith("\n") else text + "\n")
      except OSError:
        pass  # A read-only workdir: the one error line is what the user gets.


class _LogHandler(logging.Handler):

  def __init__(self, log: LibraryLog):
    super().__init__(logging.DEBUG)
    self.log = log
    self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

  def emit(self, record):
    try:
      self.log.write(self.format(record))
    except Exception:  # pylint: disable=broad-except
      pass  # Logging never takes a run down.


@contextlib.contextmanager
def library_output_to_log(workdir, clean=lambda text: text):
  """While a job runs, what the libraries log (absl: Orbax, TFDS) and what their
  own threads raise goes to WORKDIR/jaxtrain.log instead of the terminal.

  A failed asynchronous Orbax save, for one, logged the error and printed
  tracebacks from its threads and asyncio callbacks: ~380 lines on stderr around
  the one line that says what happened (the failure itself reaches the main thread,
  which reports it). Yields the log, so that the error line can point at it.
  """
  log = LibraryLog(workdir, clean)
  # absl: Orbax, TFDS; gcsfs (gs:// paths through epath) warns e.g. that it could not
  # tell a bucket's layout before falling back to its default.
  loggers = [logging.getLogger(name) for name in ("absl", "gcsfs")]
  handler = _LogHandler(log)
  saved = [l.propagate for l in loggers], threading.excepthook, sys.unraisablehook

  def thread_hook(args):
    if args.exc_type is SystemExit:
      return
    name = args.thread.name if args.thread is not None else "?"
    log.write(f"exception in thread {name}:\n" + "".join(
        traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

  def unraisable_hook(unraisable):
    log.write(f"exception ignored in {unraisable.object!r}:\n" + "".join(
        traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                   unraisable.exc_traceback)))

  for logger in loggers:
    logger.addHandler(handler)
    logger.propagate = False
  threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook
  try:
    yield log
  finally:
    gc.collect()  # Objects dropped by a failure report their errors while hooked.
    propagate, threading.excepthook, sys.unraisablehook = saved
    for logger, was in zip(loggers, propagate):
      logger.removeHandler(handler)
      logger.propagate = was


# --- Range checks shared by every component's `check_config` (same message everywhere).

def check_positive(key: str, value) -> None:
  """Raises `UserError` unless `value` > 0."""
  if not value > 0:
    raise UserError(f"{key}={value!r} must be > 0")


def check_nonnegative(key: str, value) -> None:
  """Raises `UserError` unless `value` >= 0 (NaN fails)."""
  if value < 0 or value != value:
    raise UserError(f"{key}={value!r} must be >= 0")


def check_in_range(key: str, value, low: float, high: float) -> None:
  """Raises `UserError` unless low <= `value` < high (NaN fails)."""
  if not (low <= value < high) or value != value:
    raise UserError(f"{key}={value!r} must be in [{low}, {high})")
