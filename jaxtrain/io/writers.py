"""Where a run's numbers go: metrics.jsonl, TensorBoard, and the terminal."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from jaxtrain import paths, records, redact
from jaxtrain.paths import Path

METRICS_FILE = "metrics.jsonl"


write_text_atomic = paths.write_text_atomic  # Whole or not at all, local or gs://.


def json_safe(v: Any) -> Any:
  """`v` with every non-finite float as a string ('nan', 'inf'): JSON has no NaN or
  Infinity (Python's json writes them as bare tokens other readers refuse)."""
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  if isinstance(v, dict):
    return {k: json_safe(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [json_safe(x) for x in v]
  return v


def json_text(record: Any) -> str:
  """A record as indented, valid JSON text (non-finite floats as strings)."""
  return json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n"


class MetricsLog:
  """Appends one JSON object per logged step to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: Path, resume_step: int):
    """Reads and checks the records so far (UserError if damaged); writes nothing
    until the first record: a run refused after this leaves the file as it was."""
    self.path = paths.of(workdir) / METRICS_FILE
    self._log = paths.LineLog(self.path, self._kept_until(resume_step))

  def _kept_until(self, step: int) -> list[str] | None:
    # Records past the restored checkpoint will be logged again by the resumed
    # run; dropping them keeps one record per step.
    if not self.path.exists():
      return None
    lines = records.read_lines(  # A torn last line (a crash mid-write) is dropped.
        self.path, "restore it, or move it aside and rerun (the records from the resumed "
        "step on then go to a new file)", required=("step",))
    return [line for line, record in lines
            if isinstance(record["step"], int) and record["step"] <= step]

  def write(self, step: int, values: dict[str, Any]) -> None:
    """Appends {"step", **values, "wall_time": seconds since the epoch (as TensorBoard's
    events carry)}: curves of a metric against time need no other clock."""
    record = {"step": step, **{k: json_safe(v) for k, v in values.items()},
              "wall_time": round(time.time(), 3)}
    self._io(self._log.add, json.dumps(record))

  def sync(self) -> None:
    """The records so far on storage (object storage uploads in batches; see
    `paths.LineLog`): called before a checkpoint commits."""
    self._io(self._log.sync)

  def close(self) -> None:
    self._io(self._log.close)

  def _io(self, fn, *args) -> None:
    try:
      fn(*args)
    except OSError as e:
      from jaxtrain import errors  # pylint: disable=g-import-not-at-top
      raise errors.WriteError(f"cannot write {self.path} ({e.strerror}); free disk space, "
                              "then rerun the same command to resume from the last "
                              "checkpoint") from None


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl, in order."""
  path = paths.of(workdir) / METRICS_FILE
  return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


class TensorBoard:
  """Scalars, text and hparams entries in WORKDIR (and in runs below it, e.g. one
  per tuning member: `run="members/0003"`), via tensorboardX, best effort.

  TensorBoard output must never stop or hang training: tensorboardX's writer
  thread can block forever once the disk is full. Records therefore go through
  a bounded queue to a thread of our own; if writing fails or the queue is
  full, a one-line warning is printed and TensorBoard output stops (metrics.jsonl
  and checkpoints are unaffected). `close()` waits at most a few seconds.

  `hparams` (None: none) is the root run's hparams session. TensorBoard's HParams
  view builds one table from the session entries of every run under the logdir;
  `session(run, ...)` adds one for a sub-run (a tuning member).
  """

  MAX_OPEN_RUNS = 32  # Sub-runs with an open event file (each a tensorboardX thread).

  def __init__(self, workdir: Path, hparams: dict[str, Any] | None, metric_names: list[str],
               queue_size: int = 10_000):
    import queue  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    self.workdir = paths.of(workdir)  # tensorboardX writes gs:// logdirs itself.
    self.failed = False
    self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
    self._full = queue.Full
    self._thread = threading.Thread(target=self._work, args=(hparams, metric_names),
                                    daemon=True, name="jaxtrain-tensorboard")
    self._thread.start()

  def _work(self, hparams, metric_names) -> None:
    writers: dict[str, Any] = {}  # run ("" = the root) -> SummaryWriter, oldest use first.
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      def writer_of(run: str):
        if run in writers:
          writers[run] = writers.pop(run)  # Most recently used last.
        else:
          if len(writers) > self.MAX_OPEN_RUNS:  # Reopening a run adds an event file to
            oldest = next(r for r in writers if r)  # it; TensorBoard reads them all.
            writers.pop(oldest).close()
          writers[run] = SummaryWriter(logdir=str(self.workdir / run), flush_secs=10)
        return writers[run]

      if hparams is not None:
        _add_session(writer_of(""), hparams, metric_names, end=False)
      while True:
        item = self._queue.get()
        if item is None:
          break
        kind, run, step, payload = item
        writer = writer_of(run)
        if kind == "scalars":
          for k, v in payload.items():
            writer.add_scalar(k, v, global_step=step)
        elif kind == "text":
          writer.add_text(payload[0], payload[1], global_step=step)
        else:  # "session"
          _add_session(writer, *payload, end=True)
      for writer in writers.values():
        writer.close()
    except Exception as e:  # Disk full, permissions: warn once, keep training.
      self._fail(f"{type(e).__name__}: {e}")

  def _fail(self, why: str) -> None:
    if not self.failed:
      self.failed = True
      print(f"warning: TensorBoard output in {self.workdir} stopped ({why}); training "
            "continues, metrics.jsonl is still written", file=sys.stderr, flush=True)

  def _put(self, item) -> None:
    if self.failed:
      return
    try:
      self._queue.put_nowait(item)
    except self._full:
      self._fail("the writer fell behind; is the disk full or very slow?")

  def write(self, step: int, values: dict[str, Any], run: str = "") -> None:
    """Scalars (the numbers among `values`) at `step` in `run` (a path below WORKDIR)."""
    scalars = {k: v for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
      self._put(("scalars", run, step, scalars))

  def text(self, step: int, tag: str, text: str, run: str = "") -> None:
    """A text entry (TensorBoard's Text tab) at `step`: e.g. a PBT exploit."""
    self._put(("text", run, step, (tag, redact.text(text))))

  def session(self, run: str, hparams: dict[str, Any], metric_names: list[str]) -> None:
    """An hparams session for `run`: its settings, and which of its scalars are metrics."""
    self._put(("session", run, 0, (hparams, metric_names)))

  def close(self, timeout: float = 10.0) -> None:
    try:
      self._queue.put(None, timeout=timeout)
    except self._full:
      self._fail("could not flush before closing")
    self._thread.join(timeout=timeout)
    if self._thread.is_alive():
      self._fail(f"the writer did not finish within {timeout:.0f} s")


def _add_session(writer, hparams: dict[str, Any], metric_names: list[str], end: bool) -> None:
  """Session entries (start, and end when the run is over) in `writer`'s event file, no
  experiment entry (unlike tensorboardX's add_hparams): TensorBoard takes the first
  experiment entry it finds for the whole logdir, which would hide every other run's
  keys; without one it builds the experiment from all runs' sessions (every key and
  value seen; metrics = the runs' scalar tags)."""
  from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
  _, session_start, session_end = hparams_summary(hparams, {m: math.nan for m in metric_names})
  writer.file_writer.add_summary(session_start)
  if end:
    writer.file_writer.add_summary(session_end)


def hparams_for_tensorboard(flat_config: dict[str, Any]) -> dict[str, Any]:
  """Config leaves as TensorBoard hparams values (str, float, bool)."""
  out = {}
  for k, v in flat_config.items():
    v = redact.value(k, v)
    out[k] = v if isinstance(v, (bool, int, float, str)) else str(v)
  return out


# How much a run prints on stdout: 0 (--quiet) the result line only, 1 (default) also
# progress lines, 2 (--verbose) also one line per tuning member and evaluation.
# Diagnostics (warnings, errors) go to stderr whatever the level.
_VERBOSITY = [1]


def set_verbosity(level: int) -> None:
  """0: result lines only; 1: progress too (the default); 2: per-member lines too."""
  _VERBOSITY[0] = int(level)


def verbosity() -> int:
  return _VERBOSITY[0]


def say(text: str, level: int = 1) -> None:
  """A progress line on stdout, at verbosity `level` and above."""
  if _VERBOSITY[0] >= level:
    print(text, file=sys.stdout, flush=True)


def eta_text(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return (f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"
          if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}m")


class Progress:
  """A tqdm bar on a terminal; plain lines (one per log step) otherwise (stdout)."""

  def __init__(self, total: int, start: int, stream=None):
    self.stream = stream or sys.stdout
    self.total, self.start = total, start
    self.t0 = time.perf_counter()
    self.bar = None
    self.quiet = verbosity() < 1
    if self.stream.isatty() and not self.quiet:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, initial=start, file=self.stream, unit="step",
                      dynamic_ncols=True)
    self.last = start

  def update(self, step: int, values: dict[str, Any]) -> None:
    if self.quiet:
      return
    shown = {k: v for k, v in values.items()
             if k in ("train/loss", "eval/loss", "eval/accuracy", "steps_per_sec")}
    text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
    if self.bar is not None:
      self.bar.update(step - self.last)
      self.bar.set_postfix_str(text, refresh=False)
    else:
      elapsed = time.perf_counter() - self.t0
      rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
      eta = (self.total - step) / rate if rate > 0 else float("nan")
      print(f"step {step}/{self.total} {text} eta={eta:.1f}s", file=self.stream, flush=True)
    self.last = step

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
