"""Where a run's numbers go: metrics.jsonl, TensorBoard, and the terminal."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from jaxtrain import records, redact

METRICS_FILE = "metrics.jsonl"


def write_text_atomic(path: Path, text: str) -> None:
  """Writes `text` to `path` so that a crash leaves the old file or the new one,
  never a truncated one (write a sibling, then rename it over `path`)."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)


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
    self.path = Path(workdir) / METRICS_FILE
    self._kept = self._kept_until(resume_step)
    self._file = None

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

  def _open(self) -> None:
    if self._kept is not None:
      write_text_atomic(self.path, "".join(l + "\n" for l in self._kept))
    self._file = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, values: dict[str, Any]) -> None:
    """Appends {"step", **values, "wall_time": seconds since the epoch (as TensorBoard's
    events carry)}: curves of a metric against time need no other clock."""
    record = {"step": step, **{k: json_safe(v) for k, v in values.items()},
              "wall_time": round(time.time(), 3)}
    try:
      if self._file is None:
        self._open()
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:
      from jaxtrain import errors  # pylint: disable=g-import-not-at-top
      raise errors.WriteError(f"cannot write {self.path} ({e.strerror}); free disk space, "
                              "then rerun the same command to resume from the last "
                              "checkpoint") from None

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl, in order."""
  path = Path(workdir) / METRICS_FILE
  return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


class TensorBoard:
  """Scalars and an hparams entry in WORKDIR, via tensorboardX, best effort.

  TensorBoard output must never stop or hang training: tensorboardX's writer
  thread can block forever once the disk is full. Records therefore go through
  a bounded queue to a thread of our own; if writing fails or the queue is
  full, a one-line warning is printed and TensorBoard output stops (metrics.jsonl
  and checkpoints are unaffected). `close()` waits at most a few seconds.
  """

  def __init__(self, workdir: Path, hparams: dict[str, Any], metric_names: list[str],
               queue_size: int = 10_000):
    import queue  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    self.workdir = Path(workdir)
    self.failed = False
    self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
    self._full = queue.Full
    self._thread = threading.Thread(target=self._work, args=(hparams, metric_names),
                                    daemon=True, name="jaxtrain-tensorboard")
    self._thread.start()

  def _work(self, hparams, metric_names) -> None:
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
      writer = SummaryWriter(logdir=str(self.workdir), flush_secs=10)
      # Written into this run's own event file so TensorBoard's HParams view
      # pairs the config with this run's scalars. Only the session-start entry:
      # without an experiment entry, TensorBoard builds the experiment from every
      # run's session entries (all keys and values seen, metrics = the runs'
      # scalar tags). An experiment entry per run would not work: TensorBoard takes
      # the first one it finds for the whole logdir, hiding the other runs' keys.
      _, session_start, _ = hparams_summary(hparams, {m: math.nan for m in metric_names})
      writer.file_writer.add_summary(session_start)
      while True:
        item = self._queue.get()
        if item is None:
          break
        step, values = item
        for k, v in values.items():
          writer.add_scalar(k, v, global_step=step)
      writer.close()
    except Exception as e:  # Disk full, permissions: warn once, keep training.
      self._fail(f"{type(e).__name__}: {e}")

  def _fail(self, why: str) -> None:
    if not self.failed:
      self.failed = True
      print(f"warning: TensorBoard output in {self.workdir} stopped ({why}); training "
            "continues, metrics.jsonl is still written", file=sys.stderr, flush=True)

  def write(self, step: int, values: dict[str, Any]) -> None:
    if self.failed:
      return
    scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
    try:
      self._queue.put_nowait((step, scalars))
    except self._full:
      self._fail("the writer fell behind; is the disk full or very slow?")

  def close(self, timeout: float = 10.0) -> None:
    try:
      self._queue.put(None, timeout=timeout)
    except self._full:
      self._fail("could not flush before closing")
    self._thread.join(timeout=timeout)
    if self._thread.is_alive():
      self._fail(f"the writer did not finish within {timeout:.0f} s")


def hparams_for_tensorboard(flat_config: dict[str, Any]) -> dict[str, Any]:
  """Config leaves as TensorBoard hparams values (str, float, bool)."""
  out = {}
  for k, v in flat_config.items():
    v = redact.value(k, v)
    out[k] = v if isinstance(v, (bool, int, float, str)) else str(v)
  return out


class Progress:
  """A tqdm bar on a terminal; plain lines (one per log step) otherwise."""

  def __init__(self, total: int, start: int, stream=None):
    self.stream = stream or sys.stderr
    self.total, self.start = total, start
    self.t0 = time.perf_counter()
    self.bar = None
    if self.stream.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, initial=start, file=self.stream, unit="step",
                      dynamic_ncols=True)
    self.last = start

  def update(self, step: int, values: dict[str, Any]) -> None:
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
