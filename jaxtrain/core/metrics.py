"""Metrics as small pytrees of sums that live inside jit.

A metrics value is a dict of float32 sums plus a `count`; `merge` adds two,
`compute` turns sums into means. The train loop folds every step's metrics
into an on-device accumulator and pulls it to the host only when it logs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# What every train step reports (summed over steps; `count` steps were summed).
TRAIN_METRICS = ("loss", "accuracy", "grad_norm", "update_norm", "learning_rate", "count")
# Metrics that are reported as their latest value rather than a mean.
LATEST = ("learning_rate",)


def new_sums(leading: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
  """Zero sums of `TRAIN_METRICS` (with `leading` axes, e.g. (P,) for a population).

  Host arrays: making them costs no device program; callers place them.
  """
  return {k: np.zeros(leading, np.float32) for k in TRAIN_METRICS}


def sum_batches(fn, batches) -> dict[str, jax.Array]:
  """The sums `fn(batch)` returns, added over `batches` (on device; fetched by `compute`)."""
  sums = None
  for batch in batches:
    batch_sums = fn(batch)
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  return sums


def zeros_like(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return jax.tree.map(jnp.zeros_like, metrics)


def merge(total: dict[str, jax.Array], new: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Adds sums; keeps the newest value of `LATEST` metrics."""
  return {k: (new[k] if k in LATEST else total[k] + new[k]) for k in total}


def compute(metrics: dict, prefix: str = "") -> dict[str, float]:
  """Host-side means: every sum divided by `count` (which is dropped).

  A non-finite loss sum (diverged parameters) makes every metric NaN: NaN logits
  'predict' class 0 and would otherwise score a finite accuracy, enough to rank a
  diverged member above a poor but sound one.
  """
  metrics = jax.device_get(metrics)
  count = float(np.asarray(metrics["count"]))
  diverged = "loss" in metrics and not np.isfinite(np.asarray(metrics["loss"]))
  out = {}
  for k, v in metrics.items():
    if k == "count":
      continue
    v = float(np.asarray(v))
    out[prefix + k] = math.nan if diverged else v if k in LATEST else v / max(count, 1.0)
  return out


