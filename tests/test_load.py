"""`jaxtrain.load(workdir)`: every kind of workdir gives back the model that was scored.

Each test compares `predict` with the number the run itself recorded (final.json,
metrics.jsonl, test.json, tune/result.json, cv.json): accuracy here is
mean(argmax(logits) == label) in numpy. The recorded accuracies are (correct
predictions over the unmasked examples) / (examples), from sums of 0/1 values that
float32 holds exactly, and padding is masked out of them; so they are compared with
`==`, and any prediction that differs from what the run scored fails the test.
Predict batches like the evaluation did (data.eval_batch_size, the last batch padded),
so the programs have the evaluation's shapes. A population (tuning members,
cross-validation folds) was scored vmapped and is predicted one member at a time:
the logits agree to rounding, and on these models no argmax flips.
"""

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import chex
import numpy as np
import pytest

import jaxtrain
from jaxtrain import errors
from jaxtrain.io import writers
from jaxtrain.jobs import train
from jaxtrain.tune import cv, folds as folds_lib
from tests.conftest import tiny_config


def accuracy(run, inputs, labels) -> float:
  return float(np.mean(run.predict(inputs).argmax(-1) == labels))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """A 60-step digits MLP: checkpoints at 40 and 60 (keep=2), the best among them.
  eval_batch_size=128 splits the 360 test digits into 128 + 128 + 104 (padded)."""
  workdir = tmp_path_factory.mktemp("single") / "run"
  config = tiny_config(**{"data.eval_batch_size": 128})
  config.compile.cache_dir = ""  # Every compile counted (no persistent-cache hits).
  train.run(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  """PBT over 4 members for 40 steps: members compared on train[80%:], the best
  exported to best/ and scored on the test split (best/test.json)."""
  workdir = tmp_path_factory.mktemp("tune") / "run"
  c = tiny_config(**{"data.train_split": "train[:80%]", "data.eval_split": "train[80%:]",
                     "data.test_split": "test", "train.num_steps": 40,
                     "train.eval_every_steps": 10, "checkpoint.every_steps": 20,
                     "optim.name": "adamw"})
  c.tune.strategy = "pbt"
  c.tune.population_size = 4
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)",
                            weight_decay="loguniform(1e-6, 1e-3)")
  jaxtrain.tune.run(c, workdir)
  return workdir


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cv") / "run"
  cv.run(tiny_config(**{"eval.cross_validation.folds": 3, "train.eval_every_steps": 30}),
         workdir)
  return workdir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """LoRA adapters with an EMA that eval.use_ema scores (and the merged export takes)."""
  workdir = tmp_path_factory.mktemp("lora") / "run"
  train.run(tiny_config(**{"model.lora_rank": 2, "model.lora_alpha": 4.0,
                           "train.ema_decay": 0.9, "eval.use_ema": True}), workdir)
  return workdir


def test_a_single_run_predicts_what_it_scored_at_each_checkpoint(single):
  final = json.loads((single / "final.json").read_text())
  latest = jaxtrain.load(single)
  inputs, labels = latest.data()  # data.eval_split: the 360 test digits, as stored.
  assert (latest.step, latest.which, latest.weights) == (60, "latest", "raw")
  assert accuracy(latest, inputs, labels) == final["final"]["eval/accuracy"]

  best = jaxtrain.load(single, "best")
  assert best.step == final["best"]["step"]
  assert accuracy(best, inputs, labels) == final["best"]["eval/accuracy"]

  at_40 = jaxtrain.load(single, 40)
  logged = {r["step"]: r for r in writers.read_metrics(single) if "eval/accuracy" in r}
  assert at_40.step == 40 and accuracy(at_40, inputs, labels) == logged[40]["eval/accuracy"]
  assert not np.array_equal(at_40.variables["params"]["Dense_0"]["kernel"],
                            latest.variables["params"]["Dense_0"]["kernel"])

  # The Flax module and the variables, called directly, give the same logits.
  direct = np.asarray(latest.module.apply(latest.variables, inputs[:7], train=False))
  np.testing.assert_allclose(direct, latest.predict(inputs[:7]), rtol=1e-5, atol=1e-5)


def test_probabilities_sum_to_one_and_rank_like_the_logits(single):
  run = jaxtrain.load(single)
  inputs, _ = run.data()
  probs = run.predict(inputs, probabilities=True)
  assert probs.shape == (360, 10) and probs.dtype == np.float32 and probs.min() >= 0
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(probs.argmax(-1), run.predict(inputs).argmax(-1))


