"""Evaluation metrics (jaxtrain.metrics) against scikit-learn, merged over batches."""

import jax
import numpy as np
import pytest
from scipy import special
from sklearn import calibration, metrics as skm

from jaxtrain.core import metrics

NUM_CLASSES, NUM_EXAMPLES, BATCH = 7, 500, 128


def _random_classification(seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, NUM_EXAMPLES).astype(np.int32)
  # Logits that are right more often than chance, so every score is non-trivial.
  logits = rng.normal(size=(NUM_EXAMPLES, NUM_CLASSES)).astype(np.float32) * 2
  logits[np.arange(NUM_EXAMPLES), labels] += rng.uniform(0, 3, NUM_EXAMPLES)
  return logits, labels


def _merged(fn, *arrays):
  """`fn` (jitted) over fixed-size batches, the last one masked; sums merged."""
  jitted = jax.jit(fn)
  total = None
  for start in range(0, NUM_EXAMPLES, BATCH):
    parts = [a[start:start + BATCH] for a in arrays]
    pad = BATCH - len(parts[0])
    mask = np.r_[np.ones(len(parts[0])), np.zeros(pad)].astype(np.float32)
    parts = [np.concatenate([p, np.zeros((pad,) + p.shape[1:], p.dtype)]) for p in parts]
    sums = jitted(*parts, mask)
    total = sums if total is None else metrics.merge(total, sums)
  return total


def test_classification_report_matches_sklearn():
  logits, labels = _random_classification()
  sums = _merged(lambda x, y, m: metrics.classification_report_sums(x, y, m, top_k=3,
                                                                    num_bins=10),
                 logits, labels)
  report = metrics.compute_classification_report(sums, top_k=3)
  pred = logits.argmax(-1)
  probs = special.softmax(logits.astype(np.float64), axis=-1)
  assert report["count"] == NUM_EXAMPLES
  assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-6)
  assert report["top_3_accuracy"] == pytest.approx(
      skm.top_k_accuracy_score(labels, logits, k=3, labels=range(NUM_CLASSES)), abs=1e-6)
  assert report["nll"] == pytest.approx(
      skm.log_loss(labels, probs, labels=range(NUM_CLASSES)), rel=1e-4)
  np.testing.assert_array_equal(report["confusion_matrix"],
                                skm.confusion_matrix(labels, pred, labels=range(NUM_CLASSES)))
  for average in ("macro", "weighted"):
    p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average=average,
                                                     zero_division=0)
    assert report[f"{average}_precision"] == pytest.approx(p, abs=1e-9)
    assert report[f"{average}_recall"] == pytest.approx(r, abs=1e-9)
    assert report[f"{average}_f1"] == pytest.approx(f, abs=1e-9)
  p, r, f, s = skm.precision_recall_fscore_support(labels, pred, zero_division=0)
  np.testing.assert_allclose(report["per_class"]["precision"], p, atol=1e-9)
  np.testing.assert_allclose(report["per_class"]["recall"], r, atol=1e-9)
  np.testing.assert_allclose(report["per_class"]["f1"], f, atol=1e-9)
  np.testing.assert_array_equal(report["per_class"]["support"], s)
  # Calibration: the reliability diagram is sklearn's calibration curve of
  # "top-1 prediction is right" against the top-1 confidence.
  confidence, correct = probs.max(-1), (pred == labels).astype(int)
  accuracy_curve, confidence_curve = calibration.calibration_curve(
      correct, confidence, n_bins=10, strategy="uniform")
  counts = np.asarray(report["reliability"]["count"])
  nonempty = counts > 0
  np.testing.assert_allclose(np.asarray(report["reliability"]["accuracy"])[nonempty],
                             accuracy_curve, atol=1e-6)
  np.testing.assert_allclose(np.asarray(report["reliability"]["confidence"])[nonempty],
                             confidence_curve, atol=1e-5)
  expected_ece = np.sum(counts[nonempty] * np.abs(accuracy_curve - confidence_curve))
  assert report["ece"] == pytest.approx(expected_ece / NUM_EXAMPLES, abs=1e-6)
  assert report["ece"] > 0.01  # Not trivially zero on these inputs.


def test_a_class_never_predicted_scores_zero_like_sklearn():
  labels = np.array([0, 1, 2, 2], np.int32)
  logits = np.eye(3, dtype=np.float32)[[0, 1, 1, 1]] * 5  # Class 2 is never predicted.
  sums = jax.jit(metrics.classification_report_sums)(logits, labels)
  report = metrics.compute_classification_report(sums, top_k=1)
  p, r, f, _ = skm.precision_recall_fscore_support(labels, logits.argmax(-1), zero_division=0)
  np.testing.assert_allclose(report["per_class"]["precision"], p)
  np.testing.assert_allclose(report["per_class"]["f1"], f)
  assert report["macro_f1"] == pytest.approx(skm.f1_score(labels, logits.argmax(-1),
                                                          average="macro", zero_division=0))


def test_slice_sums_match_numpy_groupby():
  logits, labels = _random_classification(seed=1)
  slice_ids = (np.arange(NUM_EXAMPLES) % 3).astype(np.int32)
  sums = _merged(lambda x, y, s, m: metrics.slice_sums(x, y, s, 3, m), logits, labels,
                 slice_ids)
  pred = logits.argmax(-1)
  for s in range(3):
    members = slice_ids == s
    assert float(sums["slice_count"][s]) == members.sum()
    assert float(sums["slice_correct"][s]) / members.sum() == pytest.approx(
        skm.accuracy_score(labels[members], pred[members]), abs=1e-6)


def test_regression_metrics_match_sklearn():
  rng = np.random.default_rng(2)
  targets = rng.normal(3.0, 2.0, NUM_EXAMPLES).astype(np.float32)
  predictions = (targets + rng.normal(0, 0.7, NUM_EXAMPLES)).astype(np.float32)
  result = metrics.compute_regression(_merged(metrics.regression_sums, predictions, targets))
  assert result["mse"] == pytest.approx(skm.mean_squared_error(targets, predictions), rel=1e-5)
  assert result["mae"] == pytest.approx(skm.mean_absolute_error(targets, predictions), rel=1e-5)
  assert result["r2"] == pytest.approx(skm.r2_score(targets, predictions), abs=1e-4)
