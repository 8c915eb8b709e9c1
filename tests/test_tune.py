"""The population tuner: engine invariants, strategies, records, exact resume."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.core import metrics, optim
from jaxtrain.data import pipeline
from jaxtrain.io import checkpoint, writers
from jaxtrain.jobs import evaluate, setup, train
from jaxtrain.parallel import sharding
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain.tune import loop as tune_run
from jaxtrain.tune import population as pop_lib
from jaxtrain.tune import space as space_lib
from jaxtrain.tune import strategies
from tests.conftest import tiny_config


def tune_config(strategy, size=4, **overrides):
  c = tiny_config(**{"train.num_steps": 40, "train.eval_every_steps": 10,
                     "checkpoint.every_steps": 20, **overrides})
  c.tune.strategy = strategy
  c.tune.population_size = size
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)",
                            weight_decay="loguniform(1e-6, 1e-3)")
  c.tune.halving.min_steps = 10
  c.tune.halving.eta = 2
  c.tune.bayes.rounds = 2
  return c


# --- The engine, directly. ---


def population_setup(learning_rates):
  """A fresh digits MLP population, one member per learning rate (member i: init key
  i, data key 100 + i); returns (config, data, model, tx, schedule, pop, acc, orders,
  data_keys)."""
  size = len(learning_rates)
  c = tiny_config()
  data, info = pipeline.create_train_data(c.data, seed=0)
  r = setup.recipe(c, info)
  model, tx, schedule = r.model, r.tx, r.schedule
  rngs = jnp.stack([jax.random.PRNGKey(i) for i in range(size)])
  pop = pop_lib.create(model, tx, data.sample_batch(), r.hparams, rngs)
  pop = pop_lib.set_dynamic(
      pop, {"optim.learning_rate": jnp.asarray(learning_rates, jnp.float32)})
  data_keys = jnp.stack([jax.random.PRNGKey(100 + i) for i in range(size)])
  acc = metrics.new_sums((size,))
  orders = pipeline.new_epoch_order(data.num_examples, (size,))
  return c, data, model, tx, schedule, pop, acc, orders, data_keys


def _engine(size, execution="vmap", learning_rates=None, shard=False):
  """Trains a digits MLP population for 60 steps; returns the final population."""
  c, data, model, tx, schedule, pop, acc, orders, data_keys = population_setup(
      learning_rates or [1e-3 * (i + 1) for i in range(size)])
  active = jnp.ones((size,), bool)
  if execution == "map":  # Members one at a time: one jitted member step, host loop.
    from jaxtrain.tune import execution as execution_lib
    fn = execution_lib.HostLoop(model, tx, schedule, c.data.batch_size).train
  else:
    fn = pop_lib.make_train_fn(model, tx, schedule, c.data.batch_size, execution)
  if shard:
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:size]), ("pop",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("pop"))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    pop, acc, orders, active, data_keys = jax.device_put(
        (pop, acc, orders, active, data_keys), spec)
    # As jaxtrain's loops do: one execution at a time on several CPU devices (a queue of
    # them deadlocks XLA's CPU collectives under load; sharding.bounded_dispatch).
    step = sharding.bounded_dispatch(jax.jit(fn, in_shardings=(spec, spec, spec, spec, rep, spec),
                                             out_shardings=(spec, spec, spec)), mesh)
  else:
    step = fn if execution == "map" else jax.jit(fn)
  for _ in range(60):  # Past the first epoch (44 steps of 32).
    pop, acc, orders = step(pop, acc, orders, active, data.arrays, data_keys)
  return jax.device_get(pop)


def _member_params(pop, i):
  """Member i's parameter tree (whole: compared with chex, structure included)."""
  return jax.tree.map(lambda x: np.asarray(x[i]), pop.params)


def test_a_nan_member_never_touches_the_others():
  healthy = _engine(4, learning_rates=[1e-3, 2e-3, 3e-3, 4e-3])
  poisoned = _engine(4, learning_rates=[1e-3, 2e-3, float("nan"), 4e-3])
  assert not np.all(np.isfinite(np.concatenate([p.ravel() for p in
                                                jax.tree.leaves(_member_params(poisoned, 2))])))
  for i in (0, 1, 3):
    chex.assert_trees_all_equal(_member_params(healthy, i), _member_params(poisoned, i),
                                strict=True)


def test_members_are_independent_of_population_size():
  pair = _engine(2, learning_rates=[1e-3, 2e-3])
  four = _engine(4, learning_rates=[1e-3, 2e-3, 3e-3, 4e-3])
  for i in (0, 1):
    chex.assert_trees_all_close(_member_params(pair, i), _member_params(four, i), rtol=1e-5,
                                atol=1e-6, strict=True)


