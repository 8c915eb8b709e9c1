"""tune/population.png and tune/best_schedule.png, drawn from hand-made records.

A population's metrics.jsonl and lineage events are written here directly (no
training), so every case runs in well under a second: log axes for losses,
one legend entry per member and per event kind, non-finite values left out.
"""

import json
import math

import numpy as np
import pytest
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg

from jaxtrain.tune import plots


def _workdir(tmp_path, values, metric, phase_start=0):
  """A tuning workdir whose metrics.jsonl holds `values[i][m]`: member m's metric at
  the (i + 1)-th evaluation, every 100 steps."""
  (tmp_path / "tune").mkdir(parents=True, exist_ok=True)
  members = list(range(len(values[0])))
  with (tmp_path / "metrics.jsonl").open("w", encoding="utf-8") as f:
    for i, row in enumerate(values):
      step = 100 * (i + 1)
      f.write(json.dumps({"step": phase_start + step, "phase": 0, "phase_step": step,
                          "member_ids": members, metric: row,
                          "train/loss": [1.0] * len(row)}) + "\n")
  return tmp_path


def _event(kind, member, step, **extra):
  return {"event": kind, "member": member, "parent": None, "step": step, "phase": 0,
          "before": {}, "after": {}, "score": None, **extra}


def _figure(workdir, events, metric):
  fig = plots.population_figure(*plots._read_curves(workdir, metric), events, metric)
  FigureCanvasAgg(fig).draw()
  return fig


def _losses(num_members, num_evals=6):
  """Losses falling from ~2 to ~0.3, one curve per member, all different."""
  steps = np.arange(1, num_evals + 1)[:, None]
  return (2.0 / steps ** (0.5 + 0.05 * np.arange(num_members))).tolist()


def _legend_texts(fig):
  return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_loss_is_on_a_log_axis_with_each_member_and_event_kind_in_the_legend(tmp_path):
  workdir = _workdir(tmp_path, _losses(5), "eval/loss")
  events = [_event("exploit", 1, 200, parent=0), _event("exploit", 2, 300, parent=0),
            _event("cull", 3, 300), _event("refill", 4, 400, replaces=4),
            _event("stop", 0, 500)]
  fig = _figure(workdir, events, "eval/loss")
  ax = fig.axes[0]
  assert ax.get_yscale() == "log"
  # Readable numbers on the axis although the losses span less than one decade.
  labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)
            if t.get_text()]
  assert len(labels) >= 3 and all("10^" not in t and "times" not in t for t in labels)
  texts = _legend_texts(fig)
  assert [t for t in texts if t.startswith("member")] == [f"member {m}" for m in range(5)]
  assert {"exploit (2)", "cull (1)", "refill (1)", "stop (1)"} <= set(texts)
  # Members tell apart: no two lines share colour and line style.
  styles = {(colors.to_hex(line.get_color()), line.get_linestyle()) for line in ax.get_lines()}
  assert len(styles) == 5
  # Event kinds tell apart by marker shape and by colour.
  scatters = ax.collections
  assert len(scatters) == 4
  looks = {(colors.to_hex(c.get_facecolor()[0]) if len(c.get_facecolor()) else "hollow",
            colors.to_hex(c.get_edgecolor()[0])) for c in scatters}
  shapes = {tuple(np.round(c.get_paths()[0].vertices.ravel(), 3)) for c in scatters}
  assert len(looks) == 4 and len(shapes) == 4


def test_accuracy_within_a_decade_stays_linear_and_wide_spans_go_log(tmp_path):
  accuracies = [[0.3 + 0.1 * i + 0.01 * m for m in range(3)] for i in range(6)]
  fig = _figure(_workdir(tmp_path / "narrow", accuracies, "eval/accuracy"), [],
                "eval/accuracy")
  assert fig.axes[0].get_yscale() == "linear"
  accuracies[0] = [0.004, 0.3, 0.3]  # A member far below chance: more than a decade.
  fig = _figure(_workdir(tmp_path / "wide", accuracies, "eval/accuracy"), [],
                "eval/accuracy")
  assert fig.axes[0].get_yscale() == "log"


