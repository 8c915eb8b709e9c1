"""Cross-validation as a population: fold masks, equality with single runs, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import errors
from jaxtrain.core import metrics, step as step_lib
from jaxtrain.data import pipeline
from jaxtrain.io import writers
from jaxtrain.jobs import setup
from jaxtrain.tune import cv, folds
from tests.conftest import tiny_config


def cv_config(**overrides):
  return tiny_config(**{"eval.cross_validation.folds": 3, "train.num_steps": 60,
                        "train.eval_every_steps": 30, **overrides})


def test_fold_masks_partition_the_data():
  held = folds.held_out_masks(1437, seed=0, folds=5)
  assert held.shape == (5, 1437)
  np.testing.assert_array_equal(held.sum(axis=0), np.ones(1437))  # Each example once.
  assert sorted(held.sum(axis=1).tolist()) == [287, 287, 287, 288, 288]
  index, counts = folds.train_indices(held)
  for p, n in enumerate(counts):
    assert n == 1437 - held[p].sum()
    np.testing.assert_array_equal(index[p, :n], np.flatnonzero(~held[p]))
  assert not np.array_equal(held, folds.held_out_masks(1437, seed=1, folds=5))
  holdout = folds.held_out_masks(1000, seed=0, holdout_fraction=0.2)
  assert holdout.shape == (1, 1000) and holdout.sum() == 200


def test_each_fold_equals_a_single_run_on_its_training_examples(tmp_path):
  config = cv_config()
  result = cv.run(config, tmp_path)
  assert result["train_step_compiles"] == 1
  assert json.loads((tmp_path / "cv.json").read_text()) == result
  records = writers.read_metrics(tmp_path)
  assert [r["step"] for r in records] == [30, 60] and len(records[-1]["cv/accuracy"]) == 3

  # The reference: one model on a fold's training examples alone, stepped as
  # `train.run` steps it (same init, epoch permutations and batches).
  data, info = pipeline.create_train_data(config.data, config.seed)
  r = setup.recipe(config, info)
  model, tx, schedule = r.model, r.tx, r.schedule
  batch_size = config.data.batch_size

  @jax.jit
  def single_step(state, acc, order, subset, data_key):
    n = subset["labels"].shape[0]
    order = pipeline.refresh_order(order, data_key, state.step, n, batch_size)
    batch = pipeline.device_batch(subset, order, state.step, batch_size)
    state, acc = step_lib.accumulate_train_step(model, tx, schedule, state, acc, batch)
    return state, acc, order

  evaluate = jax.jit(lambda state, batch: step_lib.eval_step(model, state, batch))
  arrays = jax.device_get(data.arrays)
  held = folds.held_out_masks(data.num_examples, config.seed, folds=3)
  for p in range(3):
    train_rows, held_rows = np.flatnonzero(~held[p]), np.flatnonzero(held[p])
    subset = {k: jnp.asarray(v[train_rows]) for k, v in arrays.items()}
    state = r.create(data.sample_batch(), jax.random.PRNGKey(config.seed))
    acc = {k: jnp.zeros((), jnp.float32) for k in metrics.TRAIN_METRICS}
    order = pipeline.new_epoch_order(len(train_rows))
    for _ in range(config.train.num_steps):
      state, acc, order = single_step(state, acc, order, subset,
                                      jax.random.fold_in(data.data_key, p))
    sums = evaluate(state, {k: v[held_rows] for k, v in arrays.items()})
    accuracy = float(sums["accuracy"] / sums["count"])
    loss = float(sums["loss"] / sums["count"])
    # Batched (vmapped) vs single matmuls round differently: the loss agrees to
    # 1e-4 relative, the accuracy to one held-out example.
    fold = result["per_fold"][p]
    assert fold["held_out_examples"] == len(held_rows)
    assert fold["cv/accuracy"] == pytest.approx(accuracy, abs=1.01 / len(held_rows))
    assert fold["cv/loss"] == pytest.approx(loss, rel=1e-4)
  values = np.asarray(result["cv/accuracy"])
  assert result["cv/accuracy_mean"] == pytest.approx(values.mean())
  assert result["cv/accuracy_std"] == pytest.approx(values.std())


def test_holdout_split_is_one_member(tmp_path):
  config = cv_config(**{"eval.cross_validation.folds": 0,
                        "eval.cross_validation.holdout_fraction": 0.25,
                        "train.num_steps": 30})
  result = cv.run(config, tmp_path)
  assert len(result["per_fold"]) == 1 and result["cv/accuracy_std"] == 0.0
  assert result["per_fold"][0]["held_out_examples"] == round(0.25 * result["examples"])
  assert result["cv/accuracy_mean"] > 0.5


@pytest.mark.parametrize("overrides,message", [
    ({"eval.cross_validation.folds": 1}, "folds=1 must be >= 2"),
    ({"eval.cross_validation.folds": -2}, "folds=-2 must be >= 2"),
    ({"eval.cross_validation.folds": 5000}, "folds=5000 is more than the 1437 examples"),
    ({"eval.cross_validation.folds": 3, "eval.cross_validation.holdout_fraction": 0.2},
     "are both set"),
    ({"eval.cross_validation.folds": 0, "eval.cross_validation.holdout_fraction": 1.0},
     "must be in (0, 1)"),
    ({"eval.cross_validation.folds": 0, "eval.cross_validation.holdout_fraction": 0.99},
     "fewer than data.batch_size=32"),
    ({"tune.strategy": "random"}, "cannot be combined with tune.strategy"),
])
def test_bad_cross_validation_settings_are_one_line_errors(overrides, message):
  with pytest.raises(errors.UserError) as e:
    cv.validate(cv_config(**overrides))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_stopped_cross_validation_resumes_bitwise_and_refuses_another_config(tmp_path):
  config = cv_config(**{"train.num_steps": 40, "train.eval_every_steps": 10,
                        "checkpoint.every_steps": 20})
  whole = cv.run(config, tmp_path / "whole")
  stopped = cv.run(config, tmp_path / "split", stop_after_steps=15)  # Mid-interval.
  assert stopped == {"status": "stopped", "step": 15}
  split = cv.run(config, tmp_path / "split")
  timing = ("train_time_sec", "wall_time_sec", "train_step_compiles")
  assert ({k: v for k, v in split.items() if k not in timing}
          == {k: v for k, v in whole.items() if k not in timing})
  read = lambda d: [{k: v for k, v in r.items() if "per_sec" not in k and k != "wall_time"}
                    for r in writers.read_metrics(d)]
  assert read(tmp_path / "split") == read(tmp_path / "whole")
  other = cv_config(**{"train.num_steps": 40, "train.eval_every_steps": 10,
                       "checkpoint.every_steps": 20, "optim.learning_rate": 0.5})
  with pytest.raises(errors.UserError, match="holds a run with a different config"):
    cv.run(other, tmp_path / "split")
  from jaxtrain.jobs import evaluate  # --mode=eval on it: one line, not a checkpoint mismatch.
  with pytest.raises(errors.UserError, match="is a cross-validation run: its results are in"):
    evaluate.run(tmp_path / "split")
  assert json.loads((tmp_path / "split" / "cv.json").read_text())["step"] == 40  # Kept.


def test_stratified_folds_keep_class_proportions(tmp_path):
  labels = np.random.default_rng(0).choice(10, size=1437, p=np.r_[[0.3], [0.7 / 9] * 9])
  held = folds.held_out_masks(1437, seed=0, folds=5, labels=labels)
  assert (held.sum(axis=0) == 1).all()  # Still a partition.
  per_fold = np.stack([np.bincount(labels[m], minlength=10) for m in held])  # [folds, classes]
  assert (per_fold.max(axis=0) - per_fold.min(axis=0)).max() <= 1
  plain = folds.held_out_masks(1437, seed=0, folds=5)
  plain_counts = np.stack([np.bincount(labels[m], minlength=10) for m in plain])
  assert (plain_counts.max(axis=0) - plain_counts.min(axis=0)).max() > 1  # Not by chance.
  holdout = folds.held_out_masks(1437, seed=0, holdout_fraction=0.2, labels=labels)[0]
  assert holdout.sum() == round(0.2 * 1437)
  np.testing.assert_allclose(np.bincount(labels[holdout], minlength=10) / holdout.sum(),
                             np.bincount(labels, minlength=10) / 1437, atol=0.01)
  # End to end: the run's folds are stratified by the training split's labels.
  result = cv.run(cv_config(**{"eval.cross_validation.stratified": True,
                               "train.num_steps": 20, "train.eval_every_steps": 20}), tmp_path)
  sizes = [f["held_out_examples"] for f in result["per_fold"]]
  assert max(sizes) - min(sizes) <= 1 and result["cv/accuracy_mean"] > 0.3
  with pytest.raises(errors.UserError, match="class 5 has only 2 examples"):
    cv.validate(cv_config(**{"eval.cross_validation.stratified": True,
                             "data.classes": (5, 6), "data.examples_per_class": 2,
                             "data.batch_size": 1}))


def test_folds_start_from_init_from_and_lora_trains_adapters(tmp_path):
  """init_from in cross-validation: every fold starts from the checkpoint (at a
  learning rate of 1e-9 each fold scores like the pretrained model, not at chance);
  with LoRA the folds train adapters over those weights."""
  from jaxtrain.jobs import train
  train.run(tiny_config(), tmp_path / "pre")
  start = {"train.num_steps": 10, "train.eval_every_steps": 10, "optim.learning_rate": 1e-9,
           "init_from.workdir": str(tmp_path / "pre")}
  result = cv.run(cv_config(**start), tmp_path / "cv")
  assert min(result["cv/accuracy"]) > 0.9  # The pretrained MLP saw these examples.
  assert json.loads((tmp_path / "cv" / "init_from.json").read_text())["fresh"] == []
  scratch = cv.run(cv_config(**{**start, "init_from.workdir": ""}), tmp_path / "scratch")
  assert max(scratch["cv/accuracy"]) < 0.3
  lora = cv.run(cv_config(**{**start, "optim.learning_rate": 1e-2, "model.lora_rank": 2,
                             "train.num_steps": 20, "train.eval_every_steps": 20}),
                tmp_path / "lora")
  assert min(lora["cv/accuracy"]) > 0.9
  with pytest.raises(errors.UserError, match="train.ema_decay=0.9 is not used by cross-validation"):
    cv.validate(cv_config(**{"train.ema_decay": 0.9}))
