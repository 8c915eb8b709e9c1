"""Model soups (tune.soup.top_k): the greedy average of the best members that share an
initialisation, checked against an independent mean and evaluation (numpy, optax)."""

import json

import chex
import jax
import numpy as np
import optax
import pytest

import jaxtrain
from jaxtrain import errors
from jaxtrain.data import pipeline
from jaxtrain.jobs import evaluate, train
from jaxtrain.tune import loop as tune_loop
from jaxtrain.tune import soup as soup_lib
from tests.conftest import tiny_config


def _independent_eval(run, params, model_state):
  """eval/loss and eval/accuracy of `params` on the run's eval split: the Flax module
  applied directly, the loss by optax (nothing of jaxtrain's eval path)."""
  raw, labels = run.data()
  x = pipeline.model_inputs(raw, run.config.data)
  logits = np.asarray(run.module.apply({"params": params, **model_state}, x, train=False))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return {"eval/loss": float(loss), "eval/accuracy": float(np.mean(logits.argmax(-1) == labels))}


def _mean(trees):
  return jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x, np.float64) for x in xs]),
                                          axis=0).astype(np.float32), *trees)


@pytest.fixture(scope="module")
def fine_tuned_search(tmp_path_factory):
  """A random search of 5 learning rates fine-tuning one pretrained run (init_from:
  every member starts from the same parameters, Wortsman et al.'s setting), ranked and
  souped on a validation slice of train; the test split scored apart."""
  root = tmp_path_factory.mktemp("soup")
  pretrain = tiny_config(**{"train.num_steps": 40})
  train.run(pretrain, root / "pretrained")
  c = tiny_config(**{"train.num_steps": 40, "train.eval_every_steps": 20,
                     "checkpoint.every_steps": 20, "data.train_split": "train[:80%]",
                     "data.eval_split": "train[80%:]", "data.test_split": "test"})
  c.init_from.workdir = str(root / "pretrained")
  c.tune.strategy, c.tune.population_size, c.tune.metric = "random", 5, "eval/loss"
  c.tune.space.optim = dict(learning_rate="loguniform(3e-3, 3e-2)")
  c.tune.soup.top_k = 4
  return c, root / "search", tune_loop.run(c, root / "search")


def test_greedy_soup_averages_exactly_the_chosen_members(fine_tuned_search):
  c, workdir, result = fine_tuned_search
  soup = result["soup"]
  ranked = [r["id"] for r in result["members"]]  # Best first (by eval/loss).
  # Every member shares the pretrained init: the candidates are the top 4, best first.
  assert soup["phase_init"] == "init_from"
  assert soup["candidates"] == ranked[:4] and soup["best_member"] == ranked[0]
  assert soup["members"][0] == ranked[0] and set(soup["members"]) <= set(soup["candidates"])

  # The greedy rule on the recorded steps: a candidate stays iff the loss does not rise.
  best_so_far = soup["steps"][0]["eval/loss"]
  for s in soup["steps"][1:]:
    assert s["added"] == (s["eval/loss"] <= best_so_far)
    best_so_far = min(best_so_far, s["eval/loss"]) if s["added"] else best_so_far
  assert [s["member"] for s in soup["steps"] if s["added"]] == soup["members"]

  # Each step's average, recomputed from the members' own checkpoints and evaluated
  # independently, scores what the soup recorded.
  members = {i: jaxtrain.load(workdir, member=i) for i in soup["candidates"]}
  loaded_soup = jaxtrain.load(workdir / "soup")
  chosen = [soup["candidates"][0]]
  for s in soup["steps"]:
    ids = chosen if s["member"] == chosen[0] else chosen + [s["member"]]
    params = _mean([members[i].variables["params"] for i in ids])
    mine = _independent_eval(loaded_soup, params, {})
    assert s["eval/loss"] == pytest.approx(mine["eval/loss"], rel=1e-5)
    if s["added"] and s["member"] != chosen[0]:
      chosen.append(s["member"])
  assert chosen == soup["members"]

  # soup/ holds the mean of exactly the chosen members; its recorded score is its
  # independent evaluation, and it is never worse than the best member's.
  expected = _mean([members[i].variables["params"] for i in soup["members"]])
  chex.assert_trees_all_close(jax.tree.map(np.asarray, loaded_soup.variables["params"]),
                              expected, rtol=1e-6, atol=1e-7)
  mine = _independent_eval(loaded_soup, expected, {})
  assert soup["score"] == pytest.approx(mine["eval/loss"], rel=1e-5)
  assert soup["eval"]["eval/accuracy"] == pytest.approx(mine["eval/accuracy"], abs=1e-9)
  assert soup["score"] <= soup["best_member_score"]
  best_alone = _independent_eval(loaded_soup, members[ranked[0]].variables["params"], {})
  assert soup["best_member_score"] == pytest.approx(best_alone["eval/loss"], rel=1e-5)

  # A single-run workdir: --mode=eval scores it as the search recorded; test split beside best's.
  assert evaluate.run(workdir / "soup")["eval/loss"] == soup["score"]
  assert set(soup["test"]) == set(result["best_test"])
  final = json.loads((workdir / "soup" / "final.json").read_text())
  assert final["soup"]["members"] == soup["members"]
  assert json.loads((workdir / "tune" / "result.json").read_text())["soup"] == soup


