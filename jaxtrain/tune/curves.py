"""A search's history as data (`jaxtrain.tune.history`): members' curves, lineage events.

    h = jaxtrain.tune.history("runs/digits_pbt")
    for member, curve in h.curves.items():
        plt.plot(curve["step"], curve["eval/loss"], label=f"member {member}")
    exploits = h.events_of("exploit")

Read from WORKDIR/metrics.jsonl (one record per evaluation of the population, each
metric a list over `member_ids`), tune/lineage.jsonl and tune/result.json, so it works
on a finished search, a running one and a stopped one alike; nothing is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain import records as records_lib
from jaxtrain.io import writers
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain import paths
from jaxtrain.paths import Path


@dataclasses.dataclass
class History:
  """`curves[member]`: {"step": the steps the member had trained at each evaluation (a
  refill starts at 0, as in its TensorBoard run), "global_step": the population's step
  over all phases, "phase": ..., and one list per metric ("train/loss", "eval/accuracy",
  ...)}. `events`: tune/lineage.jsonl's events in order (init, exploit, refill, cull,
  stop, final). `members`: tune/result.json's table (best first; empty until the
  search has finished a phase)."""
  curves: dict[int, dict[str, list]]
  events: list[dict[str, Any]]
  members: list[dict[str, Any]]
  metric: str

  def events_of(self, *kinds: str) -> list[dict[str, Any]]:
    """The lineage events of these kinds ('exploit', 'cull', ...), in order."""
    return [e for e in self.events if e["event"] in kinds]

  def frames(self):
    """(curves, events) as pandas DataFrames (pandas is not a dependency of jaxtrain:
    install it to use this): one row per member and evaluation, one per event."""
    try:
      import pandas as pd  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise errors.UserError("History.frames() needs pandas (pip install pandas); "
                             "History.curves and .events hold the same as dicts") from None
    rows = [{"member": member, **{k: v[i] for k, v in curve.items()}}
            for member, curve in self.curves.items() for i in range(len(curve["step"]))]
    return pd.DataFrame(rows), pd.DataFrame(self.events)


def history(workdir: str | Path) -> History:
  """The history of the search in `workdir` (see `History`).

  Raises:
    UserError: `workdir` is not a tuning workdir, or its records are damaged.
  """
  workdir = paths.of(workdir)
  if not (workdir / "tune").is_dir():
    raise errors.UserError(f"{workdir} is not a tuning workdir (it has no tune/); pass the "
                           "--workdir of a search")
  events = lineage_lib.read(workdir / "tune" / "lineage.jsonl")
  born: dict[int, int] = {}  # member -> the phase step it started at.
  idle: dict[int, list[list[float]]] = {}  # member -> [(stopped at, revived at)] phase steps.
  for e in events:
    if e["event"] in ("init", "refill"):
      born[e["member"]] = e["step"]
    elif e["event"] in ("stop", "cull"):
      idle.setdefault(e["member"], []).append([e["step"], float("inf")])
    elif e["event"] == "exploit" and idle.get(e["member"]) and idle[e["member"]][-1][1] > e["step"]:
      idle[e["member"]][-1][1] = e["step"]  # PBT may revive a stopped member as a copy.
  records = writers.read_metrics(workdir) if (workdir / writers.METRICS_FILE).exists() else []
  curves: dict[int, dict[str, list]] = {}
  for r in records:
    per_member = [k for k, v in r.items() if isinstance(v, list) and k != "member_ids"]
    for i, member in enumerate(r["member_ids"]):
      step = r["phase_step"]
      if any(stopped < step <= revived for stopped, revived in idle.get(member, [])):
        continue  # Stopped: evaluated with the others, but nothing trained. No new point.
      curve = curves.setdefault(member, {"step": [], "global_step": [], "phase": [],
                                         **{k: [] for k in per_member}})
      curve["step"].append(step - born.get(member, 0))
      curve["global_step"].append(r["step"])
      curve["phase"].append(r["phase"])
      for k in per_member:
        curve.setdefault(k, []).append(r[k][i])
  path = workdir / "tune" / "result.json"
  result = (records_lib.read_object(path, "it is rewritten when the search finishes a phase; "
                                    "rerun the search") if path.exists() else {})
  return History(curves=curves, events=events, members=result.get("members", []),
                 metric=result.get("metric") or config_lib.load_snapshot(workdir).tune.metric)
