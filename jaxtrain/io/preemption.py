"""Turning SIGTERM / SIGINT into "save a checkpoint and stop".

Preemptible machines send SIGTERM shortly before they go; a user presses
Ctrl-C. Either way the loop should finish the step it is on, save, wait for
the save to commit, and exit, so a rerun loses nothing. (Orbax notices
preemption only through the multi-host sync service, not in a single process.)
"""

from __future__ import annotations

import signal
import threading


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
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
