"""Evaluation metrics (jaxtrain.metrics) against scikit-learn, merged over batches."""

import warnings

import jax
import numpy as np
import pytest
from scipy import special
from sklearn import calibration, metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.utils.multiclass import unique_labels

from jaxtrain.analysis import report as report_lib
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
  _assert_scores_match_sklearn(report, labels, pred)
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


def _assert_scores_match_sklearn(report, labels, pred):
  """Per-class rows and macro/weighted means equal sklearn's with its defaults."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UndefinedMetricWarning)  # Its zero_division="warn".
    for average in ("macro", "weighted"):
      p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average=average)
      assert report[f"{average}_precision"] == pytest.approx(p, abs=1e-9)
      assert report[f"{average}_recall"] == pytest.approx(r, abs=1e-9)
      assert report[f"{average}_f1"] == pytest.approx(f, abs=1e-9)
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred)
  per = report["per_class"]
  present = unique_labels(labels, pred)  # sklearn's rows, one per class that occurs.
  num_classes = len(report["confusion_matrix"])
  np.testing.assert_array_equal(per["present"], np.isin(range(num_classes), present))
  for name, expected in (("precision", p), ("recall", r), ("f1", f)):
    np.testing.assert_allclose([per[name][c] for c in present], expected, atol=1e-9)
    assert all(per[name][c] is None for c in range(num_classes) if c not in present)
  np.testing.assert_array_equal([per["support"][c] for c in present], s)
  assert sum(per["support"]) == len(labels)


def _auroc_reference(labels, probs):
  """sklearn's macro one-vs-rest AUROC over the classes present in `labels`."""
  present = np.unique(labels)
  if len(present) == probs.shape[1]:
    return skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  # sklearn's multiclass form wants every column's class in y_true (absent ones
  # make it nan): its per-class binary AUROCs, averaged, are the same definition.
  return np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present])


def _report_of(logits, labels, num_bins=10):
  sums = _merged(lambda x, y, m: metrics.classification_report_sums(x, y, m, top_k=3,
                                                                    num_bins=num_bins),
                 logits, labels)
  return metrics.compute_classification_report(sums, top_k=3)


@pytest.mark.parametrize("present", [None, (1, 2, 4)], ids=["all_classes", "some_classes"])
def test_macro_means_brier_and_auroc_match_sklearn(present):
  """With `present`, only those classes are true labels (as with data.classes), and
  classes 5 and 6 are predicted often though never true."""
  logits, labels = _random_classification(seed=3)
  if present:
    labels = np.asarray(present, np.int32)[labels % len(present)]
    logits[np.arange(NUM_EXAMPLES), labels] += 3.0  # Right more often than chance again.
    logits[::9, 5] += 6.0  # Predicted, never true.
    logits[::13, 6] += 6.0
  pred = logits.argmax(-1)
  if present:
    assert {5, 6} <= set(pred) and not {5, 6} & set(labels) and set(pred) - set(labels)
  report = _report_of(logits, labels)
  _assert_scores_match_sklearn(report, labels, pred)
  probs = special.softmax(logits.astype(np.float64), axis=-1)
  # Multiclass Brier score (unscaled: scale_by_half is False for more than two classes).
  assert report["brier"] == pytest.approx(
      skm.brier_score_loss(labels, probs, labels=range(NUM_CLASSES)), rel=1e-5)
  auroc = report_lib.roc_auc_ovr(labels, logits)
  assert auroc == pytest.approx(_auroc_reference(labels, probs), abs=1e-9)
  assert 0.5 < auroc < 1.0


def test_auroc_is_undefined_with_one_class():
  logits, _ = _random_classification(seed=4)
  assert np.isnan(report_lib.roc_auc_ovr(np.zeros(len(logits), np.int32), logits))


def test_ece_is_top_label_with_equal_width_right_closed_bins():
  """ECE against a direct numpy reading of Guo et al. (2017): top-label confidence,
  bins (i/n, (i+1)/n], sum over bins of count/N * |accuracy - confidence|."""
  # Confidences that sit exactly on bin edges (1/2, 1/4, 1), and others.
  logits = np.array([[0, 0], [3, 0], [0, 3], [50, 0], [0.2, 0], [0, 1], [0, 0], [2, 0]],
                    np.float32)
  logits = np.pad(logits, ((0, 0), (0, 2)), constant_values=-np.inf)  # Two impossible classes.
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 0], np.int32)
  logits = np.concatenate([logits, np.zeros((2, 4), np.float32)])  # Confidence 1/4.
  labels = np.r_[labels, [2, 0]].astype(np.int32)
  num_bins = 4
  sums = jax.jit(lambda x, y: metrics.classification_report_sums(x, y, num_bins=num_bins))(
      logits, labels)
  report = metrics.compute_classification_report(sums)
  probs = special.softmax(logits.astype(np.float64), axis=-1)
  confidence = probs.max(-1)
  assert {0.25, 0.5, 1.0} <= set(confidence)
  correct = probs.argmax(-1) == labels  # Ties in the top probability go to the first class.
  edges = np.linspace(0, 1, num_bins + 1)
  bins = np.array([next(i for i in range(num_bins) if edges[i] < c <= edges[i + 1])
                   for c in confidence])
  expected = sum(np.sum(bins == b) / len(labels)
                 * abs(correct[bins == b].mean() - confidence[bins == b].mean())
                 for b in range(num_bins) if np.any(bins == b))
  np.testing.assert_array_equal(report["reliability"]["count"],
                                np.bincount(bins, minlength=num_bins))
  assert report["ece"] == pytest.approx(expected, abs=1e-6)


def test_a_class_never_predicted_scores_zero_like_sklearn():
  labels = np.array([0, 1, 2, 2], np.int32)
  logits = np.eye(3, dtype=np.float32)[[0, 1, 1, 1]] * 5  # Class 2 is never predicted.
  sums = jax.jit(metrics.classification_report_sums)(logits, labels)
  report = metrics.compute_classification_report(sums, top_k=1)
  _assert_scores_match_sklearn(report, labels, logits.argmax(-1))


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
