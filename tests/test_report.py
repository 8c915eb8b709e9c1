"""--mode=eval's report (jaxtrain.analysis), the runs CLI, and TensorBoard hparams.

Two tiny digits runs, trained once per module, differ only in the learning rate.
"""

import json
import struct
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import copy_tree, tiny_config
from jaxtrain import config as config_lib
from jaxtrain import errors, runs
from jaxtrain.jobs import evaluate, train

RATES = (1e-2, 3e-3)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_dir):
  del data_dir
  root = tmp_path_factory.mktemp("runs")
  for lr in RATES:
    train.run(tiny_config(**{"optim.learning_rate": lr}), root / f"lr_{lr}")
  return root


def _report_config(workdir, **overrides):
  config = config_lib.load_snapshot(workdir)
  small = {"eval.slice_key": "label", "eval.robustness_examples": 0, "eval.pgd_steps": 5,
           "eval.noise_levels": (0.0, 0.3), "eval.adversarial_epsilons": (0.0, 0.05, 0.2),
           "eval.attribution_examples": (0, 5), "eval.ig_steps": 128, **overrides}
  for key, value in small.items():
    section, leaf = key.split(".")
    config[section][leaf] = value
  return config


@pytest.fixture(scope="module")
def report(two_runs):
  workdir = two_runs / f"lr_{RATES[0]}"
  result = evaluate.run(workdir, _report_config(workdir), step="best", report=True)
  return workdir, result, json.loads((workdir / "report" / "metrics.json").read_text())


def test_report_files_and_numbers_agree_with_eval(report):
  workdir, result, metrics = report
  out = workdir / "report"
  figures = ("confusion_matrix.png", "reliability.png", "slices.png", "robustness.png",
             "attributions.png")
  for name in figures + ("metrics.json", "report.md"):
    assert len((out / name).read_bytes()) > 1000 or name.endswith(".json"), name
  text = (out / "report.md").read_text()
  for name in figures:
    assert f"({name})" in text, f"{name} not listed in report.md"
  final = json.loads((workdir / "final.json").read_text())
  assert metrics["step"] == result["step"] == final["best"]["step"]
  assert metrics["checkpoint"] == "best"
  cls = metrics["classification"]
  # The report's jitted metrics agree with the loop's eval step on the same checkpoint.
  assert cls["accuracy"] == pytest.approx(result["eval/accuracy"], abs=1e-6)
  assert cls["nll"] == pytest.approx(result["eval/loss"], rel=1e-4)
  assert cls["count"] == 360 and np.sum(cls["confusion_matrix"]) == 360
  assert 0.8 < cls["accuracy"] <= cls["top_5_accuracy"] <= 1.0
  assert 0 <= cls["ece"] < 0.2 and sum(cls["reliability"]["count"]) == 360
  # Slicing by label: a slice's accuracy is its class's recall.
  table = metrics["slices"]["table"]
  assert [r["slice"] for r in table] == [str(i) for i in range(10)]
  np.testing.assert_allclose([r["accuracy"] for r in table], cls["per_class"]["recall"],
                             atol=1e-6)
  worst = min(table, key=lambda r: r["accuracy"])
  assert metrics["slices"]["worst_slice"] == worst["slice"]
  assert f"**Worst slice:** `{worst['slice']}`" in text and "Largest gap" in text


def test_robustness_at_zero_is_clean_accuracy_and_attacks_hurt(report):
  _, result, metrics = report
  rob = metrics["robustness"]
  assert rob["examples"] == 360  # eval.robustness_examples=0: the whole split.
  zero_noise = rob["noise"]["accuracy"][0]
  assert zero_noise == pytest.approx(result["eval/accuracy"], abs=1e-9)
  fgsm, pgd = rob["fgsm"]["accuracy"], rob["pgd"]["accuracy"]
  assert fgsm[0] == pgd[0] == zero_noise  # eps = 0 and std = 0 leave the inputs unchanged.
  assert fgsm[0] > fgsm[1] > fgsm[2] and pgd[0] > pgd[1] > pgd[2]
  assert pgd[2] <= fgsm[2] + 0.02  # Iterated attack at least about as strong.
  assert pgd[2] < zero_noise - 0.2


