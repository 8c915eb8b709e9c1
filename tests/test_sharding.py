"""The device mesh (config.mesh): placement rules, and sharded runs that match a
single-device run, on the 8 fake CPU devices of conftest.py.

Tolerance of the equivalence tests: per-step train losses and final eval
metrics within rel 1e-5 of the single-device run. Sharding changes only the
order of floating-point reductions (measured differences: ~1e-7 relative).
"""

import json

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxtrain import errors
from jaxtrain.config import base_config
from jaxtrain.core import optim
from jaxtrain.io import writers
from jaxtrain.jobs import evaluate, train
from jaxtrain.parallel import sharding
from tests.conftest import recipe_for, tiny_config

SHORT = {"train.num_steps": 20, "train.eval_every_steps": 20, "train.log_every_steps": 5,
         "checkpoint.every_steps": 10}
ALL8 = {"mesh.num_devices": 0}
# data x fsdp x model = 2 x 2 x 2: batches split 4 ways, every kernel sharded.
MIXED = {**ALL8, "mesh.data": 2, "mesh.fsdp": 2, "mesh.model": 2, "mesh.fsdp_min_size": 0,
         "mesh.rules": (".*Dense_0/kernel=None,model", ".*Dense_0/bias=model",
                        ".*Dense_1/kernel=model,None")}
TOL = 1e-5


def _mesh_config(**kw):
  m = base_config().mesh
  for k, v in kw.items():
    m[k] = v
  return m


def _losses(workdir):
  return [(r["step"], r.get("train/loss")) for r in writers.read_metrics(workdir)]


def _assert_same_run(workdir, result, ref_workdir, ref):
  got, want = _losses(workdir), _losses(ref_workdir)
  assert [s for s, _ in got] == [s for s, _ in want]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=TOL)
  for key, value in ref["final"].items():
    assert result["final"][key] == pytest.approx(value, rel=TOL), key
  assert result["train_step_compiles"] == 1


# --- Rules and sizes (no training).

def test_parse_spec_and_rules():
  assert sharding.parse_spec("fsdp,model", "x") == P("fsdp", "model")
  assert sharding.parse_spec("None, data+fsdp", "x") == P(None, ("data", "fsdp"))
  assert sharding.parse_spec("", "x") == P()
  (regex, spec, _), = sharding.parse_rules([".*Dense_0/kernel=fsdp,model"])
  assert regex.search("params/Dense_0/kernel") and spec == P("fsdp", "model")


@pytest.mark.parametrize("rules, message", [
    (("Dense[=fsdp",), "regex does not parse"),
    ((".*kernel=fsdq",), "unknown mesh axis 'fsdq'"),
    ((".*kernel",), "is not 'REGEX=SPEC'"),
])
def test_bad_rules_are_one_line_errors(rules, message):
  with pytest.raises(errors.UserError, match=message):
    sharding.check_config(_mesh_config(rules=rules))


def test_resolve_sizes():
  assert sharding.resolve_sizes(_mesh_config(), 8) == dict(data=8, fsdp=1, model=1, pop=1)
  assert sharding.resolve_sizes(_mesh_config(data=2, fsdp=-1), 8)["fsdp"] == 4
  with pytest.raises(errors.UserError, match="multiply to 3 but there are 8 devices"):
    sharding.resolve_sizes(_mesh_config(data=3), 8)
  with pytest.raises(errors.UserError, match="both -1"):
    sharding.check_config(_mesh_config(fsdp=-1))


def test_fsdp_default_shards_the_largest_divisible_dimension():
  sizes = dict(data=1, fsdp=4, model=1, pop=1)
  spec = lambda shape, min_size=0: sharding.leaf_spec("params/x", shape, [], sizes, min_size)
  assert spec((6, 64)) == P(None, "fsdp")
  assert spec((64, 10)) == P("fsdp", None)
  assert spec((10,)) == P()  # Nothing divides: replicated.
  assert spec((64, 64), min_size=10_000) == P()  # Below the threshold.