def classification_sums(logits_BxC: jax.Array, labels_B: jax.Array, loss_B: jax.Array,
                        mask_B: jax.Array | None = None) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the (masked) batch, and the count."""
  if mask_B is None:
    mask_B = jnp.ones(labels_B.shape, jnp.float32)
  correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
  return {"loss": jnp.sum(loss_B * mask_B),
          "accuracy": jnp.sum(correct_B * mask_B),
          "count": jnp.sum(mask_B)}


# --- Evaluation metrics: mergeable sums (add two batches' dicts with `merge`).
#
# Each `*_sums` function is pure and jittable and returns a flat dict of float32
# arrays (scalars, per-class vectors, a confusion matrix) whose every entry is a
# sum over examples, so batches combine by addition. The matching `compute_*`
# function turns the merged sums into numbers on the host. sklearn computes the
# same quantities but only on the host from all predictions at once; these stay
# inside jit and never hold more than one batch of outputs.


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)


def _flatten_examples(logits, labels, mask):
  """Folds extra leading axes (e.g. tokens of a sequence) into the example axis."""
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim)),
                          labels.shape).astype(jnp.float32)
  if logits is not None:
    logits = logits.reshape(-1, logits.shape[-1])
  return logits, labels.reshape(-1), mask.reshape(-1)


def classification_report_sums(logits_BxC: jax.Array, labels_B: jax.Array,
                               mask_B: jax.Array | None = None, *, top_k: int = 5,
                               num_bins: int = 15) -> dict[str, jax.Array]:
  """Sums for accuracy, top-k, NLL, the confusion matrix and calibration.

  Args:
    logits_BxC: unnormalized class scores (extra leading axes are flattened).
    labels_B: int class ids with the leading shape of the logits.
    mask_B: 1 for real examples, 0 for padding (default: all real).
    top_k: k of the top-k accuracy (capped at the number of classes).
    num_bins: equal-width confidence bins on [0, 1] for calibration.

  Returns:
    {"count", "correct", "top_k_correct", "nll", "brier": scalars;
     "confusion": [C, C] (row = true class, column = predicted);
     "bin_count", "bin_confidence", "bin_correct": [num_bins]}.
    "brier" sums sum_c (p_c - onehot_c)^2 over examples (the multiclass Brier
    score before the mean; over all C outputs, so probability put on a class
    absent from the split counts as error).
  """
  logits_BxC, labels_B, mask_B = _flatten_examples(logits_BxC, labels_B, mask_B)
  num_classes = logits_BxC.shape[-1]
  logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32))
  pred_B = jnp.argmax(logp_BxC, -1)
  correct_B = (pred_B == labels_B).astype(jnp.float32)
  k = min(top_k, num_classes)
  _, top_BxK = jax.lax.top_k(logp_BxC, k)
  top_correct_B = jnp.any(top_BxK == labels_B[:, None], -1).astype(jnp.float32)
  nll_B = -jnp.take_along_axis(logp_BxC, labels_B[:, None], -1)[:, 0]
  onehot_BxC = jax.nn.one_hot(labels_B, num_classes)
  brier_B = jnp.sum((jnp.exp(logp_BxC) - onehot_BxC) ** 2, -1)
  true_BxC = onehot_BxC * mask_B[:, None]
  # Sums as dots at full precision: accelerators may run f32 matmuls in TF32.
  confusion_CxC = _dot(true_BxC.T, jax.nn.one_hot(pred_B, num_classes))
  confidence_B = jnp.exp(jnp.max(logp_BxC, -1))
  # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to bin 0.
  bin_B = jnp.clip(jnp.ceil(confidence_B * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  in_bin_BxN = jax.nn.one_hot(bin_B, num_bins) * mask_B[:, None]
  return {
      "count": jnp.sum(mask_B),
      "correct": jnp.sum(correct_B * mask_B),
      "top_k_correct": jnp.sum(top_correct_B * mask_B),
      "nll": jnp.sum(nll_B * mask_B),
      "brier": jnp.sum(brier_B * mask_B),
      "confusion": confusion_CxC,
      "bin_count": jnp.sum(in_bin_BxN, 0),
      "bin_confidence": _dot(confidence_B, in_bin_BxN),
      "bin_correct": _dot(correct_B, in_bin_BxN),
  }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with 0 where den is 0 (what sklearn's default zero_division="warn" gives)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_scores(confusion_CxC) -> dict[str, Any]:
  """Precision, recall, F1 and support per class, and their macro and weighted means.

  Takes a [C, C] confusion matrix (row = true class, column = predicted).
  Only the classes present, as a true or as a predicted label, are scored:
  with data.classes most of a model's outputs never occur, and averaging their
  zeros in would say nothing about the model. This is sklearn's
  `precision_recall_fscore_support` with its defaults (labels = the union of
  y_true and y_pred; an undefined ratio, e.g. the precision of a class never
  predicted, is 0 as zero_division="warn" makes it).

  Returns {"per_class": {"present", "precision", "recall", "f1", "support"},
  "macro_precision", ..., "weighted_f1"}. The per-class lists have one entry
  per class id (C); `present[c]` says whether class c occurs, and an absent
  class's precision, recall and F1 are None. Macro = the plain mean over the
  present classes, weighted = their mean weighted by support (true examples).
  """
  confusion = np.asarray(confusion_CxC, np.float64)
  support, predicted = confusion.sum(1), confusion.sum(0)
  present = (support > 0) | (predicted > 0)
  true_positive = np.diag(confusion)
  precision = _ratio(true_positive, predicted)
  recall = _ratio(true_positive, support)
  # sklearn's F1, 2 TP / (2 TP + FP + FN): the harmonic mean, 0 when TP is 0.
  f1 = _ratio(2 * true_positive, predicted + support)
  out: dict[str, Any] = {"per_class": {
      "present": present.tolist(),
      **{name: [float(v) if p else None for v, p in zip(values, present)]
         for name, values in (("precision", precision), ("recall", recall), ("f1", f1))},
      "support": support.astype(int).tolist()}}
  total = support.sum()
  for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
    out[f"macro_{name}"] = float(values[present].mean()) if present.any() else float("nan")
    # Absent classes have support 0: they weigh nothing here.
    out[f"weighted_{name}"] = float((values * support).sum() / total) if total else float("nan")
  return out


def expected_calibration_error(bin_count, bin_correct, bin_confidence, count: float) -> float:
  """ECE from the bin sums of `classification_report_sums`: the count-weighted mean
  |accuracy - confidence| of the bins (`count`: the examples, at least 1)."""
  bin_count = np.asarray(bin_count, np.float64)
  accuracy, confidence = _ratio(bin_correct, bin_count), _ratio(bin_confidence, bin_count)
  return float(np.sum(bin_count * np.abs(accuracy - confidence))) / count


def compute_classification_report(sums: dict, top_k: int = 5) -> dict[str, Any]:
  """Host-side numbers from merged `classification_report_sums`.

  Args:
    sums: merged `classification_report_sums`.
    top_k: k of the top-k accuracy (capped at the number of classes).

  Returns accuracy, top_{k}_accuracy, nll (mean negative log-likelihood),
  brier (mean over examples of sum_c (p_c - onehot_c)^2, in [0, 2]), ece
  (expected calibration error: top-label confidence in equal-width
  right-closed bins, the count-weighted mean |accuracy - confidence| of the
  bins), macro/weighted precision, recall and F1 (see `per_class_scores`),
  the confusion matrix, per-class
  scores and the reliability-diagram data (per-bin count, accuracy, confidence).
  """
  sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
  count = max(float(sums["count"]), 1.0)
  k = min(top_k, sums["confusion"].shape[0])
  bin_count = sums["bin_count"]
  bin_accuracy = _ratio(sums["bin_correct"], bin_count)
  bin_confidence = _ratio(sums["bin_confidence"], bin_count)
  num_bins = len(bin_count)
  out: dict[str, Any] = {
      "count": int(round(float(sums["count"]))),
      "accuracy": float(sums["correct"]) / count,
      f"top_{k}_accuracy": float(sums["top_k_correct"]) / count,
      "nll": float(sums["nll"]) / count,
      "brier": float(sums["brier"]) / count,
      "ece": expected_calibration_error(bin_count, sums["bin_correct"], sums["bin_confidence"],
                                        count),
  }
  scores = per_class_scores(sums["confusion"])
  per_class = scores.pop("per_class")
  out.update(scores)
  out["confusion_matrix"] = sums["confusion"].astype(int).tolist()
  out["per_class"] = per_class
  out["reliability"] = {
      "bin_edges": np.linspace(0.0, 1.0, num_bins + 1).tolist(),
      "count": bin_count.astype(int).tolist(),
      "accuracy": bin_accuracy.tolist(),
      "confidence": bin_confidence.tolist(),
  }
  return out


def slice_sums(logits_BxC: jax.Array, labels_B: jax.Array, slice_ids_B: jax.Array,
               num_slices: int, mask_B: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-slice sums of examples, correct predictions and NLL ([num_slices] each)."""
  logits_BxC, labels_B, mask_B = _flatten_examples(logits_BxC, labels_B, mask_B)
  slice_ids_B = jnp.broadcast_to(
      slice_ids_B.reshape(slice_ids_B.shape + (1,) * (mask_B.ndim - 1)), mask_B.shape)
  logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32))
  correct_B = (jnp.argmax(logp_BxC, -1) == labels_B).astype(jnp.float32)
  nll_B = -jnp.take_along_axis(logp_BxC, labels_B[:, None], -1)[:, 0]
  member_BxS = jax.nn.one_hot(slice_ids_B.reshape(-1), num_slices) * mask_B[:, None]
  return {"slice_count": jnp.sum(member_BxS, 0), "slice_correct": _dot(correct_B, member_BxS),
          "slice_nll": _dot(nll_B, member_BxS)}


