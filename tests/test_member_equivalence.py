"""The member-equivalence guarantee (docs/guide/tuning.md): member i of a population
equals a solo `jaxtrain.train.run` with its hyperparameters, seed and data order
(`tune.member=i`) until its first exploit, in every execution mode."""

import json

import chex
import jax
import numpy as np
import pytest

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.io import writers
from jaxtrain.jobs import checks, train
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain.tune import loop as tune_loop
from jaxtrain.tune import phase as phase_lib
from tests.conftest import tiny_config

# The stated tolerance (docs/guide/tuning.md). Members one at a time (map) run the solo
# step's program: bitwise equal. vmap (sharded or not) batches the members' matmuls,
# which round differently in float32: measured at most 1.2e-7 apart after 40 steps.
ATOL, RTOL = 1e-6, 1e-5


def search_config(strategy, execution, shard=False):
  c = tiny_config(**{"train.num_steps": 40, "train.eval_every_steps": 20,
                     "checkpoint.every_steps": 20})
  c.tune.strategy, c.tune.execution, c.tune.population_size = strategy, execution, 4
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)")
  if shard:  # The member axis over 2 of the 8 fake CPU devices (conftest).
    c.mesh.num_devices, c.mesh.data, c.mesh.pop = 2, 1, 2
  return c


@pytest.fixture(scope="module")
def solo_runs(tmp_path_factory):
  """solo(config, member) -> the workdir of a single run started as `member` (from its
  first settings in the lineage), trained once per (settings, member) for the module."""
  done = {}

  def solo(config, workdir, member):
    init = next(e for e in lineage_lib.read(workdir / "tune" / "lineage.jsonl")
                if e["event"] == "init" and e["member"] == member)
    key = (json.dumps(init["after"], sort_keys=True), member)
    if key not in done:
      single = phase_lib.member_config(config, init["after"])
      single.tune.member = member
      single.mesh.num_devices, single.mesh.pop = 1, 1
      done[key] = tmp_path_factory.mktemp("solo")
      train.run(single, done[key])
    return done[key]

  return solo


def _params(workdir, **kwargs):
  return jax.tree.map(np.asarray, jaxtrain.load(workdir, **kwargs).variables["params"])


def _first_exploit(workdir):
  """{member: step of its first exploit}."""
  out = {}
  for e in lineage_lib.read(workdir / "tune" / "lineage.jsonl"):
    if e["event"] == "exploit":
      out.setdefault(e["member"], e["step"])
  return out


@pytest.mark.parametrize("strategy,execution,shard", [
    ("random", "vmap", False),
    ("pbt", "map", False),
    pytest.param("random", "map", False, marks=pytest.mark.slow),
    pytest.param("pbt", "vmap", False, marks=pytest.mark.slow),
    pytest.param("pbt", "vmap", True, marks=pytest.mark.slow),
])
def test_member_equals_a_solo_run_until_its_first_exploit(strategy, execution, shard,
                                                         tmp_path, solo_runs):
  config = search_config(strategy, execution, shard)
  tune_loop.run(config, tmp_path)
  exploited = _first_exploit(tmp_path)
  if strategy == "pbt":  # One exploit event, at step 20: some members copied, some not.
    assert exploited and set(exploited.values()) == {20} and len(exploited) < 4
  else:
    assert not exploited
  records = writers.read_metrics(tmp_path)
  at_20 = next(r for r in records if r.get("phase_step") == 20)
  for member in range(4):
    solo = solo_runs(config, tmp_path, member)
    solo_20 = next(r for r in writers.read_metrics(solo) if r["step"] == 20 and "eval/loss" in r)
    # Before any exploit every member equals its solo run (scored on the same split).
    index = at_20["member_ids"].index(member)
    assert at_20["eval/loss"][index] == pytest.approx(solo_20["eval/loss"], rel=RTOL, abs=ATOL)
    assert at_20["eval/accuracy"][index] == pytest.approx(solo_20["eval/accuracy"], abs=1e-9)
    if member in exploited:  # It continued from its parent's state: not its solo run.
      continue
    member_params, solo_params = _params(tmp_path, member=member), _params(solo)
    if execution == "map":
      chex.assert_trees_all_equal(member_params, solo_params, strict=True)
    else:
      chex.assert_trees_all_close(member_params, solo_params, atol=ATOL, rtol=RTOL,
                                  strict=True)


def test_the_exported_best_member_reruns_as_a_solo_run(tmp_path):
  """best/config.json names its member (tune.member): training it again reproduces it."""
  config = search_config("random", "map")
  result = tune_loop.run(config, tmp_path / "search")
  exported = json.loads((tmp_path / "search" / "best" / "config.json").read_text())
  assert exported["tune"]["member"] == result["best_member"]
  train.run(config_lib.load_snapshot(tmp_path / "search" / "best"), tmp_path / "rerun")
  chex.assert_trees_all_equal(_params(tmp_path / "search" / "best"), _params(tmp_path / "rerun"),
                              strict=True)


def test_a_member_key_is_a_single_run_key():
  config = search_config("random", "vmap")
  config.tune.member = 2
  with pytest.raises(errors.UserError, match=r"^tune.member=2 is a single run's key"):
    tune_loop.validate(config)
  single = tiny_config()
  single.tune.member = -5
  with pytest.raises(errors.UserError, match=r"^tune.member=-5 must be -1"):
    train.run(single, "/nonexistent/never-written")
  folds = tiny_config(**{"eval.cross_validation.folds": 3})
  folds.tune.member = 1
  with pytest.raises(errors.UserError, match=r"eval.cross_validation trains one member per fold"):
    checks.validate(folds)
