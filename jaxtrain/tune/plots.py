"""Figures of a tuning run (matplotlib Figure objects: no display or backend needed).

- WORKDIR/tune/population.png: every member's metric over time, one colour per
  member, with exploit (PBT), cull, refill and stop events marked where they
  happened; losses on a log axis.
- WORKDIR/tune/best_schedule.png: the winning member's hyperparameters over
  time, following its ancestry through every exploit.

- WORKDIR/tune/pareto.png (a search with tune.objectives or tune.constraints): every
  finished member by its first two objectives, infeasible ones hollow, the Pareto
  front highlighted and joined.

`population_figure`, `schedule_figure` and `pareto_figure` build the Figures (tests
read them back); `write` and `write_pareto` save them.
"""

from __future__ import annotations

import math
from typing import Any

from jaxtrain import config as config_lib
from jaxtrain.analysis.plots import save_figure
from jaxtrain.io import writers
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain import paths
from jaxtrain.paths import Path

_LOG_SCALE = ("learning_rate", "weight_decay", "eps")
# Up to this many members each gets a legend entry (tab10's colours, then the same
# colours dashed); beyond, one colour scale over the member ids and a colorbar.
MAX_LEGEND_MEMBERS = 16
# Lineage events drawn on the population plot: (marker, face colour, edge colour,
# size, z-order). Shapes and colours both differ; the dark edges keep them apart from
# the members' lines. A refill is a hollow ring drawn under the cull it follows (a
# halving rung culls and refills a slot at the same step and value), so both show.
EVENT_STYLES = {
    "exploit": ("^", "gold", "black", 45, 4),
    "cull": ("X", "black", "black", 45, 5),
    "refill": ("o", "none", "tab:green", 110, 3),
    "stop": ("s", "tab:gray", "black", 40, 4),
}


def _number(value: Any) -> float:
  """A metric value from metrics.jsonl as a float: non-finite values arrive as the
  strings "nan" / "inf" (JSON has no such numbers), anything else unknown as NaN."""
  if isinstance(value, bool):
    return math.nan
  if isinstance(value, (int, float)):
    return float(value)
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _read_curves(workdir: Path, metric: str):
  """(curves, value_at, offsets) from WORKDIR/metrics.jsonl.

  curves[member] = [(population step, value)]; value_at[(phase, phase step, member)]
  = value, to place lineage events (they record phase steps); offsets[phase] = the
  population step at which the phase started.
  """
  curves: dict[int, list[tuple[int, float]]] = {}
  value_at: dict[tuple[int, int, int], float] = {}
  offsets: dict[int, int] = {}
  for r in writers.read_metrics(workdir):
    if metric not in r:
      continue
    offsets.setdefault(r["phase"], r["step"] - r["phase_step"])
    for member, value in zip(r["member_ids"], r[metric]):
      value = _number(value)
      curves.setdefault(member, []).append((r["step"], value))
      value_at[(r["phase"], r["phase_step"], member)] = value
  return curves, value_at, offsets


def _log_axis(values: list[float], metric: str) -> bool:
  """Log y for a lower-is-better metric (a loss: the early and diverging values are
  orders of magnitude above the converged ones) or for any metric spanning more than
  a decade; only when every value is positive."""
  if not values or min(values) <= 0:
    return False
  return (config_lib.RANKABLE_METRICS.get(metric) == "min"
          or max(values) / min(values) > 10)