def test_map_execution_matches_vmap():
  a = _engine(4, execution="vmap")
  b = _engine(4, execution="map")
  chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6, strict=True)


def test_population_sharded_over_8_devices_matches_one_device():
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  single = _engine(8)
  sharded = _engine(8, shard=True)
  chex.assert_trees_all_close(jax.device_get(single.params), jax.device_get(sharded.params),
                              rtol=1e-5, atol=1e-6, strict=True)


def test_exploit_copies_whole_member_state_and_explores():
  pop = _engine(4)
  dims = [space_lib.parse_dimension("optim.learning_rate", "loguniform(1e-4, 1.0)")]
  scores = np.asarray([0.9, 0.1, 0.5, 0.7], np.float32)
  lr_old = np.asarray(optim.get_hparams(pop.opt_state)["learning_rate"])
  event = pop_lib.pbt_event(scores, {"optim.learning_rate": lr_old}, np.random.default_rng(0),
                            dims, method="truncation", fraction=0.25, factors=(0.5, 2.0),
                            resample_probability=0.0)
  assert event["parents"].tolist() == [0, 0, 2, 3]  # Worst (1) copies the best (0).
  assert event["exploited"].tolist() == [False, True, False, False]
  new = jax.jit(pop_lib.apply_exploit)(pop, event["parents"], event["exploited"],
                                       event["values"], event["rngs"])
  lr_new = np.asarray(optim.get_hparams(new.opt_state)["learning_rate"])
  assert lr_new[1] in (np.float32(lr_old[0] * 0.5), np.float32(lr_old[0] * 2.0))
  np.testing.assert_array_equal(lr_new, event["values"]["optim.learning_rate"])
  np.testing.assert_array_equal(lr_new[[0, 2, 3]], lr_old[[0, 2, 3]])
  member = lambda tree, i: jax.tree.map(lambda x: np.asarray(x)[i], tree)
  chex.assert_trees_all_equal(member(new.params, 1), member(pop.params, 0), strict=True)
  chex.assert_trees_all_equal(member(new.opt_state.inner_state, 1),
                              member(pop.opt_state.inner_state, 0), strict=True)
  for i in (0, 2, 3):  # The others are untouched, RNG streams included.
    chex.assert_trees_all_equal(member(new, i), member(pop, i), strict=True)
  assert not np.array_equal(np.asarray(new.rng[1]), np.asarray(pop.rng[0]))
  np.testing.assert_array_equal(np.asarray(new.rng[1]), event["rngs"][1])


def test_tournament_copies_only_from_better_members():
  scores = np.asarray([0.1, 0.2, 0.3, 0.4, float("nan")], np.float32)
  parents, exploited = pop_lib.exploit(scores, np.random.default_rng(3), method="tournament",
                                       fraction=0.25)
  parents = np.asarray(parents)
  clean = np.nan_to_num(np.asarray(scores), nan=-np.inf)
  for i, p in enumerate(parents):
    assert p == i or clean[p] > clean[i]
  assert parents[4] != 4  # NaN loses to anyone.


# --- Whole searches through the tuning loop. ---


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pbt")
  return workdir, tune_run.run(tune_config("pbt"), workdir)


def test_pbt_runs_compiles_once_and_records_lineage(pbt_run):
  workdir, result = pbt_run
  assert result["status"] == "completed"
  assert result["train_step_compiles"] == {0: 1}
  assert result["num_members"] == 4 and result["member_steps"] == 4 * 40
  events = lineage_lib.read(workdir / "tune" / "lineage.jsonl")
  kinds = [e["event"] for e in events]
  assert kinds.count("init") == 4 and kinds.count("final") == 4
  exploits = [e for e in events if e["event"] == "exploit"]
  assert exploits, "PBT made no exploit in 3 ready intervals"
  for e in exploits:
    assert e["parent"] != e["member"] and e["parent_score"] > e["score"]
    assert set(e["before"]) == set(e["after"]) == {"optim.learning_rate", "optim.weight_decay"}
  assert result["best_score"] > 0.8
  records = writers.read_metrics(workdir)
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  assert len(records[0]["eval/accuracy"]) == 4


