"""Figures of an evaluation report and of a run comparison.

Built on `matplotlib.figure.Figure` (saved through the Agg renderer): no
display, and no pyplot backend is chosen or switched, so a notebook's inline
figures keep working. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from jaxtrain.paths import Path

import numpy as np


# The confusion matrix labels every class up to this many: the figure is at most 14"
# wide, so 60 classes leave each cell about 13 points, room for a 7-point label. Past
# that, every k-th class is labelled (k from LABEL_STEPS, at most MAX_TICKED labels) and
# the title says so.
MAX_TICKED = 60
LABEL_STEPS = (2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
# Slice names are wrapped to two lines of this many characters in the plot, longer
# ones cut in the middle (report.md has them whole).
SLICE_LINE = 20


def _figure(width: float, height: float):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
  """Writes `fig` as a PNG to `path` (local or gs://: through the path's own file, as
  matplotlib would open a URL as a local file name)."""
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
  return path


def _save(fig, path: Path) -> Path:
  return save_figure(fig, path)



def _label_step(num_classes: int) -> int:
  """1 (every class labelled) up to MAX_TICKED classes, else the smallest round step
  that keeps the labels to at most MAX_TICKED."""
  if num_classes <= MAX_TICKED:
    return 1
  return next((k for k in LABEL_STEPS if -(-num_classes // k) <= MAX_TICKED),
              -(-num_classes // MAX_TICKED))


def confusion_matrix(confusion: Sequence[Sequence[int]], path: Path) -> Path:
  """Counts per (true, predicted) class; rows normalized for the colours.

  Every class gets its tick label up to MAX_TICKED classes; beyond that every
  k-th class does (see `_label_step`), and the title says which.
  """
  counts = np.asarray(confusion)
  num_classes = counts.shape[0]
  rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  size = min(3 + 0.45 * num_classes, 14)
  fig = _figure(size, size * 0.85)
  ax = fig.add_subplot()
  image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, label="fraction of the true class")
  if num_classes <= 20:
    for i in range(num_classes):
      for j in range(num_classes):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black")
  # Explicit ticks: imshow's default locator labels every other class once there are ~10.
  step = _label_step(num_classes)
  ticked = list(range(0, num_classes, step))
  fontsize = 10 if num_classes <= 20 else 8 if num_classes <= 40 else 7
  names = [str(c) for c in ticked]
  ax.set_xticks(ticked, names, fontsize=fontsize, rotation=90 if len(ticked) > 20 else 0)
  ax.set_yticks(ticked, names, fontsize=fontsize)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  suffix = ("th" if 11 <= step % 100 <= 13 else
            {1: "st", 2: "nd", 3: "rd"}.get(step % 10, "th"))
  ax.set_title("Confusion matrix" if step == 1 else
               f"Confusion matrix ({num_classes} classes, every {step}{suffix} labelled)")
  return _save(fig, path)


def _count_alpha(counts: np.ndarray) -> np.ndarray:
  """Opacity per bin, growing with log(1 + count): a bin of a handful of examples is
  faint, so its (noisy) accuracy does not look as solid as the bins that make up the
  ECE. The fullest bin is opaque; the floor keeps a 1-example bin visible."""
  scale = np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)
  return 0.15 + 0.85 * scale


def reliability_diagram(reliability: dict, ece: float, path: Path) -> Path:
  """Accuracy against confidence per bin, and how many examples each bin holds.

  Accuracy bars are shaded by their bin's example count (`_count_alpha`); the
  panel below gives the counts on a log axis, each written over its bar, so a
  bin of 3 examples is visible next to one of 3000. Only the drawing depends on
  the counts: the ECE in the title is the report's.
  """
  from matplotlib import colors, ticker  # pylint: disable=g-import-not-at-top
  edges = np.asarray(reliability["bin_edges"], np.float64)
  counts = np.asarray(reliability["count"])
  accuracy = np.asarray(reliability["accuracy"], np.float64)
  width = np.diff(edges)
  fig = _figure(5.5, 6.5)
  ax, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
  filled = counts > 0
  base = colors.to_rgb("tab:blue")
  alpha = _count_alpha(counts)
  ax.bar(edges[:-1][filled], accuracy[filled], width=width[filled], align="edge",
         color=[(*base, a) for a in alpha[filled]],
         edgecolor=[(0, 0, 0, a) for a in alpha[filled]],
         label="accuracy (fainter: fewer examples)")
  ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
  ax.set_ylabel("accuracy")
  ax.set_ylim(0, 1)
  ax.set_title(f"Reliability diagram (ECE = {ece:.4f})")
  ax.legend(loc="upper left", fontsize=8)
  bars = ax_count.bar(edges[:-1][filled], counts[filled], width=width[filled], align="edge",
                      color="tab:gray", edgecolor="black")
  ax_count.bar_label(bars, [str(int(c)) for c in counts[filled]], fontsize=7, padding=1)
  ax_count.set_yscale("log")
  ax_count.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 100, not 10²
  if filled.any():  # Head room above the tallest bar for its count.
    ax_count.set_ylim(0.5, counts.max() * 6)
  ax_count.set_xlabel("confidence (top-1 probability)")
  ax_count.set_ylabel("examples")
  ax_count.set_xlim(0, 1)
  return _save(fig, path)


def robustness_curves(robustness: dict, path: Path) -> Path:
  """Accuracy against noise std (left) and against adversarial eps (right)."""
  fig = _figure(10, 4)
  ax_noise, ax_adv = fig.subplots(1, 2)
  noise = robustness["noise"]
  ax_noise.plot(noise["levels"], noise["accuracy"], "o-")
  ax_noise.set_xlabel("Gaussian noise std")
  ax_noise.set_title("Input noise")
  for name in ("fgsm", "pgd"):
    curve = robustness[name]
    ax_adv.plot(curve["epsilons"], curve["accuracy"], "o-", label=name.upper())
  ax_adv.set_xlabel("L-inf epsilon")
  ax_adv.set_title("Adversarial perturbations")
  ax_adv.legend()
  for ax in (ax_noise, ax_adv):
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
  return _save(fig, path)


def _two_lines(name: str) -> str:
  """`name` in at most two lines of SLICE_LINE characters (cut in the middle if longer)."""
  if len(name) > 2 * SLICE_LINE:
    name = name[:SLICE_LINE] + "\u2026" + name[-(SLICE_LINE - 1):]
  lines = textwrap.wrap(name, SLICE_LINE) or [name]
  if len(lines) > 2:  # Word breaks made a third line: break anywhere instead.
    lines = [name[:SLICE_LINE], name[SLICE_LINE:]]
  return "\n".join(lines)


def slice_accuracy(table: list[dict], key: str, path: Path,
                   overall: float | None = None) -> Path:
  """One bar per slice: accuracy, with the overall accuracy (if given) as a line.

  Tick labels are vertical when a name is long or there are many slices, so
  that neighbours never overlap; long names are wrapped (see `_two_lines`).
  """
  names = [str(r["slice"]) for r in table]
  shown = [_two_lines(n) for n in names]
  longest = max((len(line) for n in shown for line in n.split("\n")), default=0)
  fig = _figure(max(4, 0.4 * len(names) + 2), 3.5 + 0.07 * longest)
  ax = fig.add_subplot()
  ax.bar(range(len(names)), [r["accuracy"] for r in table], edgecolor="black",
         label="slice accuracy")
  # 0.4" per bar holds about 5 horizontal characters, or two vertical lines.
  vertical = len(names) > 12 or longest > 5
  ax.set_xticks(range(len(names)), shown, rotation=90 if vertical else 0)
  if overall is not None:
    ax.axhline(overall, color="tab:red", linestyle="--", label=f"overall ({overall:.3f})")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)  # Off the bars.
  ax.set_xlabel(key)
  ax.set_ylabel("accuracy")
  ax.set_ylim(0, 1.02)
  ax.set_title(f"Accuracy per slice of {key}")
  return _save(fig, path)


def attributions(inputs: np.ndarray, maps: dict[str, np.ndarray], titles: list[str],
                 path: Path) -> Path:
  """One row per example: the input and each attribution map.

  Images (H, W, C) are drawn as heatmaps (channels summed); 1-D inputs (L,) or
  (L, C) as line plots (channels summed).
  """
  image = inputs.ndim == 4
  rows, cols = len(inputs), 1 + len(maps)
  fig = _figure(2.6 * cols if image else 4 * cols, 2.4 * rows)
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
  for i in range(rows):
    panels = [("input", inputs[i])] + [(name, values[i]) for name, values in maps.items()]
    for j, (name, values) in enumerate(panels):
      ax = axes[i, j]
      values = np.asarray(values, np.float64)
      if image:
        values = values.sum(-1)
        if name == "input":
          ax.imshow(values, cmap="gray")
        else:
          bound = max(np.abs(values).max(), 1e-12)
          ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_xticks([])
        ax.set_yticks([])
      else:
        values = values.reshape(values.shape[0], -1).sum(-1)
        ax.plot(values)
        ax.axhline(0, color="gray", lw=0.5)
      ax.set_title(f"{titles[i]}: {name}" if j == 0 else name, fontsize=9)
  return _save(fig, path)


def learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], metric: str,
                    path: Path) -> Path:
  """`curves[run][metric]` = [(step, value)], one line per run."""
  fig = _figure(7, 4.2)
  ax = fig.add_subplot()
  for run, by_metric in curves.items():
    points = by_metric.get(metric)
    if points:
      steps, values = zip(*points)
      ax.plot(steps, values, marker="." if len(points) < 30 else None, label=run)
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.set_title(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