def test_candidates_share_the_best_members_initialisation():
  members = [{"id": 0, "score": 0.5, "origin": 0}, {"id": 1, "score": 0.9, "origin": 1},
             {"id": 2, "score": 0.8, "origin": 1},  # Copied member 1 (a PBT exploit).
             {"id": 3, "score": float("nan"), "origin": 1}, {"id": 4, "score": 0.7, "origin": 1},
             {"id": 5, "score": 0.95, "origin": 5}]
  assert soup_lib.candidates(members, best=1, top_k=5, shared_init=False) == [1, 2, 4]
  assert soup_lib.candidates(members, best=1, top_k=2, shared_init=False) == [1, 2]
  assert soup_lib.candidates(members, best=5, top_k=5, shared_init=False) == [5]
  # init_from copied every parameter: one initialisation for all (NaN still left out).
  assert soup_lib.candidates(members, best=5, top_k=4, shared_init=True) == [5, 1, 2, 4]


def test_fresh_inits_make_a_soup_of_the_best_member_alone(tmp_path):
  c = tiny_config(**{"train.num_steps": 20, "train.eval_every_steps": 20,
                     "checkpoint.every_steps": 20})
  c.tune.strategy, c.tune.population_size, c.tune.soup.top_k = "random", 3, 3
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)")
  result = tune_loop.run(c, tmp_path)
  assert result["soup"]["members"] == result["soup"]["candidates"] == [result["best_member"]]
  chex.assert_trees_all_equal(jaxtrain.load(tmp_path / "soup").variables["params"],
                              jaxtrain.load(tmp_path / "best").variables["params"])
  assert result["soup"]["score"] == result["best_score"] or result["soup"]["score"] == (
      pytest.approx(result["best_score"], abs=1e-6))


@pytest.mark.parametrize("key,value,message", [
    ("tune.soup.top_k", -1, r"^tune.soup.top_k=-1 must be >= 0"),
    ("model.lora_rank", 4, r"^tune.soup.top_k=3 averages members' parameters, but "
                           r"model.lora_rank"),
])
def test_bad_soup_settings_are_one_line_errors(key, value, message):
  c = tiny_config(**{key: value, "train.num_steps": 20, "train.eval_every_steps": 20,
                     "checkpoint.every_steps": 20})
  c.tune.strategy = "random"
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)")
  if key != "tune.soup.top_k":
    c.tune.soup.top_k = 3
  with pytest.raises(errors.UserError, match=message):
    tune_loop.validate(c)