def test_best_member_is_exported_as_a_normal_run(pbt_run):
  from jaxtrain.jobs import evaluate
  workdir, result = pbt_run
  best = workdir / "best"
  final = json.loads((best / "final.json").read_text())
  assert final["member"] == result["best_member"]
  evaluated = evaluate.run(best)
  assert evaluated["eval/accuracy"] == pytest.approx(result["best_score"], abs=1e-9)
  assert evaluated["params_sha256"] == final["params_sha256"]
  config = json.loads((best / "config.json").read_text())
  assert config["optim"]["learning_rate"] == pytest.approx(
      result["best_settings"]["optim.learning_rate"])
  schedule = json.loads((best / "schedule.json").read_text())
  assert schedule[0]["step"] == 0 and schedule[-1]["settings"] == {
      k: pytest.approx(v) for k, v in result["best_settings"].items()}
  # Rerunning train.run on the export continues it like any run: nothing to do.
  again = train.run(config_lib.load_snapshot(best), best)
  assert again["params_sha256"] == final["params_sha256"]


def test_pbt_resume_is_bitwise_identical(pbt_run, tmp_path):
  workdir, result = pbt_run
  first = tune_run.run(tune_config("pbt"), tmp_path, stop_after_steps=20)
  assert first["status"] == "stopped"
  second = tune_run.run(tune_config("pbt"), tmp_path)
  assert second["status"] == "completed"
  a = json.loads((workdir / "best" / "final.json").read_text())
  b = json.loads((tmp_path / "best" / "final.json").read_text())
  assert a["params_sha256"] == b["params_sha256"]
  assert ((workdir / "tune" / "lineage.jsonl").read_text()
          == (tmp_path / "tune" / "lineage.jsonl").read_text())
  strip = lambda rs: [{k: v for k, v in r.items() if "per_sec" not in k and k != "wall_time"}
                      for r in rs]
  assert strip(writers.read_metrics(workdir)) == strip(writers.read_metrics(tmp_path))


def test_halving_culls_refills_without_recompiling(tmp_path):
  result = tune_run.run(tune_config("halving", size=4), tmp_path)
  assert result["train_step_compiles"] == {0: 1}
  events = lineage_lib.read(tmp_path / "tune" / "lineage.jsonl")
  culls = [e for e in events if e["event"] == "cull"]
  refills = [e for e in events if e["event"] == "refill"]
  assert culls and len(culls) == len(refills)
  assert result["num_members"] == 4 + len(refills)
  assert result["member_steps"] == 4 * 40  # Same budget: culled slots are reused.


def test_random_with_per_member_early_stopping_refills(tmp_path):
  config = tune_config("random", size=4, **{"train.num_steps": 60})
  config.tune.early_stopping.patience = 1
  config.tune.early_stopping.min_delta = 0.05
  result = tune_run.run(config, tmp_path)
  events = lineage_lib.read(tmp_path / "tune" / "lineage.jsonl")
  assert [e for e in events if e["event"] == "stop"]
  assert result["num_members"] > 4
  assert result["train_step_compiles"] == {0: 1}


def test_grid_with_a_static_dimension_makes_one_program_per_group(tmp_path):
  config = tune_config("grid")
  config.tune.grid_points = 2
  config.tune.space.optim = dict(learning_rate="loguniform(1e-3, 1e-2)")
  config.tune.space.model = dict(hidden_sizes="choice((16,), (32,))")
  result = tune_run.run(config, tmp_path)
  assert result["num_members"] == 4
  assert result["train_step_compiles"] == {0: 1, 1: 1}
  widths = {tuple(r["settings"]["model.hidden_sizes"]) for r in result["members"]}
  assert widths == {(16,), (32,)}


def test_bayes_persists_the_optuna_study(local_tmp_path):
  tmp_path = local_tmp_path  # Local on purpose: the study is WORKDIR/tune/optuna.db (SQLite).
  import optuna
  result = tune_run.run(tune_config("bayes"), tmp_path)
  assert result["num_members"] == 8
  study = optuna.load_study(study_name="jaxtrain",
                            storage=f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}")
  complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len(complete) == 8
  assert study.best_value == pytest.approx(result["best_score"])
  again = tune_run.run(tune_config("bayes"), tmp_path)  # Finished: nothing new asked.
  assert len(optuna.load_study(study_name="jaxtrain", storage=study._storage).trials) == 8
  assert again["best_score"] == result["best_score"]


