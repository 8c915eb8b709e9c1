"""Where a run's numbers go: metrics.jsonl, TensorBoard, and the terminal."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _json_value(v: Any) -> Any:
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/Inf; keep them visible as strings.
  return v


class MetricsLog:
  """Appends one JSON object per logged step to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: Path, resume_step: int):
    self.path = Path(workdir) / METRICS_FILE
    self._truncate_after(resume_step)
    self._file = open(self.path, "a", encoding="utf-8")

  def _truncate_after(self, step: int) -> None:
    # Records past the restored checkpoint will be logged again by the resumed
    # run; dropping them keeps one record per step.
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text(encoding="utf-8").splitlines():
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        continue  # A line cut short by a crash.
    tmp = self.path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in kept), encoding="utf-8")
    tmp.replace(self.path)

  def write(self, step: int, values: dict[str, Any]) -> None:
    record = {"step": step, **{k: _json_value(v) for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl, in order."""
  path = Path(workdir) / METRICS_FILE
  return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


class TensorBoard:
  """Scalars and an hparams entry in WORKDIR, via tensorboardX."""

  def __init__(self, workdir: Path, hparams: dict[str, Any], metric_names: list[str]):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
    self.writer = SummaryWriter(logdir=str(workdir), flush_secs=10)
    # Written into this run's own event file so TensorBoard's HParams view
    # pairs the config with this run's scalars.
    for summary in hparams_summary(hparams, {m: math.nan for m in metric_names}):
      self.writer.file_writer.add_summary(summary)

  def write(self, step: int, values: dict[str, Any]) -> None:
    for k, v in values.items():
      if isinstance(v, (int, float)):
        self.writer.add_scalar(k, v, global_step=step)

  def close(self) -> None:
    self.writer.close()


def hparams_for_tensorboard(flat_config: dict[str, Any]) -> dict[str, Any]:
  """Config leaves as TensorBoard hparams values (str, float, bool)."""
  out = {}
  for k, v in flat_config.items():
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