def regression_sums(predictions_B: jax.Array, targets_B: jax.Array,
                    mask_B: jax.Array | None = None) -> dict[str, jax.Array]:
  """Sums for MSE, MAE and R^2: count, sum of errors^2 and |errors|, of y and y^2.

  R^2 needs the target variance, which is sum(y^2) - sum(y)^2 / n: mergeable,
  unlike the two-pass formula sklearn uses (fine in float32 for targets whose
  mean is not huge against their spread).
  """
  predictions_B = predictions_B.astype(jnp.float32)
  targets_B = targets_B.astype(jnp.float32)
  if mask_B is None:
    mask_B = jnp.ones(targets_B.shape, jnp.float32)
  mask_B = jnp.broadcast_to(mask_B.reshape(mask_B.shape + (1,) * (targets_B.ndim - mask_B.ndim)),
                            targets_B.shape).astype(jnp.float32)
  error_B = predictions_B - targets_B
  return {"count": jnp.sum(mask_B), "squared_error": jnp.sum(error_B**2 * mask_B),
          "absolute_error": jnp.sum(jnp.abs(error_B) * mask_B),
          "target_sum": jnp.sum(targets_B * mask_B),
          "target_squared_sum": jnp.sum(targets_B**2 * mask_B)}


def compute_regression(sums: dict) -> dict[str, float]:
  """mse, mae and r2 (1 - SSE / total sum of squares) from merged `regression_sums`."""
  s = {k: float(np.asarray(v, np.float64)) for k, v in jax.device_get(sums).items()}
  count = max(s["count"], 1.0)
  total = s["target_squared_sum"] - s["target_sum"] ** 2 / count
  return {"mse": s["squared_error"] / count, "mae": s["absolute_error"] / count,
          "r2": 1.0 - s["squared_error"] / total if total > 0 else float("nan")}