@pytest.mark.parametrize("space,message", [
    ({"optim": {"learning_rat": "loguniform(1e-4, 1e-1)"}}, "did you mean 'optim.learning_rate'"),
    ({"optim": {"learning_rate": "uniform(0.1, 0.01)"}}, "the range is empty"),
    ({"optim": {"learning_rate": "loguniform(0.0, 0.1)"}}, "loguniform needs low > 0"),
    ({"optim": {"learning_rate": "lognormal(0.1, 1)"}}, "not a search dimension"),
    ({"train": {"num_steps": "int(10, 20)"}}, "not a config key that can be searched"),
    ({"seed": "int(0, 9)"}, "not a config key that can be searched"),
    ({"model": {"hidden_sizes": "uniform(1, 2)"}}, "use choice"),
    ({"model": {"dropout_rate": "uniform(0.0, 1.5)"}}, "model.dropout_rate"),
])
def test_bad_search_spaces_are_one_line_errors(space, message):
  config = tune_config("random")
  config.tune.space = space
  with pytest.raises(errors.UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    tune_run.validate(config)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["sgd", "adam", "momentum"])
def test_a_searched_optimizer_setting_the_optimizer_lacks_is_one_line(name):
  config = tune_config("random")
  config.optim.name = name
  config.tune.space = {"optim": {"momentum": "uniform(0.0, 0.9)"}}
  if name == "momentum":  # optax.trace holds a momentum; sgd and adam do not.
    tune_run.validate(config)
    return
  with pytest.raises(errors.UserError, match=f"optim.name='{name}' does not have") as e:
    tune_run.validate(config)
  assert "\n" not in str(e.value) and "tune.space.optim.momentum" in str(e.value)


def test_population_size_zero_is_refused():
  with pytest.raises(errors.UserError, match="tune.population_size=0"):
    tune_run.validate(tune_config("random", size=0))


def test_schedule_follows_the_ancestry():
  events = [
      {"event": "init", "member": 0, "step": 0, "after": {"lr": 1.0, "w": 1}},
      {"event": "init", "member": 1, "step": 0, "after": {"lr": 2.0, "w": 2}},
      {"event": "exploit", "member": 1, "parent": 0, "step": 10, "after": {"lr": 0.5, "w": 1}},
      {"event": "exploit", "member": 0, "parent": 1, "step": 20, "after": {"lr": 0.25, "w": 1}},
  ]
  assert lineage_lib.schedule_of(events, 0) == [
      {"step": 0, "settings": {"lr": 1.0, "w": 1}},
      {"step": 10, "settings": {"lr": 0.5, "w": 1}},
      {"step": 20, "settings": {"lr": 0.25, "w": 1}},
  ]


@pytest.mark.slow
def test_bayes_resume_mid_round_is_bitwise_identical(local_tmp_path):
  tmp_path = local_tmp_path  # Local on purpose: the study is WORKDIR/tune/optuna.db (SQLite).
  full = tune_run.run(tune_config("bayes"), tmp_path / "full")
  stopped = tune_run.run(tune_config("bayes"), tmp_path / "resumed", stop_after_steps=60)
  assert stopped["status"] == "stopped"  # Inside round 2 (steps 40..80).
  resumed = tune_run.run(tune_config("bayes"), tmp_path / "resumed")
  assert resumed["best_settings"] == full["best_settings"]
  a = json.loads((tmp_path / "full" / "best" / "final.json").read_text())
  b = json.loads((tmp_path / "resumed" / "best" / "final.json").read_text())
  assert a["params_sha256"] == b["params_sha256"]


def test_sharded_pbt_search_matches_unsharded(tmp_path):
  """8 members over 8 devices through exploits (sharding survives the gathers)."""
  results = {}
  for shard in (True, False):
    config = tune_config("pbt", size=8)
    if shard:  # The member axis on the mesh's 'pop' axis over all 8 fake devices.
      config.mesh.num_devices, config.mesh.data, config.mesh.pop = 0, 1, -1
    results[shard] = tune_run.run(config, tmp_path / str(shard))
  assert results[True]["best_settings"] == results[False]["best_settings"]
  assert results[True]["best_score"] == pytest.approx(results[False]["best_score"], abs=1e-6)


def test_explore_keeps_choice_dimensions_on_their_choices():
  dims = [space_lib.parse_dimension("optim.momentum", "choice(0.5, 0.9, 0.99)")]
  values = {"optim.momentum": np.asarray([0.9, 0.99, 0.5, 0.9], np.float32)}
  out = pop_lib.explore(values, np.ones((4,), bool), np.random.default_rng(0), dims,
                        factors=(0.8, 1.25), resample_probability=0.0)
  allowed = np.asarray([0.5, 0.9, 0.99], np.float32)
  for v in np.asarray(out["optim.momentum"]):
    assert np.any(v == allowed), v


