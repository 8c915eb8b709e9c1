"""WORKDIR/report/: the evaluation report of one checkpoint.

`write()` takes a restored state and the evaluation split and writes:

- metrics.json: every number below (metrics, per-class scores, reliability
  bins, slices, robustness curves, attribution checks);
- confusion_matrix.png, reliability.png; slices.png (with eval.slice_key);
  robustness.png and attributions.png (float inputs only);
- report.md: the tables, and every figure listed and embedded.

All device work is a handful of jitted functions over fixed-size batches
(one compile each, whatever the number of levels or batches).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.core import metrics as metrics_lib
from jaxtrain import models
from jaxtrain.analysis import attribution, plots, robustness
from jaxtrain.analysis import slices as slices_lib
from jaxtrain import paths
from jaxtrain.paths import Path

REPORT_DIR = "report"
# The AUROC ranks every example's score of every class, so the report keeps all
# logits on the host (and their float64 softmax); above this many (examples x
# classes, 128 MiB of float32) it is skipped.
MAX_AUROC_SCORES = 2**25


def roc_auc_ovr(labels_N, logits_NxC) -> float:
  """Macro one-vs-rest AUROC over the classes present in `labels_N` (host).

  Each present class c is scored by scikit-learn's binary `roc_auc_score(labels == c,
  p_c)` on the float64 softmax (near-certain predictions stay distinct), and the
  classes are averaged. With every class present this is `roc_auc_score(y, probs,
  multi_class="ovr", average="macro")`; unlike it, classes the model has but the
  split lacks (data.classes) are skipped instead of refused. NaN when fewer than two
  classes occur.
  """
  from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels_N).reshape(-1)
  z = np.asarray(logits_NxC, np.float64).reshape(len(labels), -1)
  probs = np.exp(z - z.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  present = np.unique(labels)
  if len(present) < 2:
    return float("nan")
  return float(np.mean([sk_metrics.roc_auc_score(labels == c, probs[:, c]) for c in present]))


def logits_fn_of(model: models.Model, state):
  """The model in eval mode as `inputs -> logits` (call inside jit, with `state` traced)."""
  variables = {"params": state.params, **state.model_state}
  model_hparams = {k: state.hparams[k] for k in models.MODEL_HPARAMS}

  def logits_fn(inputs):
    return model.apply(variables, {"inputs": inputs}, state.rng, False, model_hparams)[0]
  return logits_fn


def is_token_input(info, inputs: np.ndarray) -> bool:
  """Integer token ids (not uint8 images, which the pipeline scales to floats)."""
  dtype = np.dtype(getattr(info, "input_dtype", inputs.dtype))
  return (np.issubdtype(inputs.dtype, np.integer)
          or (np.issubdtype(dtype, np.integer) and dtype != np.uint8))


def _batches(arrays: dict[str, np.ndarray], batch_size: int):
  """Fixed-size batches of every array, the last zero-padded.

  Each batch also has `mask` (1 for real examples, 0 for padding) and `index`
  (int32: each row's position in the split, which is what per-example
  randomness is keyed on, so that it does not depend on the batch size).
  """
  n = len(next(iter(arrays.values())))
  batch_size = min(batch_size, n)
  for start in range(0, n, batch_size):
    batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
    pad = batch_size - len(batch["labels"])
    batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) if pad else v
             for k, v in batch.items()}
    batch["mask"] = (np.arange(batch_size) < batch_size - pad).astype(np.float32)
    batch["index"] = np.arange(start, start + batch_size, dtype=np.int32)
    yield batch


def _sum_over_batches(fn, state, batches, *args):
  total = None
  for batch in batches:
    sums = fn(state, batch, *args)
    total = sums if total is None else metrics_lib.merge(total, sums)
  return jax.device_get(total)


def evaluate_metrics(model, state, inputs, labels, eval_config, batch_size,
                     slices: slices_lib.Slices | None) -> dict[str, Any]:
  """Classification metrics (and per-slice metrics) of the whole eval split."""
  num_slices = len(slices.names) if slices else 0

  @jax.jit
  def sums_fn(state, batch):
    logits = logits_fn_of(model, state)(batch["inputs"])
    out = metrics_lib.classification_report_sums(
        logits, batch["labels"], batch["mask"], top_k=eval_config.top_k,
        num_bins=eval_config.calibration_bins)
    if num_slices:
      out.update(metrics_lib.slice_sums(logits, batch["labels"], batch["slice_ids"],
                                        num_slices, batch["mask"]))
    return out, logits.astype(jnp.float32)

  arrays = {"inputs": inputs, "labels": labels}
  if slices:
    arrays["slice_ids"] = slices.ids
  sums, kept = None, []  # kept: every batch's logits (on device until the end).
  for batch in _batches(arrays, batch_size):
    batch_sums, logits = sums_fn(state, batch)
    sums = batch_sums if sums is None else metrics_lib.merge(sums, batch_sums)
    if kept is not None and labels.size * logits.shape[-1] <= MAX_AUROC_SCORES:
      kept.append((logits, int(batch["mask"].sum())))
    else:
      kept = None
  sums = jax.device_get(sums)
  # The AUROC is computed on the host from the gathered logits: it ranks all
  # examples' scores at once, which sums over batches cannot give.
  all_logits = None
  if kept is not None:
    all_logits = np.concatenate([np.asarray(x)[:real] for x, real in jax.device_get(kept)])
    all_logits = all_logits.reshape(-1, all_logits.shape[-1])
  cls = metrics_lib.compute_classification_report(
      {k: v for k, v in sums.items() if not k.startswith("slice_")}, eval_config.top_k)
  if all_logits is not None:
    cls["auroc"] = roc_auc_ovr(labels, all_logits)
  if all_logits is None:
    cls["auroc"] = None
    cls["auroc_skipped"] = (f"more than {MAX_AUROC_SCORES} scores (examples x classes) "
                            "to rank on the host")
  elif math.isnan(cls["auroc"]):  # null, not NaN, keeps metrics.json standard JSON.
    cls["auroc"] = None
    cls["auroc_skipped"] = "undefined: fewer than two classes in the labels"
  result = {"classification": cls}
  if slices:
    table = []
    for i, name in enumerate(slices.names):
      count = float(sums["slice_count"][i])
      table.append({"slice": name, "count": int(round(count)),
                    "accuracy": float(sums["slice_correct"][i]) / max(count, 1.0),
                    "nll": float(sums["slice_nll"][i]) / max(count, 1.0)})
    result["slices"] = {"key": slices.key, "table": table, **slices_lib.summarize(table)}
  return result


def evaluate_robustness(model, state, inputs, labels, eval_config, batch_size,
                        seed: int) -> dict[str, Any]:
  """Accuracy under each noise level and each FGSM/PGD epsilon."""
  low, high = float(inputs.min()), float(inputs.max())  # Of the whole split.
  if eval_config.robustness_examples:
    inputs = inputs[:eval_config.robustness_examples]
    labels = labels[:eval_config.robustness_examples]

  def accuracy_fn(perturb):
    @jax.jit
    def correct(state, batch, level, key):
      logits_fn = logits_fn_of(model, state)
      x = perturb(logits_fn, batch, jnp.float32(level), key)
      right = jnp.argmax(logits_fn(x), -1) == batch["labels"]
      return {"correct": jnp.sum(right.astype(jnp.float32) * batch["mask"])}

    def accuracy(level, key):
      sums = _sum_over_batches(correct, state, _batches({"inputs": inputs, "labels": labels},
                                                        batch_size), level, key)
      return float(sums["correct"]) / len(labels)
    return accuracy

  noise = accuracy_fn(lambda f, b, level, key: robustness.gaussian_noise(
      b["inputs"], level, key, low, high, b["index"]))
  fgsm = accuracy_fn(lambda f, b, eps, key: robustness.fgsm(
      f, b["inputs"], b["labels"], eps, low, high))
  pgd = accuracy_fn(lambda f, b, eps, key: robustness.pgd(
      f, b["inputs"], b["labels"], eps, low, high, eval_config.pgd_steps))
  base_key = jax.random.PRNGKey(seed)
  levels = [float(v) for v in eval_config.noise_levels]
  epsilons = [float(v) for v in eval_config.adversarial_epsilons]
  return {
      "examples": int(len(labels)), "input_range": [low, high],
      "noise": {"levels": levels, "accuracy": [noise(v, jax.random.fold_in(base_key, i))
                                               for i, v in enumerate(levels)]},
      "fgsm": {"epsilons": epsilons, "accuracy": [fgsm(v, base_key) for v in epsilons]},
      "pgd": {"epsilons": epsilons, "accuracy": [pgd(v, base_key) for v in epsilons],
              "steps": eval_config.pgd_steps},
  }


def compute_attributions(model, state, inputs: np.ndarray, ig_steps: int) -> dict[str, Any]:
  """Saliency and integrated gradients (zero baseline) of the predicted class.

  Returns predictions, both maps, and the completeness check of IG: the sum of
  each example's attributions against logit(x) - logit(baseline).
  """
  @functools.partial(jax.jit, static_argnums=2)
  def explain(state, x, steps):
    logits_fn = logits_fn_of(model, state)
    predicted = jnp.argmax(logits_fn(x), -1)
    baseline = jnp.zeros_like(x)
    ig = attribution.integrated_gradients(logits_fn, x, baseline, predicted, steps)
    gap = (attribution.target_logits(logits_fn, x, predicted)
           - attribution.target_logits(logits_fn, baseline, predicted))
    return {"predicted": predicted,
            "saliency": attribution.saliency(logits_fn, x, predicted),
            "integrated_gradients": ig,
            "ig_sum": jnp.sum(ig.reshape(ig.shape[0], -1), -1), "logit_gap": gap}

  return jax.device_get(explain(state, jnp.asarray(inputs), ig_steps))


def write(workdir: str | Path, config, model: models.Model, state, inputs: np.ndarray,
          labels: np.ndarray, info, slices: slices_lib.Slices | None,
          header: dict[str, Any]) -> dict[str, Any]:
  """Writes WORKDIR/report/ (see the module docstring); returns metrics.json's contents."""
  c = config
  out_dir = paths.of(workdir) / REPORT_DIR
  out_dir.mkdir(parents=True, exist_ok=True)
  for old in out_dir.glob("*.png"):  # Figures of an earlier report that may not recur.
    old.unlink()
  result: dict[str, Any] = {**header}
  result.update(evaluate_metrics(model, state, inputs, labels, c.eval, c.data.eval_batch_size,
                                 slices))
  figures: dict[str, Path] = {}
  cls = result["classification"]
  figures["confusion_matrix"] = plots.confusion_matrix(cls["confusion_matrix"],
                                                       out_dir / "confusion_matrix.png")
  figures["reliability"] = plots.reliability_diagram(cls["reliability"], cls["ece"],
                                                     out_dir / "reliability.png")
  if slices:
    figures["slices"] = plots.slice_accuracy(result["slices"]["table"], slices.key,
                                             out_dir / "slices.png", cls["accuracy"])
  skipped = None
  if is_token_input(info, inputs):
    skipped = ("skipped: the inputs are integer token ids; noise, FGSM/PGD and gradient "
               "attributions need float input features")
  else:
    if c.eval.noise_levels or c.eval.adversarial_epsilons:
      result["robustness"] = evaluate_robustness(model, state, inputs, labels, c.eval,
                                                 c.data.eval_batch_size, c.seed)
      figures["robustness"] = plots.robustness_curves(result["robustness"],
                                                      out_dir / "robustness.png")
    indices = list(c.eval.attribution_examples)
    if indices:
      explained = compute_attributions(model, state, inputs[indices], c.eval.ig_steps)
      gap, total = explained["logit_gap"], explained["ig_sum"]
      result["attributions"] = {
          "examples": indices, "labels": labels[indices].tolist(),
          "predicted": explained["predicted"].tolist(), "ig_steps": c.eval.ig_steps,
          "ig_sum": total.tolist(), "logit_gap": gap.tolist(),
          "max_completeness_error": float(np.max(np.abs(total - gap))),
      }
      if inputs.ndim in (2, 3, 4):
        titles = [f"#{i} label {y} pred {p}" for i, y, p in
                  zip(indices, labels[indices], explained["predicted"])]
        figures["attributions"] = plots.attributions(
            inputs[indices], {"saliency": explained["saliency"],
                              "integrated gradients": explained["integrated_gradients"]},
            titles, out_dir / "attributions.png")
  result["figures"] = {k: v.name for k, v in figures.items()}
  if skipped:
    result["skipped"] = skipped
  (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
  (out_dir / "report.md").write_text(markdown(result))
  return result


def _f(value: float, digits: int = 4) -> str:
  return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) \
      else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows] + [""])


def markdown(result: dict[str, Any]) -> str:
  """report.md: a section per analysis, each table titled, each figure listed."""
  cls = result["classification"]
  figures = result["figures"]
  lines = ["# Evaluation report", "",
           f"Workdir `{result['workdir']}`, checkpoint step {result['step']} "
           f"({result['checkpoint']}), split `{result['split']}`, {cls['count']} examples"
           + (", scored with the EMA parameters" if result.get("weights") == "ema" else "")
           + ".", "",
           "All numbers are in `metrics.json`. Figures:", ""]
  lines += [f"- `{name}`" for name in figures.values()] + ["", "Tables:", ""]
  contents_at = len(lines)  # The list of tables goes here once they are all written.
  top_k = next(k for k in cls if k.startswith("top_") and k.endswith("_accuracy"))
  number = iter(range(1, 100))  # Tables are numbered in order of appearance.
  lines += ["## Metrics", "", f"Table {next(number)}: overall metrics.", ""]
  lines += _table(["metric", "value"], [[k, _f(cls[k])] for k in (
      "accuracy", top_k, "nll", "brier", "ece", "auroc", "macro_precision", "macro_recall",
      "macro_f1", "weighted_precision", "weighted_recall", "weighted_f1")])
  per = cls["per_class"]
  lines += ["Brier: mean over examples of the sum over classes of (p_c - onehot_c)^2 (0 to 2). "
            "AUROC: one-vs-rest, macro mean over the classes present in the labels"
            + (f" (skipped: {cls['auroc_skipped']})" if "auroc_skipped" in cls else "")
            + ". Macro means: over the classes that occur as a label or a prediction; "
            "weighted means: the same, weighted by support (scikit-learn's defaults).", ""]
  lines += [f"Table {next(number)}: per-class scores.", ""]
  lines += _table(["class", "precision", "recall", "F1", "support"],
                  [[c, _f(p), _f(r), _f(f), s] for c, (present, p, r, f, s) in enumerate(zip(
                      per["present"], per["precision"], per["recall"], per["f1"],
                      per["support"])) if present])
  absent = per["present"].count(False)
  if absent:
    lines += [f"{absent} of the model's {len(per['present'])} classes neither occur in the "
              "split nor are predicted; they are left out of the table and of the means.", ""]
  lines += [f"![confusion matrix]({figures['confusion_matrix']})", "",
            f"![reliability diagram]({figures['reliability']})", "",
            f"Expected calibration error {_f(cls['ece'])}: top-label confidence in "
            f"{len(cls['reliability']['count'])} equal-width bins, each (lo, hi], the "
            "count-weighted mean |accuracy - confidence| of the bins.", ""]
  if "slices" in result:
    s = result["slices"]
    lines += [f"## Slices by `{s['key']}`", "", f"Table {next(number)}: metrics per slice.", ""]
    lines += _table(["slice", "examples", "accuracy", "NLL"],
                    [[r["slice"], r["count"], _f(r["accuracy"]), _f(r["nll"])]
                     for r in s["table"]])
    if "worst_slice" in s:
      lines += [f"**Worst slice:** `{s['worst_slice']}` (accuracy {_f(s['worst_accuracy'])}). "
                f"**Largest gap between slices:** {_f(s['largest_gap'])} "
                f"(`{s['best_slice']}` {_f(s['best_accuracy'])} vs `{s['worst_slice']}` "
                f"{_f(s['worst_accuracy'])}).", ""]
    lines += [f"![accuracy per slice]({figures['slices']})", ""]
  lines += ["## Robustness", ""]
  if "skipped" in result:
    lines += [result["skipped"][0].upper() + result["skipped"][1:] + ".", ""]
  if "robustness" in result:
    r = result["robustness"]
    low, high = r["input_range"]
    lines += [f"On the first {r['examples']} examples; perturbed inputs are clipped to the "
              f"split's value range [{_f(low, 3)}, {_f(high, 3)}]; PGD: {r['pgd']['steps']} "
              "steps.", "", f"Table {next(number)}: accuracy under Gaussian noise.", ""]
    lines += _table(["noise std", "accuracy"],
                    [[v, _f(a)] for v, a in zip(r["noise"]["levels"], r["noise"]["accuracy"])])
    lines += [f"Table {next(number)}: accuracy under adversarial perturbations (L-inf).", ""]
    lines += _table(["epsilon", "FGSM", "PGD"],
                    [[e, _f(f), _f(p)] for e, f, p in zip(
                        r["fgsm"]["epsilons"], r["fgsm"]["accuracy"], r["pgd"]["accuracy"])])
    lines += [f"![robustness curves]({figures['robustness']})", ""]
  if "attributions" in result:
    a = result["attributions"]
    lines += ["## Attributions", "",
              f"Saliency (gradient of the predicted class's logit) and integrated gradients "
              f"({a['ig_steps']} steps, zero baseline) for eval examples {a['examples']}. "
              f"Completeness: |sum of IG - (logit(x) - logit(0))| <= "
              f"{_f(a['max_completeness_error'], 5)}.", ""]
    if "attributions" in figures:
      lines += [f"![attributions]({figures['attributions']})", ""]
  tables = [f"- {line.rstrip('.')}" for line in lines if line.startswith("Table ")]
  lines[contents_at:contents_at] = tables + [""]
  return "\n".join(lines)


def check_examples(eval_config, num_examples: int) -> None:
  """Raises `UserError` for an eval.attribution_examples index outside the split."""
  from jaxtrain import errors  # pylint: disable=g-import-not-at-top
  bad = [i for i in eval_config.attribution_examples if i >= num_examples]
  if bad:
    raise errors.UserError(
        f"eval.attribution_examples={tuple(eval_config.attribution_examples)!r}: index "
        f"{bad[0]} is outside the eval split ({num_examples} examples); use indices "
        f"below {num_examples}")