def test_non_finite_values_are_left_out_not_drawn_as_spikes(tmp_path):
  values = _losses(4)
  values[2][1] = "nan"  # As metrics.jsonl records them (JSON has no NaN / Infinity).
  values[3][1] = "inf"
  values[4][3] = "-inf"
  workdir = _workdir(tmp_path, values, "eval/loss")
  events = [_event("exploit", 1, 300, parent=0), _event("exploit", 0, 300, parent=2)]
  fig = _figure(workdir, events, "eval/loss")
  ax = fig.axes[0]
  finite = [v for row in values for v in row if isinstance(v, float)]
  low, high = ax.get_ylim()
  # The axis hugs the finite values: a drawn inf or a clamp to the limit would stretch it.
  assert min(finite) / 2 < low <= min(finite) and max(finite) <= high < 2 * max(finite)
  for line in ax.get_lines():
    y = np.asarray(line.get_ydata(), float)
    assert np.all(np.isfinite(y) | np.isnan(y))  # NaN: a gap in the line.
  assert "3 non-finite values not drawn" in ax.get_title()
  # The exploit of member 1 at an infinite loss still shows, on the top edge.
  assert "exploit (2)" in _legend_texts(fig)
  assert "top edge" in ax.get_title()


def test_many_members_get_a_colour_scale_instead_of_a_legend(tmp_path):
  workdir = _workdir(tmp_path, _losses(plots.MAX_LEGEND_MEMBERS + 4), "eval/loss")
  fig = _figure(workdir, [_event("exploit", 3, 200, parent=0)], "eval/loss")
  texts = _legend_texts(fig)
  assert not any(t.startswith("member") for t in texts) and "exploit (1)" in texts
  colorbars = [a for a in fig.axes if a.get_ylabel() == "member id"]
  assert len(colorbars) == 1
  colours = {colors.to_hex(line.get_color()) for line in fig.axes[0].get_lines()}
  assert len(colours) == plots.MAX_LEGEND_MEMBERS + 4


def test_sixteen_members_are_sixteen_legend_entries(tmp_path):
  workdir = _workdir(tmp_path, _losses(16), "eval/loss")
  fig = _figure(workdir, [], "eval/loss")
  assert [t for t in _legend_texts(fig) if t.startswith("member")] == [
      f"member {m}" for m in range(16)]
  lines = fig.axes[0].get_lines()
  assert len({(colors.to_hex(l.get_color()), l.get_linestyle()) for l in lines}) == 16
  assert not fig.legends[1:]  # No events, no events legend.


def test_write_saves_both_figures(tmp_path):
  workdir = _workdir(tmp_path, _losses(3), "eval/loss")
  events = [_event("init", m, 0, after={"optim.learning_rate": 0.1 * (m + 1)})
            for m in range(3)]
  events.append(_event("exploit", 2, 300, parent=0, before={"optim.learning_rate": 0.3},
                       after={"optim.learning_rate": 0.05}))
  paths = plots.write(workdir, {"best": {"id": 2, "phase": 0}}, events, "eval/loss")
  assert [p.name for p in paths] == ["population.png", "best_schedule.png"]
  assert all(len(p.read_bytes()) > 1000 for p in paths)
  assert math.isclose(
      plots.schedule_figure({"best": {"id": 2}}, events, {2: [(600, 1.0)]}, {})
      .axes[0].get_lines()[0].get_ydata()[-1], 0.05)


@pytest.mark.parametrize("metric", ["eval/loss", "eval/accuracy"])
def test_a_workdir_without_the_metric_draws_an_empty_population(tmp_path, metric):
  # metrics.jsonl records of another metric only (e.g. before the first evaluation).
  workdir = _workdir(tmp_path, _losses(2), "eval/other")
  fig = _figure(workdir, [], metric)
  assert fig.axes[0].get_lines() == [] and "0 members" in fig.axes[0].get_title()
