"""Turning SIGTERM / SIGINT into "save a checkpoint and stop".

Preemptible machines send SIGTERM shortly before they go; a user presses
Ctrl-C. Either way the loop should finish the step it is on, save, wait for
the save to commit, and exit, so a rerun loses nothing. (Orbax notices
preemption only through the multi-host sync service, not in a single process.)

On a multi-process run every process must stop after the same step: a
checkpoint save is collective, and a process that stopped alone would leave
the others waiting in the next step's collectives. `PreemptionGuard.should_stop`
agrees on that step (see there).
"""

from __future__ import annotations

import contextlib
import signal
import threading


_interrupted_early = threading.Event()
# Where JAX's preemption notifier (its SIGTERM handler, installed by jax.distributed)
# reports a notice in the coordination service's key-value store, for every process.
_JAX_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


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
  """Context manager: while active, the first SIGTERM/SIGINT asks the loop to stop
  (saving a checkpoint); `should_stop` says after which step.

  A second signal gets the previous handler (a second Ctrl-C interrupts at
  once). Outside the main thread signals cannot be caught; the guard is then
  inert (on a multi-process run JAX still hears SIGTERM).

  One process: the signal sets `requested` (its name) at once, and
  `should_stop(step)` is `requested is not None`, as before multi-process runs.
  Several processes (`jax.distributed` initialized): `should_stop` is collective
  at the iterations the loop marks `sync` (the same in every process); it returns
  True in all of them at the same one and only then sets `requested`, so
  `requested` agrees across processes too (read alone, it never stops a
  multi-process run). SIGTERM stays with JAX's preemption service there, before,
  during and after the guard.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: str | None = None
    self.stop_step: int | None = None  # The step `should_stop` agreed on.
    self._signal: str | None = None  # This process's signal, agreed or not.
    self._previous = {}
    self._agreement = "local"

  def _handle(self, signum, frame):
    del frame
    self._signal = signal.Signals(signum).name
    if self._agreement == "local":
      self.requested = self._signal
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __enter__(self) -> "PreemptionGuard":
    check_early()  # Ctrl-C during set-up: pressed during an import, or swallowed.
    self._agreement = _agreement()
    # With JAX's preemption service, SIGTERM stays JAX's: replacing its handler (from
    # Python, which then restores a stale SIG_DFL) would silence the service for good.
    signals = (signal.SIGINT,) if self._agreement == "service" else self.SIGNALS
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def should_stop(self, step: int, sync: bool = True) -> bool:
    """Whether the loop stops after `step`, saving it; call once per loop iteration.

    One process: as soon as a signal came (`sync` is not needed). Several processes:
    only at iterations with `sync` True -- the same iterations in every process, where
    the loop waits for the host anyway (log, evaluation and save steps; every
    evaluation of a search) -- each process contributes a flag (its own Ctrl-C; a
    SIGTERM, which JAX's own handler reports to the coordination service for every
    process to read, or without JAX's preemption service this guard's handler), the
    flags are all-gathered, and all processes stop when any is set.

    Why not JAX's preemption sync point (`reached_preemption_sync_point`, "stop at the
    fastest process's next call"): Orbax reports each checkpoint's step to the same
    counter at every save, so a loop's own counter never met the agreed point
    (measured: the point was set to 401 while the search counted its calls 1..12, and
    it never stopped). The all-gather costs one small collective per sync iteration.
    """
    if self._agreement == "local":
      stop = self.requested is not None
    elif not sync:
      return False
    else:
      import numpy as np  # pylint: disable=g-import-not-at-top
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      mine = self._signal is not None or (self._agreement == "service" and _jax_notice())
      stop = bool(np.any(multihost_utils.process_allgather(np.int32(mine))))
    if stop:  # Without a signal here: another process's, or JAX's notice (SIGTERM).
      self.requested = self.requested or self._signal or "SIGTERM"
      self.stop_step = step
    return stop


def _jax_notice() -> bool:
  """Whether JAX's preemption notifier reported a SIGTERM of any process."""
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  try:
    return client is not None and client.key_value_try_get(_JAX_NOTICE_KEY) is not None
  except Exception:  # pylint: disable=broad-except
    return False  # NOT_FOUND: no notice.


def _agreement() -> str:
  """How `should_stop` decides: "local" (one process), "service" (several processes with
  JAX's preemption service: SIGTERM stays JAX's, its notice is read from the
  coordination service) or "gather" (several processes, no service: this guard
  catches SIGTERM too). Both multi-process modes all-gather the processes' flags."""
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized():
    return "local"  # A plain run, exactly as before multi-process runs existed.
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  if getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None:
    return "service"
  return "gather" if jax.process_count() > 1 else "local"


def raise_if_interrupted(requested: str | None, result: dict, workdir,
                         step: int | None = None) -> dict:
  """`result`, or `errors.Interrupted` carrying it when Ctrl-C (SIGINT: also a notebook's
  Stop button) stopped the run: its checkpoint is saved, and the caller's next lines (a
  notebook's queued cells) must not go on with a half-trained model. SIGTERM (a machine
  going away) returns the result with status 'preempted'."""
  if requested == "SIGINT" and result.get("status") == "preempted":
    from jaxtrain import errors  # pylint: disable=g-import-not-at-top
    step = result.get("step") if step is None else step
    raise errors.Interrupted(f"interrupted at step {step}: checkpoint saved in "
                             f"{workdir}; {errors.rerun()} to resume", result)
  return result