def _plain_log_ticks(axis, low: float, high: float) -> None:
  """Log-axis tick labels as plain numbers (0.9, 1, 1.5, 2; not 2x10^0), with enough of
  them to read a value off: a loss plot often spans less than one decade, where the
  default labels one or two ticks."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
  axis.set_major_formatter(plain)
  decades = math.log10(high / low)
  if decades < 1:
    axis.set_minor_locator(ticker.LogLocator(subs=(1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))
    axis.set_minor_formatter(plain)
  elif decades < 2.5:  # 2 and 5 between the decades.
    axis.set_minor_formatter(ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
  else:
    axis.set_minor_formatter(ticker.NullFormatter())


def population_figure(curves: dict[int, list[tuple[int, float]]],
                      value_at: dict[tuple[int, int, int], float], offsets: dict[int, int],
                      events: list[dict[str, Any]], metric: str):
  """Every member's `metric` against the population step, with lineage events.

  Non-finite values are left out (a gap in the member's line, not a spike to the
  axis limit); an event at such a value sits on the worse edge of the axes (top
  for a loss, bottom otherwise), so the event still shows.
  """
  # Figure objects, not pyplot: no backend is chosen or switched, so a notebook's
  # inline figures keep working after tune.run.
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import cm, colors  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(9, 4.8), layout="constrained")
  ax = fig.subplots()
  members = sorted(curves)
  finite = [v for m in members for _, v in curves[m] if math.isfinite(v)]
  dropped = sum(1 for m in members for _, v in curves[m] if not math.isfinite(v))
  if _log_axis(finite, metric):
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis, min(finite), max(finite))
  legend = len(members) <= MAX_LEGEND_MEMBERS
  if legend:
    tab10 = [colors.to_rgb(f"C{i}") for i in range(10)]
    style = {m: (tab10[i % 10], "-" if i < 10 else "--") for i, m in enumerate(members)}
  else:
    norm = colors.Normalize(min(members), max(members))
    cmap = matplotlib.colormaps["viridis"]
    style = {m: (cmap(norm(m)), "-") for m in members}
  for m in members:
    steps = [s for s, _ in curves[m]]
    values = [v if math.isfinite(v) else math.nan for _, v in curves[m]]  # NaN: a gap.
    color, linestyle = style[m]
    ax.plot(steps, values, color=color, linestyle=linestyle, lw=1.2,
            alpha=0.85 if legend else 0.6, label=f"member {m}",
            marker="." if len(steps) < 30 else None, markersize=4)
  lower_is_better = config_lib.RANKABLE_METRICS.get(metric) == "min"
  edge = ax.get_xaxis_transform()  # x in data, y in axes fractions.
  event_handles, edge_events = [], 0
  for kind, (marker, face, edgecolor, size, zorder) in EVENT_STYLES.items():
    key = "replaces" if kind == "refill" else "member"  # A refill marks the replaced member.
    on_curve, on_edge = [], []
    for e in events:
      if e["event"] != kind:
        continue
      x = e["step"] + offsets.get(e["phase"], 0)
      y = value_at.get((e["phase"], e["step"], e.get(key)))
      if y is None:
        continue  # No evaluation at that step (e.g. a run stopped before one).
      (on_curve if math.isfinite(y) else on_edge).append((x, y))
    if not on_curve and not on_edge:
      continue
    kwargs = dict(marker=marker, facecolor=face, edgecolor=edgecolor, s=size, zorder=zorder,
                  linewidths=1.6 if face == "none" else 0.8)
    if on_curve:
      handle = ax.scatter(*zip(*on_curve), **kwargs)
    if on_edge:
      edge_events += len(on_edge)
      xs = [x for x, _ in on_edge]
      handle = ax.scatter(xs, [1.0 if lower_is_better else 0.0] * len(xs), transform=edge,
                          clip_on=False, **kwargs)
    handle.set_label(f"{kind} ({len(on_curve) + len(on_edge)})")
    event_handles.append(handle)
  ax.set_xlabel("population step")
  ax.set_ylabel(metric + (" (log scale)" if ax.get_yscale() == "log" else ""))
  ax.grid(alpha=0.3, which="major")
  if ax.get_yscale() == "log" and math.log10(max(finite) / min(finite)) < 2.5:
    ax.grid(alpha=0.12, which="minor", axis="y")  # Where the minor ticks are labelled.
  title = f"{metric} of {len(members)} members"
  if dropped:
    where = "top" if lower_is_better else "bottom"
    title += f"; {dropped} non-finite value{'s' * (dropped > 1)} not drawn"
    if edge_events:
      title += f" (their events on the {where} edge)"
  ax.set_title(title)
  if legend and members:
    fig.legend(handles=ax.get_lines(), loc="outside right upper", fontsize=8,
               title="member", title_fontsize=8)
  elif not legend:
    mappable = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=ax, label="member id")
  if event_handles:
    fig.legend(handles=event_handles, loc="outside lower center", ncols=len(event_handles),
               fontsize=8)
  return fig


def schedule_figure(loop: dict[str, Any], events: list[dict[str, Any]],
                    curves: dict[int, list[tuple[int, float]]], offsets: dict[int, int]):
  """The best member's numeric hyperparameters against its step; None without one."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  best = (loop.get("best") or {}).get("id")
  schedule = lineage_lib.schedule_of(events, best) if best is not None else []
  keys = [k for k, v in (schedule[-1]["settings"] if schedule else {}).items()
          if isinstance(v, (int, float))]
  if not keys:
    return None
  end = max(s for s, _ in curves.get(best, [(0, 0.0)])) - offsets.get(
      (loop.get("best") or {}).get("phase", 0), 0)
  fig = Figure(figsize=(8, 2.2 * len(keys)), layout="constrained")
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
  return fig