def test_explore_moves_a_choice_to_a_neighbouring_choice():
  """As Ray Tune's PBT: one index up or down (multiplying 0.5 by 1.25 and snapping
  back never left 0.5)."""
  dims = [space_lib.parse_dimension("optim.momentum", "choice(0.5, 0.9, 0.99)")]
  start = np.full((64,), 0.5, np.float32)
  out = np.asarray(pop_lib.explore({"optim.momentum": start}, np.ones((64,), bool),
                                   np.random.default_rng(0), dims, factors=(0.8, 1.25),
                                   resample_probability=0.0)["optim.momentum"])
  assert set(out.tolist()) == {np.float32(0.5), np.float32(0.9)}  # Clipped at the end, or up one.
  middle = np.asarray(pop_lib.explore({"optim.momentum": np.full((64,), 0.9, np.float32)},
                                      np.ones((64,), bool), np.random.default_rng(1), dims,
                                      factors=(0.8, 1.25), resample_probability=0.0)
                      ["optim.momentum"])
  assert set(middle.tolist()) == {np.float32(0.5), np.float32(0.99)}


def test_truncation_never_exploits_among_equal_scores():
  parents, exploited = pop_lib.exploit(np.full((8,), 0.5), np.random.default_rng(0),
                                       method="truncation", fraction=0.25)
  assert not np.any(np.asarray(exploited))
  assert np.array_equal(np.asarray(parents), np.arange(8))
  # Strictly better parents are still copied.
  scores = np.asarray([0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9])
  parents, exploited = pop_lib.exploit(scores, np.random.default_rng(0), method="truncation",
                                       fraction=0.25)
  assert np.asarray(exploited)[0] and np.asarray(parents)[0] != 0


