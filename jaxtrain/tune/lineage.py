"""The population's history: WORKDIR/tune/lineage.jsonl, one event per line.

Events: `init` (a member starts with settings), `exploit` (a member copies a
parent's whole state and explores new hyperparameters), `refill` (a culled or
stopped slot gets a new member), `cull` (successive halving drops a member),
`stop` (per-member early stopping), `final` (score at the end of its phase).
Each record has member, parent, step, phase, hyperparameters before and
after, and score, so the winner's schedule can be replayed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from jaxtrain import errors, paths, records
from jaxtrain.paths import Path


def _clean(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


class Lineage:
  """Appends events; on resume keeps only the first `keep` (those checkpointed)."""

  def __init__(self, path: Path, keep: int, write: bool = True, listener=None):
    self.path = paths.of(path)
    fix = ("the search replays it on resume: restore it, or start the search over in a new "
           "--workdir")
    lines = [line for line, _ in records.read_lines(self.path, fix, required=("event",))]
    if len(lines) < keep:  # Deleted or cut: the replay would silently lose members' histories.
      what = "is missing" if not self.path.exists() else f"holds {len(lines)} events"
      raise errors.UserError(f"{self.path} {what}, but the checkpoint being resumed recorded "
                             f"{keep}: {fix}")
    self._kept = lines[:keep]
    self.count = keep
    # Rewritten at the first event: a refused run leaves it as it was.
    self._log = paths.LineLog(self.path, self._kept) if write else None
    self._write = write  # False: count events only (processes other than 0).
    self._listener = listener  # Called with each new event (e.g. TensorBoard's text).

  def write(self, **event: Any) -> None:
    if not self._write:
      self.count += 1
      return
    self._log.add(json.dumps(_clean(event)))
    self.count += 1
    if self._listener is not None:
      self._listener(event)

  def sync(self) -> None:
    """The events so far on storage (before a checkpoint records `count`)."""
    if self._log is not None:
      self._log.sync()

  def close(self) -> None:
    if self._log is not None:
      self._log.close()


def read(path: Path) -> list[dict[str, Any]]:
  path = paths.of(path)
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def schedule_of(events: list[dict[str, Any]], member: int) -> list[dict[str, Any]]:
  """The hyperparameter schedule that produced `member`, following its ancestry.

  Returns [{"step": s, "settings": {...}}, ...] in step order: the settings in
  force from step s on. An exploit at step s means the member's state up to s
  is its parent's, so the walk continues into the parent's history before s.
  """
  segments = []
  current, until = member, math.inf
  while current is not None:
    history = [e for e in events if e["member"] == current and e["step"] < until
               and e["event"] in ("init", "refill", "exploit")]
    if not history:
      break
    event = history[-1]
    segments.append({"step": event["step"], "settings": event["after"]})
    if event["event"] == "exploit":
      current, until = event["parent"], event["step"]
    else:
      current = None  # Created fresh: the history starts here.
  merged: dict[str, Any] = {}
  out = []
  for segment in reversed(segments):
    merged = {**merged, **segment["settings"]}
    out.append({"step": segment["step"], "settings": dict(merged)})
  return out
