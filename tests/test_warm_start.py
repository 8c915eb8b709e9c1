"""Warm starts (tune.warm_start_from): a Bayesian search begins from an earlier search's
finished trials, checked against the Optuna studies themselves."""

import copy
import json
from pathlib import Path

import chex
import optuna
import pytest

import jaxtrain
from jaxtrain import errors
from jaxtrain.jobs import setup, train
from jaxtrain.tune import loop as tune_loop
from jaxtrain.tune import phase as phase_lib
from jaxtrain.tune import strategies, warm_start
from tests.conftest import tiny_config

# A space of 3 x 3 = 9 settings: a sampler often proposes one a study already holds.
SPACE = dict(learning_rate="choice(0.003, 0.01, 0.03)",
             weight_decay="choice(0.0001, 0.001, 0.01)")


def bayes_config(size, rounds, **overrides):
  c = tiny_config(**{"train.num_steps": 10, "train.eval_every_steps": 10,
                     "checkpoint.every_steps": 10, **overrides})
  c.tune.strategy, c.tune.population_size, c.tune.bayes.rounds = "bayes", size, rounds
  c.tune.space.optim = dict(SPACE)
  return c


def _trials(workdir, states=(optuna.trial.TrialState.COMPLETE,)):
  study = optuna.load_study(study_name="jaxtrain",
                            storage=f"sqlite:///{workdir / 'tune' / 'optuna.db'}")
  return study.get_trials(deepcopy=False, states=states)


def _settings(trial):
  return tuple(sorted(trial.params.items()))


def test_a_warm_started_bayes_search_asks_no_trial_it_already_has(local_tmp_path):
  # Local on purpose: a Bayesian search's study is WORKDIR/tune/optuna.db (SQLite).
  tmp_path = local_tmp_path
  tune_loop.run(bayes_config(3, 1), tmp_path / "earlier")
  earlier = _trials(tmp_path / "earlier")
  assert len(earlier) == 3

  c = bayes_config(2, 2)
  c.tune.warm_start_from = str(tmp_path / "earlier")
  result = tune_loop.run(c, tmp_path / "warm")
  assert result["warm_start"] == {"from": str(tmp_path / "earlier"), "trials": 3}

  # The sampler's view (the study's COMPLETE trials, as TPE reads them) holds the
  # earlier trials with their settings and values, marked as the warm start's.
  complete = _trials(tmp_path / "warm")
  warm = [t for t in complete if t.user_attrs.get(warm_start.WARM_ATTR)]
  assert sorted((_settings(t), t.value) for t in warm) == sorted(
      (_settings(t), t.value) for t in earlier)
  # Every setting this search trained is new: none of the earlier ones, none twice.
  trained = [t for t in complete if not t.user_attrs.get(warm_start.WARM_ATTR)]
  assert len(trained) == 4 == result["num_members"]
  seen = [_settings(t) for t in earlier] + [_settings(t) for t in trained]
  assert len(set(seen)) == len(seen)
  duplicates = [t for t in _trials(tmp_path / "warm", (optuna.trial.TrialState.FAIL,))
                if t.user_attrs.get(strategies.DUPLICATE_ATTR)]
  # TPE proposed held settings (the argmax of its model) and was asked again.
  assert duplicates and all(_settings(t) in set(seen) for t in duplicates)
  # A restart of the finished search adds nothing twice.
  assert tune_loop.run(c, tmp_path / "warm")["warm_start"]["trials"] == 3
  assert len(_trials(tmp_path / "warm")) == 7


@pytest.mark.slow
def test_a_random_search_warm_starts_bayes_with_its_completed_members(local_tmp_path):
  # Local on purpose: a Bayesian search's study is WORKDIR/tune/optuna.db (SQLite).
  tmp_path = local_tmp_path
  earlier = bayes_config(4, 1)
  earlier.tune.strategy = "random"
  first = tune_loop.run(earlier, tmp_path / "random")
  c = bayes_config(2, 1)
  c.tune.warm_start_from = str(tmp_path / "random")
  tune_loop.run(c, tmp_path / "warm")
  warm = [t for t in _trials(tmp_path / "warm") if t.user_attrs.get(warm_start.WARM_ATTR)]
  # Optuna holds each completed member's settings (choices by index) and eval/accuracy.
  choices = {"optim.learning_rate": (0.003, 0.01, 0.03),
             "optim.weight_decay": (0.0001, 0.001, 0.01)}
  want = sorted((tuple(sorted((k, choices[k].index(v)) for k, v in r["settings"].items())),
                 r["eval"]["eval/accuracy"]) for r in first["members"])
  assert sorted((_settings(t), t.value) for t in warm) == want