@pytest.mark.slow
def test_sigterm_stops_a_tuning_run_with_a_checkpoint(tmp_path):
  """SIGTERM at the first evaluation: exit 75, then the rerun finishes bitwise equal."""
  import signal
  import subprocess
  import sys
  import time
  repo = __import__("pathlib").Path(__file__).resolve().parent.parent
  args = ["--config=configs/digits_pbt.py", "--config.tune.population_size=4",
          "--config.train.num_steps=1200", "--config.checkpoint.every_steps=600",
          "--config.model.hidden_sizes=(32,)"]
  cmd = [sys.executable, "-m", "jaxtrain.main", f"--workdir={tmp_path / 'run'}", *args]
  proc = subprocess.Popen(cmd, cwd=repo, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and not (metrics.exists() and metrics.read_bytes()):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err
  assert err.strip().splitlines()[-1].startswith("preempted: checkpoint saved")
  assert subprocess.run(cmd, cwd=repo, capture_output=True, timeout=300).returncode == 0
  full = subprocess.run([sys.executable, "-m", "jaxtrain.main",
                         f"--workdir={tmp_path / 'full'}", *args],
                        cwd=repo, capture_output=True, timeout=300)
  assert full.returncode == 0
  a = json.loads((tmp_path / "run" / "best" / "final.json").read_text())
  b = json.loads((tmp_path / "full" / "best" / "final.json").read_text())
  assert a["params_sha256"] == b["params_sha256"]


def test_members_start_from_init_from_and_a_misfit_is_one_line(tmp_path, compiles):
  """init_from in a tuning run: every member starts from the checkpoint (a member at
  a learning rate of 1e-9 keeps the pretrained accuracy; without init_from it is at
  chance), and a planned model that does not fit fails before anything compiles."""
  pre = train.run(tiny_config(), tmp_path / "pre")["final"]["eval/accuracy"]
  assert pre > 0.9

  def search(workdir, init_from):
    config = tune_config("grid", size=2, **{"train.num_steps": 10, "train.eval_every_steps": 10,
                                            "checkpoint.every_steps": 10})
    config.tune.space.optim = dict(learning_rate="choice(1e-9, 1e-2)")
    config.init_from.workdir = init_from
    result = tune_run.run(config, tmp_path / workdir)
    return {r["settings"]["optim.learning_rate"]: r["score"] for r in result["members"]}

  started = search("tuned", str(tmp_path / "pre"))
  assert started[1e-9] == pytest.approx(pre, abs=1e-9)  # Unchanged by 10 steps at 1e-9.
  assert started[1e-2] > 0.85
  record = json.loads((tmp_path / "tuned" / "init_from.json").read_text())
  assert record["fresh"] == [] and "params/Dense_0/kernel" in record["copied"]
  assert search("fresh", "")[1e-9] < 0.3

  config = tune_config("grid", size=2)
  config.tune.space.optim = dict(learning_rate="choice(1e-3, 1e-2)")
  config.tune.space.model = dict(hidden_sizes="choice((64,), (32,))")
  config.init_from.workdir = str(tmp_path / "pre")
  compiles.clear()  # Only what the misfit search compiles counts.
  with pytest.raises(errors.UserError, match=r"does not fit this model \(3 problems: "
                     r"params/Dense_0/bias shape differs: float32\[64\] in the checkpoint, "
                     r"float32\[32\] here"):
    tune_run.run(config, tmp_path / "misfit")
  assert not compiles, "the error came after something was compiled"


def test_members_keep_and_evaluate_their_ema_like_single_runs(tmp_path):
  """train.ema_decay in a tuning run: each member's average is evaluated (eval/ema_*
  per member in metrics.jsonl), survives exploit copies and resume (part of the member
  state), and the exported best reports it again under --mode=eval."""
  from jaxtrain.jobs import evaluate
  config = tune_config("pbt", size=4, **{"train.ema_decay": 0.9})
  config.tune.metric = "eval/ema_loss"  # Members ranked by their averages.
  result = tune_run.run(config, tmp_path / "whole")
  records = [r for r in writers.read_metrics(tmp_path / "whole") if "eval/ema_accuracy" in r]
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  assert all(len(r["eval/ema_loss"]) == 4 for r in records)
  assert result["best_score"] == min(min(r["eval/ema_loss"]) for r in records)
  assert records[-1]["eval/ema_loss"] != records[-1]["eval/loss"]
  best = tmp_path / "whole" / "best"
  final = json.loads((best / "final.json").read_text())
  evaluated = evaluate.run(best)
  for key in ("eval/accuracy", "eval/ema_accuracy", "eval/ema_loss"):
    assert evaluated[key] == pytest.approx(final["final"][key], rel=1e-5), key
  tune_run.run(config, tmp_path / "split", stop_after_steps=20)
  tune_run.run(config, tmp_path / "split")
  split = json.loads((tmp_path / "split" / "best" / "final.json").read_text())
  assert split["params_sha256"] == final["params_sha256"]
  assert split["final"] == final["final"]  # eval/ema_* included.


def test_lora_search_over_ranks_from_a_pretrained_run(tmp_path):
  """LoRA in a tuning run: both model.lora_rank values train in ONE compiled program
  (padded to rank 4), members train adapters only on top of the init_from weights
  (left bitwise unchanged), and the best member is exported at its own rank, with its
  adapters merged into a plain run."""
  from jaxtrain.core import lora
  from jaxtrain.jobs import evaluate
  train.run(tiny_config(), tmp_path / "pre")
  config = tune_config("grid", size=2, **{"train.num_steps": 20, "train.eval_every_steps": 10,
                                          "checkpoint.every_steps": 10})
  config.tune.grid_points = 2
  config.tune.space.optim = dict(learning_rate="loguniform(1e-3, 1e-2)")
  config.tune.space.model = dict(lora_rank="choice(2, 4)")
  config.model.lora_alpha = 4.0
  config.init_from.workdir = str(tmp_path / "pre")
  result = tune_run.run(config, tmp_path / "tune")
  assert result["train_step_compiles"] == {0: 1}
  assert {r["settings"]["model.lora_rank"] for r in result["members"]} == {2, 4}
  best = tmp_path / "tune" / "best"
  final = json.loads((best / "final.json").read_text())
  rank = final["settings"]["model.lora_rank"]
  assert final["num_params"] == rank * (64 + 64) + rank * (64 + 10)  # A [d_in, r] + B [r, d_out].
  # The base weights in the best member are the pretrained ones, bitwise.
  def latest_state(workdir):  # The saved arrays as numpy, without a restore target.
    import orbax.checkpoint as ocp
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    item = workdir / "checkpoints" / str(steps[-1]) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(item).item_metadata
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    return checkpointer.restore(item, args=ocp.args.PyTreeRestore(
        restore_args=as_numpy))["train_state"]
  base = latest_state(best)["model_state"][lora.BASE]
  pretrained = latest_state(tmp_path / "pre")["params"]
  for key in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(base[key]["kernel"], pretrained[key]["kernel"])
  merged = evaluate.run(best / "merged")
  assert merged["eval/accuracy"] == pytest.approx(final["final"]["eval/accuracy"], abs=1e-6)
  assert evaluate.run(best)["eval/accuracy"] == pytest.approx(merged["eval/accuracy"], abs=1e-6)


# --- Against the published algorithms and Optuna's contract. ---


def test_bayes_minimises_a_lower_is_better_metric(local_tmp_path):
  """Optuna is told eval/loss itself in a minimising study: its best trial is the
  member with the lowest loss (it was the highest before: the score was negated twice)."""
  tmp_path = local_tmp_path  # Local on purpose: the study is WORKDIR/tune/optuna.db (SQLite).
  import optuna
  result = tune_run.run(tune_config("bayes", **{"tune.metric": "eval/loss"}), tmp_path)
  study = optuna.load_study(study_name="jaxtrain",
                            storage=f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}")
  assert study.direction == optuna.study.StudyDirection.MINIMIZE
  told = {t.number: t.value for t in study.trials
          if t.state == optuna.trial.TrialState.COMPLETE}
  losses = {r["trial"]: r["eval"]["eval/loss"] for r in result["members"]}
  assert told == losses and len(told) == 8
  assert study.best_trial.value == min(losses.values()) == result["best_score"]


def test_halving_promotes_the_top_n_over_eta_of_members_arriving_together():
  """Li et al.: of n members reaching a rung together, floor(n / eta) (at least 1)
  go on, the best by score, whatever the slots they sit in."""
  rng = np.random.default_rng(0)
  for _ in range(300):
    n, eta = int(rng.integers(1, 20)), int(rng.integers(2, 5))
    ids, scores = rng.permutation(1000)[:n], rng.normal(size=n)
    want = {int(ids[j]) for j in np.argsort(-scores)[:max(1, n // eta)]}
    for _ in range(3):  # Any slot order gives the same promotions.
      order = rng.permutation(n)
      arrivals = [(int(ids[j]), float(scores[j])) for j in order]
      assert strategies.promotions([], arrivals, eta) == want
  # Earlier arrivals at the rung count (ASHA); a non-finite score never goes on.
  assert strategies.promotions([0.9, 0.1], [(5, 0.5), (6, 0.95)], eta=2) == {6}
  assert strategies.promotions([], [(0, float("nan")), (1, None)], eta=2) == set()


def test_halving_keeps_16_over_3_members_of_a_real_rung(tmp_path):
  config = tune_config("halving", size=16, **{"train.num_steps": 20, "train.eval_every_steps": 10,
                                              "checkpoint.every_steps": 20})
  config.tune.halving.eta, config.tune.halving.min_steps = 3, 10
  tune_run.run(config, tmp_path)
  events = lineage_lib.read(tmp_path / "tune" / "lineage.jsonl")
  culls = [e for e in events if e["event"] == "cull" and e["step"] == 10]
  kept = 16 - len(culls)
  assert kept == 16 // 3
  scores = {e["member"]: e["score"] for e in events if e["event"] == "cull"}
  records = writers.read_metrics(tmp_path)
  at_rung = dict(zip(records[0]["member_ids"], records[0]["eval/accuracy"]))
  survivors = sorted(set(at_rung) - set(scores), key=lambda m: -at_rung[m])
  assert min(at_rung[m] for m in survivors) >= max(at_rung[m] for m in scores)


class _Lineage:
  def __init__(self):
    self.events = []

  def write(self, **event):
    self.events.append(event)


def test_an_exploited_member_takes_its_parents_early_stopping_state():
  c, _, _, _, _, pop, acc, _, _ = population_setup([1e-3, 1e-2])
  c.tune.strategy, c.tune.early_stopping.patience = "pbt", 2
  loop = {"members": [], "next_member_id": 0, "step": 10, "phase": 0, "event": 0}
  members = [strategies.new_member(loop, {"optim.learning_rate": lr}, step=0)
             for lr in (1e-3, 1e-2)]
  members[0].update(score=0.5, best_score=0.9, evals_since_best=0)  # Worse than its best.
  members[1].update(score=0.8, best_score=0.3, evals_since_best=1)  # A new best.
  loop["members"] = members

  class Phase:  # Member 0 copies member 1.
    dynamic_keys = ["optim.learning_rate"]

    def exploit(self, pop, scores, event, members):
      values = {"optim.learning_rate": np.asarray([1e-2, 1e-2], np.float32)}
      return pop, np.array([1, 1]), np.array([True, False]), values

  dims = [space_lib.parse_dimension("optim.learning_rate", "loguniform(1e-4, 1e-1)")]
  strategies.act(c, Phase(), pop, acc, loop, [0.5, 0.8], _Lineage(), dims, dims)
  assert (members[1]["best_score"], members[1]["evals_since_best"]) == (0.8, 0)
  assert (members[0]["best_score"], members[0]["evals_since_best"]) == (0.8, 0)
  assert members[0]["active"]


class _Killed(Exception):
  pass


def test_a_kill_between_telling_optuna_and_the_checkpoint_resumes(local_tmp_path, monkeypatch):
  """A run killed at the save that ends round 1 resumes to the uninterrupted run's
  result: Optuna is told a round only after its checkpoint, a restart tells what the
  checkpoint finished, and the step-20 checkpoint (written asynchronously while
  training went on) holds step 20's loop state, not a later one's."""
  tmp_path = local_tmp_path  # Local on purpose: the study is WORKDIR/tune/optuna.db (SQLite).
  import optuna
  full = tune_run.run(tune_config("bayes"), tmp_path / "full")
  save = checkpoint.Checkpoints.save

  def save_or_die(self, step, *args, **kwargs):
    if step == 40:  # The end of round 1, before this checkpoint.
      # A real kill also ends the background thread that writes step 20; in this one
      # process it would go on writing while the rerun reads. Wait for it instead.
      self.wait()
      raise _Killed()
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpoints, "save", save_or_die)
  with pytest.raises(_Killed):
    tune_run.run(tune_config("bayes"), tmp_path / "killed")
  monkeypatch.setattr(checkpoint.Checkpoints, "save", save)
  resumed = tune_run.run(tune_config("bayes"), tmp_path / "killed")
  assert resumed["status"] == "completed"
  study = optuna.load_study(study_name="jaxtrain",
                            storage=f"sqlite:///{tmp_path / 'killed' / 'tune' / 'optuna.db'}")
  states = [t.state for t in study.trials]
  assert states.count(optuna.trial.TrialState.COMPLETE) == 8 and len(states) == 8
  assert resumed["best_settings"] == full["best_settings"]
  assert resumed["best_score"] == full["best_score"]


def test_eval_of_the_best_member_keeps_the_tuners_test_record(tmp_path):
  config = tune_config("random", **{"data.test_split": "test", "data.eval_split": "train[:20%]"})
  result = tune_run.run(config, tmp_path)
  test_record = (tmp_path / "best" / "test.json").read_bytes()
  assert json.loads(test_record)["eval/accuracy"] == result["best_test"]["eval/accuracy"]
  evaluated = evaluate.run(tmp_path / "best")  # --mode=eval: data.eval_split, its own record.
  assert (tmp_path / "best" / "test.json").read_bytes() == test_record
  assert json.loads((tmp_path / "best" / "eval.json").read_text()) == evaluated


def test_a_1000_step_pbt_run_compiles_at_most_six_programs(tmp_path, compiles):
  """configs/mnist1d_pbt.py as shipped, 1000 steps, no compilation cache: population
  init, train chunk, eval, exploit/explore, the best member's gather, and the test-split
  evaluation of the exported best; nothing eager, nothing per round or per leaf."""
  from experiments import common  # pylint: disable=g-import-not-at-top
  config = common.config_file("mnist1d_pbt")
  config.train.num_steps = 1000
  config.compile.cache_dir = ""  # A cache hit would hide a compile from the counter.
  config.mesh.num_devices = 1  # As on a machine with one device.
  result = tune_run.run(config, tmp_path)
  assert result["status"] == "completed" and result["best_test"]
  assert len(compiles) <= 6, len(compiles)



def _strict_json(path):
  """json.loads refusing NaN/Infinity tokens (other JSON readers refuse them)."""
  def refuse(token):
    raise ValueError(f"{path} holds a bare {token}")
  return json.loads(path.read_text(), parse_constant=refuse)


def test_a_diverged_member_never_wins_and_every_json_stays_valid(tmp_path):
  config = tune_config("grid", **{"train.num_steps": 20})
  config.tune.space = {"optim": {"learning_rate": "choice(0.01, 1e30)"}}
  result = tune_run.run(config, tmp_path)
  assert result["best_settings"] == {"optim.learning_rate": 0.01}
  diverged = next(r for r in result["members"] if r["settings"]["optim.learning_rate"] == 1e30)
  assert math.isnan(diverged["score"])  # Scored as diverged, not as a finite 0.08.
  assert diverged["status"] == "stopped"
  events = lineage_lib.read(tmp_path / "tune" / "lineage.jsonl")
  assert any(e["event"] == "stop" and e.get("reason") == "diverged" for e in events)
  for path in (tmp_path / "tune" / "result.json", tmp_path / "best" / "final.json"):
    _strict_json(path)
  def refuse(token):
    raise ValueError(token)
  for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
    json.loads(line, parse_constant=refuse)


def test_a_search_where_every_member_diverges_exits_3_and_exports_nothing(tmp_path):
  config = tune_config("grid", **{"train.num_steps": 20})
  config.tune.space = {"optim": {"learning_rate": "choice(1e29, 1e30)"}}
  with pytest.raises(errors.NonFiniteError, match="every member of the search diverged"):
    tune_run.run(config, tmp_path)
  assert not (tmp_path / "best").exists()
  assert _strict_json(tmp_path / "tune" / "result.json")["best_score"] is None