def test_state_shardings_mirror_params_in_optimizer_state():
  c = tiny_config(**MIXED, **{"optim.accumulate_steps": 2})
  r = recipe_for(c, (64,))
  tx = r.tx
  model_batch = {"inputs": np.zeros((32, 64), np.float32), "labels": np.zeros((32,), np.int32)}
  abstract = r.shapes(model_batch)
  placement = sharding.Placement.for_run(c, tx, abstract)
  assert dict(placement.mesh.shape) == dict(data=2, fsdp=2, model=2, pop=1)
  s = placement.state
  kernel = s.params["Dense_0"]["kernel"].spec
  assert kernel == P(None, "model")
  assert s.params["Dense_1"]["kernel"].spec == P("model", None)
  assert s.params["Dense_1"]["bias"].spec == P("fsdp")  # FSDP default (threshold 0).
  adam = [x for x in jax.tree.leaves(s.opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)][0]
  assert adam.mu["Dense_0"]["kernel"].spec == kernel and adam.nu["Dense_0"]["kernel"].spec == kernel
  assert s.opt_state.acc_grads["Dense_0"]["kernel"].spec == kernel  # MultiSteps accumulator.
  hyper = optim.get_hparams(s.opt_state)
  assert all(h.spec == P() for h in hyper.values())
  assert s.step.spec == P() and s.rng.spec == P()


# --- Sharded runs against the single-device run.

@pytest.fixture(scope="module")
def single(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single")
  return workdir, train.run(tiny_config(**SHORT), workdir)


def test_data_fsdp_model_sharded_run_matches_one_device(single, tmp_path):
  result = train.run(tiny_config(**SHORT, **MIXED), tmp_path)
  _assert_same_run(tmp_path, result, *single)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [
    {},  # Data parallel over all 8 (the default mesh).
    {"mesh.data": 1, "mesh.fsdp": 8, "mesh.fsdp_min_size": 0},
    {"mesh.data": 4, "mesh.model": 2,
     "mesh.rules": (".*Dense_0/kernel=None,model", ".*Dense_1/kernel=model")},
], ids=["data8", "fsdp8", "data4_model2"])
def test_each_mesh_matches_one_device(single, tmp_path, mesh):
  result = train.run(tiny_config(**SHORT, **ALL8, **mesh), tmp_path)
  _assert_same_run(tmp_path, result, *single)


@pytest.mark.parametrize("first, second", [(MIXED, {}), ({}, {**ALL8, "mesh.fsdp": -1,
                                                              "mesh.data": 1,
                                                              "mesh.fsdp_min_size": 0})],
                         ids=["8_to_1", "1_to_8"])
def test_checkpoint_restores_on_another_device_count(single, tmp_path, first, second):
  stopped = train.run(tiny_config(**SHORT, **first), tmp_path, stop_after_steps=10)
  assert stopped["status"] == "stopped"
  # --mode=eval restores any checkpoint onto one device.
  assert evaluate.run(tmp_path, step=10)["params_sha256"] == stopped["params_sha256"]
  result = train.run(tiny_config(**SHORT, **second), tmp_path)  # Resumes at step 10.
  assert result["status"] == "completed" and result["step"] == 20
  _assert_same_run(tmp_path, {**result, "train_step_compiles": 1}, *single)


def test_population_mesh_follows_mesh_pop():
  c = tiny_config(**ALL8)
  assert dict(sharding.population_mesh(c, 8).shape)["pop"] == 8  # Default: all devices.
  assert sharding.population_mesh(c, 6) is None  # 6 members do not divide over 8.
  c.mesh.data, c.mesh.pop = 2, -1
  with pytest.raises(errors.UserError, match="splits members, not their batches"):
    sharding.population_mesh(c, 8)
  c.mesh.data, c.mesh.num_devices = 1, 4
  assert dict(sharding.population_mesh(c, 8).shape)["pop"] == 4
  assert sharding.population_mesh(tiny_config(), 8) is None  # One device.