def test_predict_compiles_once_per_batch_shape(single, compiles):
  run = jaxtrain.load(single)
  inputs, _ = run.data()
  compiles.clear()  # What loading compiled does not count.
  run.predict(inputs[:50])
  assert len(compiles) == 1
  run.predict(inputs[50:100])  # The same shape: no compile.
  assert len(compiles) == 1
  run.predict(inputs[:20])
  assert len(compiles) == 2
  # More than data.eval_batch_size=128: batches of 128, the last one padded to 128.
  whole = run.predict(inputs)
  assert len(compiles) == 3
  run.predict(np.concatenate([inputs, inputs])[:300], probabilities=True)  # 128+128+44.
  assert len(compiles) == 3
  np.testing.assert_allclose(whole[:50], run.predict(inputs[:50]), rtol=1e-5, atol=1e-6)


def test_a_tuning_run_loads_its_best_member_and_any_member(tuned):
  best = jaxtrain.load(tuned)  # which="best": the exported WORKDIR/best.
  assert best.workdir == tuned / "best" and best.which == "best"
  test_inputs, test_labels = best.data(best.config.data.test_split)
  test = json.loads((tuned / "best" / "test.json").read_text())
  assert accuracy(best, test_inputs, test_labels) == test["eval/accuracy"]
  eval_inputs, eval_labels = best.data()  # train[80%:], where members were compared.
  exported = json.loads((tuned / "best" / "final.json").read_text())
  assert accuracy(best, eval_inputs, eval_labels) == exported["final"]["eval/accuracy"]

  result = json.loads((tuned / "tune" / "result.json").read_text())
  assert len(result["members"]) == 4
  for row in result["members"]:  # Each member as the tuner scored it at the last step.
    run = jaxtrain.load(tuned, member=row["id"])
    assert (run.member, run.step, run.which) == (row["id"], 40, "latest")
    assert run.config.optim.learning_rate == row["settings"]["optim.learning_rate"]
    assert accuracy(run, eval_inputs, eval_labels) == row["eval"]["eval/accuracy"]
  chex.assert_trees_all_equal(jaxtrain.load(tuned, member=result["best_member"]).variables,
                              best.variables, strict=True)


def test_a_cross_validation_fold_predicts_its_held_out_score(folds):
  result = json.loads((folds / "cv.json").read_text())
  first = jaxtrain.load(folds, fold=0)
  inputs, labels = first.data(first.config.data.train_split)
  held = folds_lib.held_out_masks(len(labels), first.config.seed, folds=3)
  for k in range(3):
    run = first if k == 0 else jaxtrain.load(folds, fold=k)
    assert (run.fold, run.step) == (k, 60)
    # The whole split, in the evaluation's batches; fold k is scored on its held-out rows.
    predicted = run.predict(inputs).argmax(-1)
    assert float(np.mean(predicted[held[k]] == labels[held[k]])) == (
        result["per_fold"][k]["cv/accuracy"])


def test_a_lora_run_as_trained_and_merged_predict_the_same(lora_run):
  final = json.loads((lora_run / "final.json").read_text())
  trained = jaxtrain.load(lora_run)
  merged = jaxtrain.load(lora_run, merged=True)
  inputs, labels = trained.data()
  assert trained.weights == "ema" and trained.module is None  # The adapters wrap the MLP.
  assert {"params", "lora_base"} <= set(trained.variables)
  # eval.use_ema: the run's eval/ema_accuracy is what --mode=eval scores.
  assert accuracy(trained, inputs, labels) == final["final"]["eval/ema_accuracy"]
  assert merged.config.model.lora_rank == 0 and set(merged.variables) == {"params"}
  np.testing.assert_allclose(merged.predict(inputs), trained.predict(inputs), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(merged.module.apply(merged.variables, inputs, train=False),
                             merged.predict(inputs), rtol=1e-5, atol=1e-5)
  # The merge the run exported at its end (WORKDIR/merged) holds the same weights.
  chex.assert_trees_all_close(jaxtrain.load(lora_run / "merged").variables, merged.variables,
                              rtol=1e-6, atol=1e-6)


def test_a_model_of_the_users_own_loads_from_its_record(tmp_path, local_tmp_path, monkeypatch):
  """model.name='module:Attr': the module is found again through provenance.json. The
  module's folder is local (Python imports it), the workdir tmp_path (gs:// or local)."""
  code = local_tmp_path / "code"
  code.mkdir()
  (code / "load_user_net.py").write_text(textwrap.dedent('''
      import flax.linen as nn


      class Net(nn.Module):
        num_classes: int = 10

        @nn.compact
        def __call__(self, x):
          return nn.Dense(self.num_classes)(nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1)))))
  '''))
  monkeypatch.syspath_prepend(str(code))
  final = train.run(tiny_config(**{"model.name": "load_user_net:Net", "train.num_steps": 20,
                                   "train.eval_every_steps": 20}), tmp_path / "run")
  # A later session: neither imported nor on the path.
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(code)])
  monkeypatch.delitem(sys.modules, "load_user_net")
  run = jaxtrain.load(tmp_path / "run")
  assert type(run.module).__name__ == "Net" and "load_user_net" in sys.modules
  assert accuracy(run, *run.data()) == final["final"]["eval/accuracy"]