@pytest.fixture(scope="module")
def restored(two_runs):
  """The lr 1e-2 run's latest checkpoint, its eval split and its jitted logits."""
  from jaxtrain.analysis import report as report_lib
  from jaxtrain.data import pipeline
  workdir = two_runs / f"lr_{RATES[0]}"
  run = evaluate.restore(workdir)
  inputs, labels = pipeline.load_eval_arrays(run.config.data)
  logits_fn = jax.jit(lambda state, x: report_lib.logits_fn_of(run.recipe.model, state)(x))
  return workdir, run, inputs, labels, lambda x: np.asarray(logits_fn(run.state, x))


def _noisy_split(inputs, labels, sigma, key, low, high, batch_size):
  """The whole split with the report's Gaussian noise, batched as the report batches it."""
  from jaxtrain.analysis import report as report_lib, robustness
  noisy = jax.jit(robustness.gaussian_noise)
  out = []
  for batch in report_lib._batches({"inputs": inputs, "labels": labels}, batch_size):  # pylint: disable=protected-access
    x = noisy(batch["inputs"], sigma, key, low, high, batch["index"])
    out.append(np.asarray(x)[batch["mask"] > 0])
  return np.concatenate(out)


def test_noise_and_its_accuracy_do_not_depend_on_the_eval_batch_size(restored):
  from jaxtrain.analysis import report as report_lib
  workdir, run, inputs, labels, _ = restored
  inputs, labels = inputs[:200], labels[:200]  # Batch size 1 is one dispatch per example.
  key = jax.random.PRNGKey(7)
  low, high = float(inputs.min()), float(inputs.max())
  noisy = {b: _noisy_split(inputs, labels, 0.4, key, low, high, b) for b in (1, 7, 128, 1000)}
  for b in (7, 128, 1000):
    np.testing.assert_array_equal(noisy[b], noisy[1], err_msg=f"eval batch size {b}")
  assert not np.array_equal(noisy[1], inputs)
  eval_config = _report_config(workdir, **{"eval.noise_levels": (0.4, 1.0),
                                                "eval.adversarial_epsilons": ()}).eval
  accuracy = {b: report_lib.evaluate_robustness(run.recipe.model, run.state, inputs, labels,
                                                eval_config, b, seed=0)["noise"]["accuracy"]
              for b in (1, 7, 128, 1000)}
  assert accuracy[1] == accuracy[7] == accuracy[128] == accuracy[1000]
  assert accuracy[1][0] > accuracy[1][1]


def test_noise_is_iid_gaussian_per_example():
  """Every example's noise is its own N(0, sigma^2) draw: no draw repeats every
  B examples (one key per batch did that), none is shared, the values are normal."""
  from scipy import stats
  sigma, n = 0.4, 1500
  zeros = np.zeros((n, 8, 8), np.float32)
  noise = _noisy_split(zeros, np.zeros(n, np.int32), sigma, jax.random.PRNGKey(3),
                       -np.inf, np.inf, 128).reshape(n, -1).astype(np.float64)
  values = noise.ravel()
  assert abs(values.mean()) < 4 * sigma / np.sqrt(values.size)
  assert values.std() == pytest.approx(sigma, rel=0.02)
  assert stats.kstest(values / sigma, "norm").pvalue > 1e-3
  assert len(np.unique(noise, axis=0)) == n
  # Examples i and i + lag are uncorrelated, for lags within and across batches.
  for lag in (1, 7, 127, 128, 256):
    products = (noise[:-lag] * noise[lag:]).mean(1) / sigma**2
    assert abs(products.mean()) < 5 / np.sqrt(noise.shape[1] * (n - lag)), lag


