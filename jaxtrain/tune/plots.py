"""Figures of a tuning run (matplotlib Figure objects: no display or backend needed).

- WORKDIR/tune/population.png: every member's metric over time, with exploit
  (PBT), cull and refill events marked where they happened.
- WORKDIR/tune/best_schedule.png: the winning member's hyperparameters over
  time, following its ancestry through every exploit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxtrain.io import writers
from jaxtrain.tune import lineage as lineage_lib

_LOG_SCALE = ("learning_rate", "weight_decay", "eps")


def write(workdir: Path, loop: dict[str, Any], events: list[dict[str, Any]],
          metric: str) -> list[Path]:
  """Writes the figures; returns their paths."""
  # Figure objects, not pyplot: no backend is chosen or switched, so a notebook's
  # inline figures keep working after tune.run.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  out_dir = Path(workdir) / "tune"
  # Per member: [(population step, metric value)], from metrics.jsonl.
  curves: dict[int, list[tuple[int, float]]] = {}
  value_at: dict[tuple[int, int, int], float] = {}  # (phase, phase step, member) -> value
  offsets: dict[int, int] = {}
  for r in writers.read_metrics(workdir):
    offsets.setdefault(r["phase"], r["step"] - r["phase_step"])
    for member, value in zip(r["member_ids"], r[metric]):
      value = value if isinstance(value, (int, float)) else float("nan")
      curves.setdefault(member, []).append((r["step"], value))
      value_at[(r["phase"], r["phase_step"], member)] = value

  paths = []
  fig = Figure(figsize=(8, 4.5))
  ax = fig.subplots()
  for points in curves.values():
    ax.plot(*zip(*points), lw=1, alpha=0.7)
  marks = {"exploit": ("^", "tab:red"), "cull": ("x", "black"), "refill": ("o", "tab:green")}
  for kind, (marker, color) in marks.items():
    key = "replaces" if kind == "refill" else "member"
    pts = [(e["step"] + offsets.get(e["phase"], 0), value_at.get((e["phase"], e["step"], e[key])))
           for e in events if e["event"] == kind]
    pts = [p for p in pts if p[1] is not None]
    if pts:
      ax.scatter(*zip(*pts), marker=marker, color=color, s=25, label=kind, zorder=3)
  ax.set_xlabel("population step")
  ax.set_ylabel(metric)
  ax.set_title(f"{len(curves)} members")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="best")
  fig.tight_layout()
  paths.append(out_dir / "population.png")
  fig.savefig(paths[-1], dpi=110)

  best = (loop.get("best") or {}).get("id")
  schedule = lineage_lib.schedule_of(events, best) if best is not None else []
  keys = [k for k, v in (schedule[-1]["settings"] if schedule else {}).items()
          if isinstance(v, (int, float))]
  if keys:
    end = max(s for s, _ in curves.get(best, [(0, 0.0)])) - offsets.get(
        (loop.get("best") or {}).get("phase", 0), 0)
    fig = Figure(figsize=(8, 2.2 * len(keys)))
    axes = fig.subplots(len(keys), 1, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
      xs = [s["step"] for s in schedule] + [max(end, schedule[-1]["step"])]
      ys = [s["settings"][key] for s in schedule] + [schedule[-1]["settings"][key]]
      ax.step(xs, ys, where="post")
      if key.endswith(_LOG_SCALE):
        ax.set_yscale("log")
      ax.set_ylabel(key.split(".")[-1])
    axes[-1, 0].set_xlabel("member step")
    axes[0, 0].set_title(f"Hyperparameter schedule of the best member ({best})")
    fig.tight_layout()
    paths.append(out_dir / "best_schedule.png")
    fig.savefig(paths[-1], dpi=110)
  return paths
