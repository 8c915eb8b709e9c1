"""The Pareto front of a search with tune.objectives or tune.constraints.

At the end of each phase (`finish_phase`) the members still in the population
join the pool of finished members; the front of that pool (`pareto.front`:
feasible, non-dominated) is kept in the loop state (loop['front']), and every
member of the phase that joins it is exported while its state is at hand, to
WORKDIR/front/member_NNNN/ (a single-run workdir: `--mode=eval` and `init_from`
use it like any run). Members that leave the front lose their export. The
front over the previous front plus the new members equals the front over every
finished member: a feasible member dominated by one off the front is dominated
by one on it.

WORKDIR/best/ holds the feasible member with the best tune.metric (a tie goes
to the member that dominates); when no member is feasible, the one with the
least total violation. It is a member of the front whenever the front is not
empty.
"""

from __future__ import annotations

import math
import shutil
from typing import Any

from jaxtrain import paths
from jaxtrain.paths import Path
from jaxtrain.tune import pareto

FRONT_DIR = "front"


def member_dir(workdir: Path, member_id: int) -> Path:
  """Where a front member is exported: WORKDIR/front/member_NNNN."""
  return paths.of(workdir) / FRONT_DIR / f"member_{member_id:04d}"


def _row(m: dict[str, Any], phase: int) -> dict[str, Any]:
  return {"id": m["id"], "phase": phase, "trial": m["trial"], "settings": m["settings"],
          "eval": m["last_eval"]}


def finish_phase(c, members: list[dict], loop: dict, workdir: Path, export,
                 main: bool = True) -> int | None:
  """Updates loop['front'] with this phase's `members`, exports those that join it
  (`export(index, directory)`, in every process), removes the exports of members
  that left (process 0, `main`, alone: it writes the files); returns the index of
  the member that becomes the best (None: the best stays)."""
  objectives, constraints = pareto.objectives_of(c), pareto.constraints_of(c)
  old = loop.get("front", [])
  rows = [_row(m, loop["phase"]) for m in members]
  pool = old + rows
  values, violation = pareto.points(objectives, constraints, [r["eval"] for r in pool])
  on_front = set(pareto.front(values, violation))
  for i in range(len(rows)):
    if len(old) + i in on_front:
      export(i, member_dir(workdir, rows[i]["id"]))
  for j, row in enumerate(old):
    if j not in on_front and main:  # Dominated by a member of this phase: off the front.
      gone = member_dir(workdir, row["id"])
      if paths.is_url(gone):
        gone.rmtree(missing_ok=True)
      else:
        shutil.rmtree(gone, ignore_errors=True)
  loop["front"] = [pool[i] for i in sorted(on_front)]
  return _new_best(c, rows, loop.get("best"))


def _best_key(c, evals: dict[str, float]) -> tuple[bool, float, float] | None:
  """(feasible, -violation, signed tune.metric): higher is better; None when diverged."""
  objectives, constraints = pareto.objectives_of(c), pareto.constraints_of(c)
  signed, violation = pareto.point(objectives, constraints, evals)
  primary = [o.metric for o in objectives].index(c.tune.metric)
  if not (all(map(math.isfinite, signed)) and math.isfinite(violation)):
    return None
  return (violation <= 0, -violation, signed[primary])


def _dominates(c, a: dict[str, float], b: dict[str, float]) -> bool:
  objectives = pareto.objectives_of(c)
  x = pareto.point(objectives, [], a)[0]
  y = pareto.point(objectives, [], b)[0]
  return all(p >= q for p, q in zip(x, y)) and any(p > q for p, q in zip(x, y))


def _new_best(c, rows: list[dict], previous: dict | None) -> int | None:
  """The index of the row that replaces `previous` as the best, or None."""
  keyed = [(k, i) for i, r in enumerate(rows) if (k := _best_key(c, r["eval"])) is not None]
  if not keyed:
    return None
  top = max(k for k, _ in keyed)
  tied = [i for k, i in keyed if k == top]
  # Among equal keys, one no other tied row dominates (the first such: the lowest slot).
  best = next(i for i in tied
              if not any(_dominates(c, rows[j]["eval"], rows[i]["eval"]) for j in tied))
  if previous is None:
    return best
  before = _best_key(c, previous["eval"])
  if before is None or top > before or (
      top == before and _dominates(c, rows[best]["eval"], previous["eval"])):
    return best
  return None


def result(c, loop: dict, workdir: Path) -> dict[str, Any]:
  """result.json's multi-objective part: the objectives, the constraints and the
  front (each member's settings, objective values, violation, export)."""
  objectives, constraints = pareto.objectives_of(c), pareto.constraints_of(c)
  rows = []
  for r in loop.get("front", []):
    d = pareto.describe(c, r["eval"])
    rows.append({"id": r["id"], "phase": r["phase"], "trial": r["trial"],
                 "settings": r["settings"], **d,
                 "constraints": {str(k): r["eval"].get(k.metric) for k in constraints},
                 "workdir": str(member_dir(workdir, r["id"]))})
  primary = c.tune.metric
  sign = -1.0 if pareto.direction(primary) == "min" else 1.0
  rows.sort(key=lambda r: (-sign * r["objectives"][primary], r["id"]))
  return {"objectives": [{"metric": o.metric, "direction": "maximize" if o.mode == "max"
                          else "minimize"} for o in objectives],
          "constraints": [str(k) for k in constraints],
          "pareto_front": rows}
