"""How members execute: vmap vs members one at a time (host loop), the select skip."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.io import writers
from jaxtrain.tune import execution as execution_lib
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain.tune import loop as tune_loop
from jaxtrain.tune import population as pop_lib
from tests.test_tune import population_setup, tune_config

# vmap batches the members' matmuls, the host loop runs them one by one: the
# results differ in float rounding only (measured: at most 8e-9 after 30 steps).
RTOL, ATOL = 1e-5, 1e-6


def _train(size, execution, active, steps=30):
  """A digits MLP population trained `steps` steps; returns (initial, final) populations."""
  c, data, model, tx, schedule, pop, acc, orders, data_keys = population_setup(
      jnp.geomspace(1e-3, 1e-2, size))
  initial = jax.device_get(pop)
  traces = []
  if execution == "map":
    step = execution_lib.HostLoop(model, tx, schedule, c.data.batch_size,
                                  on_trace=lambda: traces.append(1)).train
  else:
    fn = pop_lib.make_train_fn(model, tx, schedule, c.data.batch_size)
    step = jax.jit(lambda *a: (traces.append(1), fn(*a))[1], donate_argnums=(0, 1, 2))
  for _ in range(steps):
    pop, acc, orders = step(pop, acc, orders, active, data.arrays, data_keys)
  return initial, jax.device_get((pop, acc)), len(traces)


def _member(tree, i):
  """Member i's whole tree (compared with chex: structure, shapes and dtypes included)."""
  return jax.tree.map(lambda x: np.asarray(x)[i], tree)


def test_host_loop_equals_vmap_and_skips_inactive_members():
  """map (host loop) == vmap up to rounding; inactive members untouched; select skip exact."""
  active = jnp.asarray([True, False, True, True])
  initial, (vmap_pop, vmap_acc), _ = _train(4, "vmap", active)
  _, (map_pop, map_acc), map_traces = _train(4, "map", active)
  assert map_traces == 1  # One compiled member step for every member.
  for i in (0, 2, 3):
    chex.assert_trees_all_close(_member(vmap_pop, i), _member(map_pop, i), rtol=RTOL,
                                atol=ATOL, strict=True)
    assert float(map_acc["count"][i]) == 30
  for pop in (vmap_pop, map_pop):  # The inactive member is untouched, bitwise.
    chex.assert_trees_all_equal(_member(pop, 1), _member(initial, 1), strict=True)
  assert float(map_acc["count"][1]) == 0
  # active=None (every member active): the step without the member-wise select.
  # Its members are bitwise those the select keeps.
  _, (all_active, _), _ = _train(4, "vmap", None)
  for i in (0, 2, 3):
    chex.assert_trees_all_equal(_member(vmap_pop, i), _member(all_active, i), strict=True)


def test_auto_rule_picks_the_host_loop_for_convolutions_on_cpu():
  assert execution_lib.choose("auto", "cnn", "cpu") == "map"
  assert execution_lib.choose("auto", "mlp", "cpu") == "vmap"
  assert execution_lib.choose("auto", "cnn", "gpu") == "vmap"
  assert execution_lib.choose("vmap", "cnn", "cpu") == "vmap"


def test_pbt_with_map_execution_matches_vmap_and_compiles_once(tmp_path):
  results, records = {}, {}
  for execution in ("vmap", "map"):
    config = tune_config("pbt", **{"train.num_steps": 20})  # One exploit, at step 10.
    config.tune.execution = execution
    results[execution] = tune_loop.run(config, tmp_path / execution)
    records[execution] = writers.read_metrics(tmp_path / execution)
  vmap, hostloop = results["vmap"], results["map"]
  assert hostloop["train_step_compiles"] == {0: 1}  # No recompiles across exploits.
  assert hostloop["execution"] == {0: "map"} and vmap["execution"] == {0: "vmap"}
  assert {r["execution"] for r in records["map"]} == {"map"}
  # Same exploits, same winner, same scores (to float rounding).
  lineage = {e: [(x["event"], x["member"], x["parent"], x["step"]) for x in
                 lineage_lib.read(tmp_path / e / "tune" / "lineage.jsonl")] for e in results}
  assert lineage["map"] == lineage["vmap"]
  assert any(kind == "exploit" for kind, *_ in lineage["map"])
  assert hostloop["best_member"] == vmap["best_member"]
  assert hostloop["best_score"] == pytest.approx(vmap["best_score"], abs=1e-6)
  assert len(records["vmap"]) == len(records["map"])
  for a, b in zip(records["vmap"], records["map"]):
    np.testing.assert_allclose(a["eval/loss"], b["eval/loss"], rtol=RTOL)