def test_rules_that_do_not_fit_a_parameter_are_one_line_errors():
  sizes = dict(data=1, fsdp=2, model=2, pop=1)
  rules = sharding.parse_rules(["bias=fsdp+model", "kernel=None,None,model"])
  with pytest.raises(errors.UserError, match=r"splits a dimension of size 10 .* over 4 devices"):
    sharding.leaf_spec("params/Dense_1/bias", (10,), rules, sizes, 0)
  with pytest.raises(errors.UserError, match="gives 3 dimensions but params/Dense_1/kernel"):
    sharding.leaf_spec("params/Dense_1/kernel", (64, 10), rules, sizes, 0)


# --- Populations whose members are sharded themselves (pop x fsdp, pop x model).

POP_SHARDED = {
    "pop2_fsdp2": {"mesh.num_devices": 4, "mesh.data": 1, "mesh.pop": 2, "mesh.fsdp": 2,
                   "mesh.fsdp_min_size": 0},
    "pop2_model2": {"mesh.num_devices": 4, "mesh.data": 1, "mesh.pop": 2, "mesh.model": 2,
                    "mesh.rules": (".*Dense_0/kernel=None,model", ".*Dense_1/kernel=model,None")},
}


def _pbt_config(**mesh):
  c = tiny_config(**{"train.num_steps": 40, "train.eval_every_steps": 10,
                     "checkpoint.every_steps": 20, **mesh})
  c.tune.strategy, c.tune.population_size = "pbt", 4
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)")
  return c


@pytest.mark.parametrize("name", [
    "pop2_fsdp2", pytest.param("pop2_model2", marks=pytest.mark.slow)])  # ~20 s each.
def test_population_of_sharded_members_matches_the_unsharded_population(tmp_path, name):
  from jaxtrain.tune import loop as tune_loop, phase as phase_lib
  from jaxtrain.jobs import setup
  c = _pbt_config(**POP_SHARDED[name])
  # Each member's kernels are split within the member, the member axis over pop.
  s = setup.build(c, data_pipeline="device", placement=False)
  phase = phase_lib.Phase(c, {"optim.learning_rate": 1e-2}, s.info, s.train_data,
                          s.eval_batches(), [], 4)
  pop, _ = phase.initial_state([{"id": i, "settings": {"optim.learning_rate": 1e-2}}
                                for i in range(4)])
  kernel = pop.params["Dense_0"]["kernel"]  # [members, 64, 64]
  assert kernel.sharding.spec[0] == "pop" and len(kernel.sharding.device_set) == 4
  assert kernel.addressable_shards[0].data.shape[0] == 2  # 2 members per pop slice...
  assert kernel.addressable_shards[0].data.size == kernel.size // 4  # ...each split in two.

  sharded = tune_loop.run(c, tmp_path / "sharded")
  plain = tune_loop.run(_pbt_config(**{"mesh.num_devices": 1}), tmp_path / "plain")
  assert (sharded["best_member"], sharded["best_settings"]) == \
      (plain["best_member"], plain["best_settings"])
  got = {m["id"]: m for m in sharded["members"]}
  for m in plain["members"]:
    assert got[m["id"]]["settings"] == m["settings"]
    for key, value in m["eval"].items():
      assert got[m["id"]]["eval"][key] == pytest.approx(value, rel=TOL), key
  lineage = [[json.loads(l) for l in (tmp_path / w / "tune" / "lineage.jsonl").read_text()
              .splitlines()] for w in ("sharded", "plain")]
  assert [(e["event"], e["member"], e["parent"], e["after"]) for e in lineage[0]] == \
      [(e["event"], e["member"], e["parent"], e["after"]) for e in lineage[1]]