def test_bad_warm_starts_are_one_line_errors(local_tmp_path):
  # Local on purpose: a Bayesian search's study is WORKDIR/tune/optuna.db (SQLite).
  tmp_path = local_tmp_path
  tune_loop.run(bayes_config(2, 1), tmp_path / "earlier")
  c = bayes_config(2, 1)
  c.tune.strategy = "random"
  c.tune.warm_start_from = str(tmp_path / "earlier")
  with pytest.raises(errors.UserError, match=r"^tune.warm_start_from seeds a Bayesian"):
    tune_loop.validate(c)
  c = bayes_config(2, 1)
  c.tune.metric = "eval/loss"
  c.tune.warm_start_from = str(tmp_path / "earlier")
  with pytest.raises(errors.UserError, match=r"ranked eval/accuracy, but this search ranks "
                                             r"eval/loss"):
    tune_loop.validate(c)
  c = bayes_config(2, 1)
  c.tune.warm_start_from = str(tmp_path)  # Not a tuning workdir.
  with pytest.raises(errors.UserError, match=r"is not a tuning workdir"):
    tune_loop.validate(c)
  pbt = tmp_path / "pbt"
  (pbt / "tune").mkdir(parents=True)
  snapshot = json.loads((tmp_path / "earlier" / "config.json").read_text())
  snapshot["tune"]["strategy"] = "pbt"
  (pbt / "config.json").write_text(json.dumps(snapshot))
  c.tune.warm_start_from = str(pbt)
  with pytest.raises(errors.UserError, match=r"tune.strategy='pbt' search.*init_from.workdir"):
    tune_loop.validate(c)
  c = bayes_config(2, 1)
  c.tune.warm_start_params = True
  with pytest.raises(errors.UserError, match=r"^tune.warm_start_params=True needs "
                                             r"tune.warm_start_from"):
    tune_loop.validate(c)
  c.tune.warm_start_from = str(tmp_path / "earlier")
  c.init_from.workdir = str(tmp_path / "earlier" / "best")
  with pytest.raises(errors.UserError, match=r"init_from.workdir=.* both choose"):
    tune_loop.validate(c)
  assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_warm_start_params_start_the_members_from_the_earlier_best_when_it_fits(local_tmp_path):
  # Local on purpose: a Bayesian search's study is WORKDIR/tune/optuna.db (SQLite).
  tmp_path = local_tmp_path
  tune_loop.run(bayes_config(2, 1), tmp_path / "earlier")
  c = bayes_config(2, 1)
  c.tune.execution = "map"  # Bitwise equal to single runs (test_member_equivalence.py).
  c.tune.warm_start_from, c.tune.warm_start_params = str(tmp_path / "earlier"), True
  result = tune_loop.run(c, tmp_path / "warm")
  record = json.loads((tmp_path / "warm" / "init_from.json").read_text())
  assert Path(record["workdir"]) == (tmp_path / "earlier" / "best").absolute()
  assert not [p for p in record["fresh"] if p.startswith("params/")]
  # A member is the single run that starts from the earlier best as that member.
  member = result["members"][0]
  single = phase_lib.member_config(c, member["settings"])
  single.init_from.workdir, single.tune.member = str(tmp_path / "earlier" / "best"), member["id"]
  train.run(single, tmp_path / "solo")
  chex.assert_trees_all_equal(
      jaxtrain.load(tmp_path / "warm", member=member["id"]).variables["params"],
      jaxtrain.load(tmp_path / "solo").variables["params"], strict=True)
  # The exported best member names where it started: training it again reproduces it.
  assert json.loads((tmp_path / "warm" / "best" / "config.json").read_text())[
      "init_from"]["workdir"] == str(tmp_path / "earlier" / "best")

  # A model that does not fit the earlier best starts fresh (said on stdout).
  other = copy.deepcopy(c)
  other.model.hidden_sizes = (32,)
  s = setup.build(other, data_pipeline="device", placement=False)
  assert warm_start.phase_config(other, member["settings"], s.info,
                                 s.train_data.sample_batch()) is other
  fits = warm_start.phase_config(c, member["settings"], s.info, s.train_data.sample_batch())
  assert fits.init_from.workdir == str(tmp_path / "earlier" / "best")