@pytest.mark.parametrize("classes", [(), (5, 6, 7, 8, 9)], ids=["all", "classes_5to9"])
def test_report_scores_match_sklearn_on_the_models_logits(restored, tmp_path, classes):
  """metrics.json against sklearn on the checkpoint's own logits. With data.classes
  the split has 5 of the 10 classes; this model (trained on all 10) may still
  predict some of the others (test_metrics makes sure of such a class)."""
  from scipy import special
  from sklearn import metrics as skm
  from sklearn.exceptions import UndefinedMetricWarning
  workdir, _, _, _, logits_of = restored
  copy_tree(workdir, tmp_path / "run")  # Leave the shared run alone.
  workdir = tmp_path / "run"
  config = _report_config(workdir, **{"data.eval_batch_size": 128,
                                      "eval.noise_levels": (), "eval.adversarial_epsilons": (),
                                      "eval.attribution_examples": ()})
  config.data.classes = classes
  evaluate.run(workdir, config, report=True)
  cls = json.loads((workdir / "report" / "metrics.json").read_text())["classification"]
  from jaxtrain.data import pipeline
  inputs, labels = pipeline.load_eval_arrays(config.data)
  logits = logits_of(inputs)
  probs, pred = special.softmax(logits.astype(np.float64), -1), logits.argmax(-1)
  assert cls["count"] == len(labels) and set(labels) == set(classes or range(10))
  assert cls["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-9)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UndefinedMetricWarning)
    for average in ("macro", "weighted"):
      p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average=average)
      assert [cls[f"{average}_{k}"] for k in ("precision", "recall", "f1")] == pytest.approx(
          [p, r, f], abs=1e-9), average
    p, r, f, support = skm.precision_recall_fscore_support(labels, pred)
  present = sorted(set(labels) | set(pred))
  per = cls["per_class"]
  assert per["present"] == [c in present for c in range(10)]
  np.testing.assert_allclose([[per[k][c] for c in present] for k in ("precision", "recall", "f1")],
                             [p, r, f], atol=1e-9)
  assert [per["support"][c] for c in present] == support.tolist()
  assert cls["brier"] == pytest.approx(skm.brier_score_loss(labels, probs, labels=range(10)),
                                       rel=1e-5)
  if classes:  # sklearn's multiclass AUROC is nan with absent classes: its per-class mean.
    auroc = np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in classes])
    assert cls["macro_f1"] > 0.5 and per["support"][:5] == [0] * 5
  else:
    auroc = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  assert cls["auroc"] == pytest.approx(auroc, abs=1e-6)
  text = (workdir / "report" / "report.md").read_text()
  assert f"| auroc | {cls['auroc']:.4f} |" in text and f"| brier | {cls['brier']:.4f} |" in text
  rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines()
          if line.startswith("| ") and line.count("|") == 6 and "precision" not in line]
  assert rows == [str(c) for c in present]
  assert ("neither occur in the split nor are predicted" in text) == (len(present) < 10)


def test_auroc_is_null_when_undefined_or_too_large(restored, monkeypatch):
  from jaxtrain.analysis import report as report_lib
  workdir, run, inputs, labels, _ = restored
  eval_config = _report_config(workdir).eval
  one_class = labels == 5
  cls = report_lib.evaluate_metrics(run.recipe.model, run.state, inputs[one_class],
                                    labels[one_class], eval_config, 128, None)["classification"]
  assert cls["auroc"] is None and "fewer than two classes" in cls["auroc_skipped"]
  monkeypatch.setattr(report_lib, "MAX_AUROC_SCORES", len(labels) * 10 - 1)
  cls = report_lib.evaluate_metrics(run.recipe.model, run.state, inputs, labels, eval_config,
                                    128, None)["classification"]
  assert cls["auroc"] is None and "scores" in cls["auroc_skipped"]
  assert "skipped: more than" in report_lib.markdown(
      {"workdir": "w", "step": 1, "checkpoint": "latest", "split": "test",
       "classification": cls, "figures": {"confusion_matrix": "c.png",
                                          "reliability": "r.png"}})