def _tree_digest(root: Path) -> str:
  """Every path under `root` with its size, modification time and bytes."""
  digest = hashlib.sha256()
  for path in sorted(root.rglob("*")):
    stat = path.stat()
    digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    if path.is_file():
      digest.update(path.read_bytes())
  return digest.hexdigest()


def test_loading_writes_nothing(single, tuned, folds, lora_run):
  roots = (single, tuned, folds, lora_run)
  before = [_tree_digest(r) for r in roots]
  inputs, _ = jaxtrain.load(single).data()
  for run in (jaxtrain.load(single, "best"), jaxtrain.load(single, 40), jaxtrain.load(tuned),
              jaxtrain.load(tuned, member=0), jaxtrain.load(folds, fold=1),
              jaxtrain.load(lora_run, merged=True)):
    run.predict(inputs[:3])
  with pytest.raises(errors.UserError):
    jaxtrain.load(single, 7)
  assert [_tree_digest(r) for r in roots] == before


@pytest.mark.parametrize("where,kwargs,expected", [
    ("missing", {}, ["does not exist", "--workdir of a jaxtrain run"]),
    ("empty", {}, ["is not a jaxtrain run", "no config.json"]),
    ("single", {"which": 7}, ["step 7 is not a checkpoint of", "40, 60"]),
    ("single", {"which": "last"}, ["which='last'", "'latest', 'best' or a step number"]),
    ("single", {"member": 0}, ["member=0", "is a single run", "without member="]),
    ("single", {"fold": 0}, ["fold=0", "is a single run", "without fold="]),
    ("single", {"merged": True}, ["not a LoRA run", "without merged="]),
    ("tuned", {"member": 9}, ["member=9 is not in the population", "members: 0, 1, 2, 3"]),
    ("tuned", {"fold": 0}, ["fold=0", "is a tuning run"]),
    ("folds", {}, ["cross-validation run of 3", "pass fold=0..2", "cv.json"]),
    ("folds", {"fold": 3}, ["fold=3 is not one of them", "pass fold=0..2"]),
    ("folds", {"member": 0}, ["member=0", "is a cross-validation run"]),
])
def test_a_bad_choice_is_one_line(where, kwargs, expected, request, tmp_path):
  # "empty": a folder that holds no run (a stray file in it: a gs:// folder without an
  # object in it does not exist).
  (tmp_path / "notes.txt").write_text("")
  paths = {"missing": tmp_path / "nowhere", "empty": tmp_path}
  workdir = paths.get(where) or request.getfixturevalue(where)
  with pytest.raises(errors.UserError) as e:
    jaxtrain.load(workdir, **kwargs)
  message = str(e.value)
  assert "\n" not in message, message
  for part in expected:
    assert part in message, message


@pytest.mark.parametrize("make,expected", [
    (lambda x: x[0], ["are one example", "(N, 8, 8, 1)", "inputs[None]"]),
    (lambda x: x[:, :4], ["shape (360, 4, 8, 1)", "(N, 8, 8, 1)"]),
    (lambda x: x[:0], ["no example"]),
    (lambda x: x.astype(str), ["inputs are <U", "float32 numbers"]),
    (lambda x: [[1.0, 2.0], [3.0]], ["not one array", "(N, 8, 8, 1)"]),
    # scikit-learn's own digits, not the dataset's form: the error says what that is.
    (lambda x: __import__("sklearn.datasets").datasets.load_digits().images,
     ["shape (1797, 8, 8)", "intensities divided by 16", "(8, 8, 1)"]),
])
def test_bad_inputs_are_one_line(single, make, expected):
  run = jaxtrain.load(single)
  inputs, _ = run.data()
  with pytest.raises(errors.UserError) as e:
    run.predict(make(inputs))
  assert "\n" not in str(e.value)
  for part in expected:
    assert part in str(e.value), str(e.value)
