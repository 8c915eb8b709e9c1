"""Digits: one hand-set run vs random search vs PBT, at equal steps per member.

  python -m experiments.digits_tuning [--workdir=runs/experiments] [--quick]

Three ways to get a digits MLP (256-256), each member trained for the same
number of steps (600, the tuning configs' value) on 80% of the training split:

- single: configs/digits_mlp.py as it is (Adam, lr 1e-3), one run;
- random: configs/digits_random.py, 16 sampled (lr, weight decay, dropout)
  settings trained as one population; stalled members are replaced by new
  samples;
- pbt: configs/digits_pbt.py, 16 members whose bottom quarter copies the top
  quarter and perturbs its (lr, weight decay) every 100 steps.

The tuners choose their winner on the held-out 20% of the training split; the
chosen model (for the single run: its final state) is scored once on the 360
test digits. `run` also writes WORKDIR_ROOT/digits_tuning.png: the validation
curves of every member, and test accuracy against wall time.

Measured (one seed, 2 shared CPU cores; the whole study took 143 s):

| method | members | member-steps | val. acc. | test acc. | wall s |
|---|---|---|---|---|---|
| single | 1 | 600 | 0.986 | 0.994 | 12.0 |
| random | 22 | 9,600 | 0.986 | 0.994 | 80.8 |
| pbt | 16 | 9,600 | 0.990 | 0.986 | 46.3 |

Digits is nearly solved by the default config: at this budget neither tuner
beats it on the test split (360 digits: one digit is 0.003), at 16x the
member-steps. Random search counts 22 members because 6 stalled members were
replaced by fresh samples in their slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from experiments import common
from jaxtrain import config as config_lib
from jaxtrain import paths, tune
from jaxtrain.analysis import plots
from jaxtrain.io import writers
from jaxtrain.jobs import evaluate, train

METHODS = {"single": "digits_mlp", "random": "digits_random", "pbt": "digits_pbt"}
NUM_STEPS = 600  # Per member; what configs/digits_{random,pbt}.py train for.
TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT = "train[:80%]", "train[80%:]", "test"
COLORS = {"single": "black", "random": "tab:blue", "pbt": "tab:red"}


def method_config(method: str, quick: bool = False) -> ml_collections.ConfigDict:
  """The config of one method; `quick`: 60 steps and populations of 4."""
  c = common.config_file(METHODS[method])
  c.data.train_split, c.data.eval_split = TRAIN_SPLIT, VALIDATION_SPLIT
  c.data.test_split = "" if method == "single" else TEST_SPLIT
  c.train.num_steps = NUM_STEPS
  c.train.eval_every_steps = 100
  if quick:
    c.train.num_steps, c.train.eval_every_steps = 60, 20
    c.tune.population_size = 4
  c.train.log_every_steps = c.train.eval_every_steps
  c.checkpoint.every_steps = c.train.num_steps
  c.checkpoint.keep = 1
  return c


def _single(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  final = train.run(config, workdir)
  test_config = config_lib.load_snapshot(workdir)
  test_config.data.eval_split = TEST_SPLIT
  test = evaluate.run(workdir, test_config)  # The latest checkpoint: the final state.
  return {"test_accuracy": test["eval/accuracy"],
          "val_accuracy": final["final"]["eval/accuracy"],
          "member_steps": final["step"], "num_members": 1,
          "train_time_sec": final["train_time_sec"]}


def _tuned(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  result = tune.run(config, workdir)
  return {"test_accuracy": result["best_test"]["eval/accuracy"],
          "val_accuracy": result["best_score"],
          "member_steps": result["member_steps"], "num_members": result["num_members"],
          "train_time_sec": result["train_time_sec"],
          "best_settings": result["best_settings"]}


def run(workdir_root: str | Path, quick: bool = False) -> dict[str, Any]:
  """Runs the three methods; returns {"rows": [...], "plot": path of the PNG}.

  Args:
    workdir_root: runs go to WORKDIR_ROOT/digits_tuning/METHOD (a finished run
      found there is resumed, i.e. not retrained: use a fresh root to measure
      times); the figure to WORKDIR_ROOT/digits_tuning.png.
    quick: 60 steps per member and populations of 4, to check that the study
      runs; the accuracies mean little.

  Returns:
    "rows": one dict per method ("single", "random", "pbt") with
    `test_accuracy` (of the chosen model), `val_accuracy` (its score on the
    validation split), `member_steps` (training steps summed over all members,
    refills included), `num_members`, `train_time_sec` (training and
    evaluation), `wall_time_sec` (the whole call: data, compilation, export,
    test scoring) and `workdir`; tuners also give `best_settings`.
  """
  root = paths.of(workdir_root, "workdir")  # Local or gs://.
  rows = []
  for method in METHODS:
    config = method_config(method, quick)
    workdir = root / "digits_tuning" / method
    start = time.perf_counter()
    row = (_single if method == "single" else _tuned)(config, workdir)
    rows.append({"method": method, **row, "wall_time_sec": time.perf_counter() - start,
                 "workdir": str(workdir)})
  plot = plot_comparison(rows, root / "digits_tuning.png")
  return {"rows": rows, "plot": str(plot)}


def _validation_curves(workdir: str | Path) -> dict[Any, list[tuple[int, float]]]:
  """{member: [(its own training step, validation accuracy)]} from a run's metrics.jsonl.

  A member that refilled a slot mid-run starts its own count at 0 there.
  """
  curves: dict[Any, list[tuple[int, float]]] = {}
  records = writers.read_metrics(workdir)
  population = [r for r in records if isinstance(r.get("eval/accuracy"), list)]
  first_eval = min((r["phase_step"] for r in population), default=0)
  for r in population:
    for member, value in zip(r["member_ids"], r["eval/accuracy"]):
      if isinstance(value, (int, float)) and math.isfinite(value):
        curves.setdefault(member, []).append((r["phase_step"], value))
  for member, points in curves.items():
    born = points[0][0] - first_eval
    curves[member] = [(step - born, value) for step, value in points]
  for r in records:  # A single run: one value per evaluation.
    if isinstance(r.get("eval/accuracy"), (int, float)):
      curves.setdefault("run", []).append((r["step"], r["eval/accuracy"]))
  return curves


def plot_comparison(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
  """Writes the two-panel figure (matplotlib, Agg) to `path`; returns the path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (curves_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
  for row in rows:
    color = COLORS.get(row["method"])
    for i, points in enumerate(_validation_curves(row["workdir"]).values()):
      curves_ax.plot(*zip(*points), color=color, marker=".", markersize=3,
                     lw=2 if row["method"] == "single" else 0.8,
                     alpha=1.0 if row["method"] == "single" else 0.5,
                     zorder=3 if row["method"] == "single" else 2,
                     label=row["method"] if i == 0 else None)
    cost_ax.scatter(row["wall_time_sec"], row["test_accuracy"], color=color, s=50, zorder=3)
    cost_ax.annotate(f"{row['method']}\n{row['member_steps']:,} member-steps",
                     (row["wall_time_sec"], row["test_accuracy"]), textcoords="offset points",
                     xytext=(6, -4), fontsize=8)
  curves_ax.set_xlabel("member step")
  curves_ax.set_ylabel("validation accuracy")
  curves_ax.set_title("Every member's validation accuracy")
  curves_ax.legend(loc="lower right")
  low = min(r["test_accuracy"] for r in rows)
  cost_ax.set_ylim(max(0.0, low - 0.05), 1.0)
  cost_ax.set_xlim(0, 1.3 * max(r["wall_time_sec"] for r in rows))
  cost_ax.set_xlabel("wall time (s)")
  cost_ax.set_ylabel("test accuracy of the chosen model")
  cost_ax.set_title("Test accuracy vs cost")
  fig.tight_layout()
  path = paths.of(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  plots.save_figure(fig, path, dpi=110)  # Through the path's own file (gs:// too).
  plt.close(fig)
  return path


TABLE_COLUMNS = (
    ("method", "method", ""), ("members", "num_members", ","),
    ("member-steps", "member_steps", ","), ("val. acc.", "val_accuracy", ".3f"),
    ("test acc.", "test_accuracy", ".3f"), ("train s", "train_time_sec", ".1f"),
    ("wall s", "wall_time_sec", ".1f"))


def table(rows: Sequence[dict[str, Any]]) -> str:
  """The markdown table of `run`'s rows."""
  return common.markdown_table(rows, TABLE_COLUMNS)


def main(argv: Sequence[str] | None = None) -> None:
  args = common.parse_args(__doc__.splitlines()[0], argv)
  result = run(args.workdir, quick=args.quick)
  print(table(result["rows"]))
  print(f"\nplot: {result['plot']}")


if __name__ == "__main__":
  main()