def _drawn(monkeypatch, plot, *args):
  """The matplotlib Figure `plot(*args)` saves, drawn (so text has its extent)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from jaxtrain.analysis import plots
  figures = []
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
  plot(*args)
  (fig,) = figures
  FigureCanvasAgg(fig).draw()
  return fig


def _assert_no_overlap(labels):
  boxes = [t.get_window_extent() for t in labels if t.get_text()]
  for i, a in enumerate(boxes):
    for b in boxes[i + 1:]:
      assert not a.overlaps(b), "tick labels overlap"


@pytest.mark.parametrize("num_classes, step", [(3, 1), (10, 1), (37, 1), (60, 1), (61, 2),
                                              (100, 2), (150, 5), (1000, 20)])
def test_confusion_matrix_labels_every_class(monkeypatch, tmp_path, num_classes, step):
  """Every class up to plots.MAX_TICKED; past that every `step`-th, said in the title."""
  from jaxtrain.analysis import plots
  confusion = np.random.default_rng(0).integers(0, 9, (num_classes, num_classes))
  fig = _drawn(monkeypatch, plots.confusion_matrix, confusion.tolist(), tmp_path / "c.png")
  ax = fig.axes[0]
  names = [str(c) for c in range(0, num_classes, step)]
  assert [t.get_text() for t in ax.get_xticklabels()] == names
  assert [t.get_text() for t in ax.get_yticklabels()] == names
  assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 7
  _assert_no_overlap(ax.get_xticklabels())
  _assert_no_overlap(ax.get_yticklabels())
  title = ax.get_title()
  assert (f"every {step}" in title and f"{num_classes} classes" in title) == (step > 1)


def test_reliability_diagram_shows_bin_counts_and_fades_near_empty_bins(monkeypatch, tmp_path):
  from jaxtrain.analysis import plots
  counts = [0, 0, 1, 0, 2, 5, 9, 20, 60, 900]
  reliability = {"bin_edges": np.linspace(0, 1, 11).tolist(), "count": counts,
                 "accuracy": [0, 0, 1.0, 0, 0, 0.6, 0.55, 0.7, 0.85, 0.98],
                 "confidence": [0, 0, 0.25, 0, 0.45, 0.55, 0.65, 0.75, 0.85, 0.97]}
  fig = _drawn(monkeypatch, plots.reliability_diagram, reliability, 0.0312, tmp_path / "r.png")
  ax, ax_count = fig.axes
  assert "ECE = 0.0312" in ax.get_title()
  # Each non-empty bin's count is written on the figure, and the count axis is a log
  # axis so that the 1-example bin is a visible bar next to the 900-example one.
  assert [t.get_text() for t in ax_count.texts] == [str(c) for c in counts if c]
  assert ax_count.get_yscale() == "log"
  heights = [b.get_height() for b in ax_count.patches]
  assert heights == [c for c in counts if c]
  # The 1-example bin at accuracy 1.0 is drawn faint, the 900-example bin opaque.
  bars = {round(b.get_x(), 2): b for b in ax.patches}
  assert bars[0.2].get_facecolor()[3] < 0.3 < 0.99 < bars[0.9].get_facecolor()[3]
  alphas = [bars[round(x, 2)].get_facecolor()[3] for x in (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
  assert alphas == sorted(alphas)  # More examples, more solid.


@pytest.mark.parametrize("names", [["heavy", "light"], [str(i) for i in range(10)],
                                   [f"a long slice name, number {i}" for i in range(8)] + ["x"],
                                   [f"s{i:02d}" for i in range(40)]])
def test_slice_plot_draws_overall_accuracy_and_readable_ticks(monkeypatch, tmp_path, names):
  from jaxtrain.analysis import plots
  table = [{"slice": n, "count": 3, "accuracy": 0.5 + 0.01 * i} for i, n in enumerate(names)]
  fig = _drawn(monkeypatch, plots.slice_accuracy, table, "group", tmp_path / "s.png", 0.625)
  ax = fig.axes[0]
  lines = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.625, 0.625]]
  assert len(lines) == 1, "no overall-accuracy line"
  assert any("overall" in t.get_text() for t in fig.legends[0].get_texts())
  labels = ax.get_xticklabels()
  assert len({t.get_text() for t in labels}) == len(names)  # Still tell slices apart.
  _assert_no_overlap(labels)
  _assert_no_overlap(labels + [ax.xaxis.label])


def test_integrated_gradients_are_complete(report):
  _, _, metrics = report
  a = metrics["attributions"]
  assert a["examples"] == [0, 5] and len(a["predicted"]) == 2
  gap = np.asarray(a["logit_gap"])
  np.testing.assert_allclose(a["ig_sum"], gap, atol=2e-3 * np.abs(gap).max())


@pytest.mark.parametrize("overrides, expected", [
    ({"eval.slice_key": "colour"}, ["eval.slice_key='colour'", "features: image, label"]),
    ({"eval.slice_key": "no_such_module:fn"}, ["cannot import 'no_such_module'"]),
    ({"eval.slice_key": "numpy:add"},  # Broadcasts (inputs, labels): wrong shape.
     ["'numpy:add' gave slice ids of shape (360, 8, 8, 360)", "shape (360,)"]),
    ({"eval.attribution_examples": (0, 360)}, ["index 360", "360 examples"]),
])
def test_bad_eval_keys_are_one_line_errors(two_runs, overrides, expected, compiles):
  workdir = two_runs / f"lr_{RATES[1]}"  # Trained (module fixture) before `compiles` listens.
  with pytest.raises(errors.UserError) as e:
    evaluate.run(workdir, _report_config(workdir, **overrides), report=True)
  for text in expected:
    assert text in str(e.value)
  assert "\n" not in str(e.value) and not compiles, "not one line, or after a compile"
  assert not (workdir / "report").exists()


def test_runs_list_shows_every_run_and_the_difference(two_runs, capsys):
  assert runs.main(["list", str(two_runs)]) == 0
  lines = capsys.readouterr().out.splitlines()
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  assert header[-1] == "optim.learning_rate" and "final eval/accuracy" in header
  rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
  assert [r[0] for r in rows] == [f"lr_{lr}" for lr in sorted(RATES)]
  for row in rows:
    final = json.loads((two_runs / row[0] / "final.json").read_text())
    assert row[2] == "completed" and row[3] == "60"
    assert float(row[header.index("final eval/accuracy")]) == pytest.approx(
        final["final"]["eval/accuracy"], abs=1e-4)
    assert float(row[-1]) == float(row[0].removeprefix("lr_"))


def test_runs_compare_writes_curves(two_runs, tmp_path, capsys):
  paths = [str(two_runs / f"lr_{lr}") for lr in RATES]
  assert runs.main(["compare", *paths, f"--out={tmp_path}"]) == 0
  out = capsys.readouterr().out
  assert "| optim.learning_rate | 0.01 | 0.003 |" in out
  for name in ("train_loss.png", "eval_accuracy.png"):
    assert len((tmp_path / name).read_bytes()) > 1000
  assert "![eval_accuracy](eval_accuracy.png)" in (tmp_path / "compare.md").read_text()
  assert runs.main(["compare", str(two_runs)]) == 2  # The root is not a run.
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not a jaxtrain run directory" in err


def _events(path):
  """Event protos of a TensorBoard event file (TFRecord framing, CRCs not checked)."""
  from tensorboardX.proto import event_pb2
  data = path.read_bytes()
  i = 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i:i + 8])
    yield event_pb2.Event.FromString(data[i + 12:i + 12 + length])
    i += 12 + length + 4


def test_tensorboard_hparams_entry_lets_the_hparams_view_compare_runs(two_runs):
  from tensorboardX.proto import plugin_hparams_pb2
  for lr in RATES:
    (path,) = (two_runs / f"lr_{lr}").glob("events.out.tfevents.*")
    starts, experiments, scalars = [], 0, set()
    for event in _events(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "hparams":
          data = plugin_hparams_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content)
          starts += [data.session_start_info] if data.HasField("session_start_info") else []
          experiments += data.HasField("experiment")
        elif value.HasField("simple_value"):
          scalars.add(value.tag)
    # One session start with the keys that differ from the defaults (and model.name,
    # data.name); no per-run experiment entry (TensorBoard would take the first run's for
    # the whole logdir); the metrics are scalars.
    assert len(starts) == 1 and experiments == 0
    assert starts[0].hparams["optim.learning_rate"].number_value == pytest.approx(lr)
    assert starts[0].hparams["model.name"].string_value == "mlp"
    assert set(starts[0].hparams) == set(config_lib.changed_from_defaults(
        config_lib.load_snapshot(two_runs / f"lr_{lr}")))
    assert "seed" not in starts[0].hparams and "data.batch_size" in starts[0].hparams
    assert {"eval/accuracy", "eval/loss", "train/loss"} <= scalars


def test_runs_reads_tuning_workdirs_and_incomplete_runs(tmp_path):
  """Hand-written workdirs in the layout train.run and tune.run write."""
  tuned, crashed = tmp_path / "tuned", tmp_path / "crashed"
  for path, config in ((tuned, {"tune": {"strategy": "pbt"}}),
                       (crashed, {"tune": {"strategy": "none"}})):
    (path / "tune" if path == tuned else path).mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
  (tuned / "best").mkdir()
  (tuned / "best" / "config.json").write_text("{}")  # Not listed: inside a run.
  (tuned / "tune" / "result.json").write_text(json.dumps(
      {"status": "completed", "metric": "eval/accuracy", "best_score": 0.95, "best_member": 1,
       "wall_time_sec": 12.5}))
  (tuned / "best" / "final.json").write_text(json.dumps({"final": {"eval/accuracy": 0.95}}))
  (tuned / "metrics.jsonl").write_text("".join(json.dumps(
      {"step": s, "member_ids": [0, 1], "eval/accuracy": [0.5, a]}) + "\n"
      for s, a in ((10, 0.8), (20, 0.95))))
  (crashed / "metrics.jsonl").write_text(
      '{"step": 10, "eval/accuracy": 0.7}\n{"step": 20, "eval/accuracy": 0.6}\n{"step": 3')
  assert runs.find_runs(tmp_path) == [crashed, tuned]
  t, c = runs.summarize(tuned), runs.summarize(crashed)
  assert (t["kind"], t["status"], t["best"], t["final"], t["steps"]) == (
      "tune", "completed", 0.95, 0.95, 20)
  assert runs.curves(tuned, t)["eval/accuracy"] == [(10, 0.8), (20, 0.95)]  # Best member.
  assert (c["status"], c["steps"], c["final"], c["best"], c["best_step"]) == (
      "incomplete", 20, 0.6, 0.7, 10)
  assert runs.differing_keys([t, c]) == ["tune.strategy"]


def test_slicing_by_a_dataset_feature_reads_the_eval_split(two_runs):
  from jaxtrain.analysis import slices
  from jaxtrain.data import pipeline
  config = config_lib.load_snapshot(two_runs / f"lr_{RATES[0]}")
  inputs, labels = pipeline.load_eval_arrays(config.data)
  # "label" is also a feature of digits: read from the TFDS source, it must
  # give the same slices as the labels the pipeline loads.
  by_feature = slices._from_feature("label", config.data)  # pylint: disable=protected-access
  np.testing.assert_array_equal(by_feature, labels)
  resolved = slices.resolve("label", config.data, inputs, labels)
  assert resolved.names == tuple(str(i) for i in range(10))
  np.testing.assert_array_equal(resolved.ids, labels)
  # With data.classes the eval split is filtered; feature slices follow it.
  config.data.classes = (5, 6, 7, 8, 9)
  _, labels = pipeline.load_eval_arrays(config.data)
  by_feature = slices._from_feature("label", config.data)  # pylint: disable=protected-access
  np.testing.assert_array_equal(by_feature, labels)
  assert set(by_feature) == {5, 6, 7, 8, 9}


def test_runs_compare_from_python_labels_columns_with_the_names_given(two_runs, tmp_path):
  paths = [two_runs / f"lr_{lr}" for lr in RATES]
  table, figures = runs.compare(paths, out=tmp_path, names=["fast", "slow"])
  assert table.splitlines()[0].split("|")[2:4] == [" fast ", " slow "]
  assert "| optim.learning_rate | 0.01 | 0.003 |" in table and figures
  with pytest.raises(errors.UserError, match="2 runs but 1 names"):
    runs.compare(paths, names=["fast"])
