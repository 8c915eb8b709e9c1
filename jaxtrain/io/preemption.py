"""Turning SIGTERM / SIGINT into "save a checkpoint and stop".

Preemptible machines send SIGTERM shortly before they go; a user presses
Ctrl-C. Either way the loop should finish the step it is on, save, wait for
the save to commit, and exit, so a rerun loses nothing. (Orbax notices
preemption only through the multi-host sync service, not in a single process.)
"""

from __future__ import annotations

import contextlib
import signal
import threading


_interrupted_early = threading.Event()


def _in_import(frame) -> bool:
  while frame is not None:
    if frame.f_code.co_filename.startswith("<frozen importlib"):
      return True
    frame = frame.f_back
  return False


def _early_sigint(signum, frame):
  del signum
  _interrupted_early.set()
  # Raised inside an import, KeyboardInterrupt can reach a C++ extension's module
  # initialisation (jaxlib's) and abort the process: the import finishes and the
  # run stops at the next check (`check_early`) instead.
  if not _in_import(frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def early_interrupts():
  """Until a PreemptionGuard takes over, Ctrl-C raises KeyboardInterrupt as usual and
  is also remembered: a library that swallows it during its import (a bare `except`)
  let the run go on as if nothing had been pressed. The guard then stops the run
  before its first step (`check_early`)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _interrupted_early.clear()
  previous = signal.signal(signal.SIGINT, _early_sigint)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    _interrupted_early.clear()


def interrupted_early() -> bool:
  return _interrupted_early.is_set()


def check_early() -> None:
  """Raises KeyboardInterrupt if Ctrl-C was pressed during set-up and not acted on."""
  if _interrupted_early.is_set():
    raise KeyboardInterrupt


class PreemptionGuard:
  """Context manager: while active, the first SIGTERM/SIGINT sets `requested`.

  A second signal gets the previous handler (a second Ctrl-C interrupts at
  once). Outside the main thread signals cannot be caught; the guard is then
  inert.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __enter__(self) -> "PreemptionGuard":
    check_early()  # Ctrl-C during set-up: pressed during an import, or swallowed.
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