def write(workdir: Path, loop: dict[str, Any], events: list[dict[str, Any]],
          metric: str) -> list[Path]:
  """Writes the figures; returns their paths."""
  out_dir = paths.of(workdir) / "tune"
  curves, value_at, offsets = _read_curves(paths.of(workdir), metric)
  written = [out_dir / "population.png"]
  save_figure(population_figure(curves, value_at, offsets, events, metric), written[-1], 110)
  fig = schedule_figure(loop, events, curves, offsets)
  if fig is not None:
    written.append(out_dir / "best_schedule.png")
    save_figure(fig, written[-1], 110)
  return written


def pareto_figure(objectives: list[tuple[str, str]], members: list[dict[str, Any]],
                  front_ids: set[int], bounds: tuple[tuple[str, float], ...] = (),
                  title: str = ""):
  """The members (rows with 'id', 'eval' and 'feasible') by their first two
  objectives ((metric, 'max'|'min') pairs): feasible filled, infeasible hollow, the
  front's members (`front_ids`) in red, joined in order of the first objective;
  `bounds` ((metric, bound) of the constraints) dashed where their metric is an axis.
  Returns the Figure; its first collection is the front, the second the other
  feasible members, the third the infeasible ones. None with fewer than two objectives."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  if len(objectives) < 2:
    return None
  (mx, dx), (my, dy) = objectives[0], objectives[1]

  def xy(rows):
    pts = [(_number(r["eval"].get(mx)), _number(r["eval"].get(my))) for r in rows]
    return [p for p in pts if all(map(math.isfinite, p))]

  front = sorted(xy([r for r in members if r["id"] in front_ids]))
  rest = [r for r in members if r["id"] not in front_ids]
  feasible = xy([r for r in rest if r["feasible"]])
  infeasible = xy([r for r in rest if not r["feasible"]])
  fig = Figure(figsize=(6.4, 4.8), layout="constrained")
  ax = fig.add_subplot()
  unzip = lambda pts: ([p[0] for p in pts], [p[1] for p in pts])
  ax.scatter(*unzip(front), c="tab:red", s=45, zorder=3, label=f"Pareto front ({len(front)})")
  ax.scatter(*unzip(feasible), c="tab:blue", s=20, alpha=0.7, label="feasible")
  ax.scatter(*unzip(infeasible), facecolors="none", edgecolors="tab:gray", s=20,
             label="infeasible")
  if front:
    ax.plot(*unzip(front), color="tab:red", lw=1, zorder=2)
  for metric, bound in bounds:
    if metric in (mx, my):
      (ax.axvline if metric == mx else ax.axhline)(bound, color="tab:gray", ls="--", lw=1)
  ax.set_xlabel(f"{mx} ({'higher' if dx == 'max' else 'lower'} is better)")
  ax.set_ylabel(f"{my} ({'higher' if dy == 'max' else 'lower'} is better)")
  ax.set_title(title or "members by objective")
  ax.legend(loc="best", fontsize="small")
  return fig


def write_pareto(workdir: Path, config, loop: dict[str, Any]) -> Path | None:
  """Writes WORKDIR/tune/pareto.png (`pareto_figure` of every finished member)."""
  from jaxtrain.tune import pareto  # pylint: disable=g-import-not-at-top
  objectives = [(o.metric, o.mode) for o in pareto.objectives_of(config)]
  rows = [{**r, **pareto.describe(config, r["eval"])} for r in loop["done"]]
  constraints = pareto.constraints_of(config)
  text = ", ".join(str(k) for k in constraints)
  fig = pareto_figure(objectives, rows, {r["id"] for r in loop.get("front", [])},
                      tuple((k.metric, k.bound) for k in constraints),
                      f"subject to {text}" if text else "")
  if fig is None:
    return None
  path = paths.of(workdir) / "tune" / "pareto.png"
  save_figure(fig, path, 110)
  return path
