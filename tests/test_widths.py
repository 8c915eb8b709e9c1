"""Members of different widths in one program (tune.pad_widths, jaxtrain/models/padded.py).

The reference for a padded member is the unpadded population of its own width alone
(`Phase` without `width_choices`: today's one program per width, itself checked against
single runs in test_tune.py), started from the same member id: same init key, same data
order, same dropout key.
"""

import json

import chex
import jax
import numpy as np
import optax
import pytest

import jaxtrain
from jaxtrain import errors, models
from jaxtrain.core import state as state_lib
from jaxtrain.jobs import evaluate, setup
from jaxtrain.models import padded as padded_lib
from jaxtrain.tune import loop as tune_loop
from jaxtrain.tune import phase as phase_lib
from jaxtrain.tune import space as space_lib
from tests.conftest import tiny_config

# Padded to (64, 32). In the order today's phases sort them, so that the same width has
# the same member id (init and data keys) in both executions.
WIDTHS = ((16, 32), (24, 24), (32, 16), (64, 8))
RATES = (3e-3, 1e-2, 5e-3, 2e-3)


def _config(**overrides):
  c = tiny_config(**{"optim.name": "adamw", "optim.weight_decay": 1e-2,
                     "model.dropout_rate": 0.1, "train.eval_every_steps": 50,
                     "train.num_steps": 200, "checkpoint.every_steps": 200,
                     **overrides})
  c.tune.strategy = "grid"
  c.tune.pad_widths = True
  c.tune.space.model = dict(hidden_sizes="choice" + repr(WIDTHS))
  c.tune.space.optim = dict(learning_rate="choice" + repr(RATES))
  return c


def _train(c, s, members, steps, width_choices=()):
  """(phase, population) after `steps` steps of `members` in one phase."""
  dims = [space_lib.parse_dimension("optim.learning_rate", "choice" + repr(RATES))]
  phase = phase_lib.Phase(c, members[0]["settings"], s.info, s.train_data, [], dims,
                          len(members), width_choices=width_choices)
  pop, acc = phase.initial_state(members)
  for _ in range(steps // phase.steps_per_call):
    pop, acc = phase.train(pop, acc, None)
  return phase, pop


def _padded_is_zero(pop, i, solo):
  """Member i's parameters, optimizer moments and batch statistics outside its real corner
  (the shapes of `solo`, its width's unpadded state): exactly 0."""
  member = jax.device_get(jax.tree.map(lambda x: x[i], pop))

  def outside(tree, real):  # Zero inside the real corner, the padded entries as they are.
    inside = padded_lib.embed(jax.tree.map(lambda x: np.ones(np.shape(x), bool), real),
                              jax.eval_shape(lambda: tree))
    return jax.tree.map(lambda x, m: np.where(m, 0, x), tree, inside)

  zeros = lambda tree: jax.tree.map(np.zeros_like, tree)
  # The optimizer's parameter-shaped state: Adam's moments, or momentum's trace.
  kinds = (optax.ScaleByAdamState, optax.TraceState)
  moments = [t for t in jax.tree.leaves(member.opt_state, is_leaf=lambda x: isinstance(x, kinds))
             if isinstance(t, kinds)]
  assert len(moments) == 1
  trees = ((moments[0].mu, moments[0].nu) if isinstance(moments[0], optax.ScaleByAdamState)
           else (moments[0].trace,))
  for tree in (member.params, *trees):
    chex.assert_trees_all_equal(outside(tree, solo.params), zeros(tree), strict=True)
  if member.model_state:  # Batch statistics of padded units: exactly 0 as well.
    stats = member.model_state["batch_stats"]
    chex.assert_trees_all_equal(outside(stats, solo.model_state["batch_stats"]), zeros(stats),
                                strict=True)
  assert float(np.sum([np.abs(x).sum() for x in jax.tree.leaves(member.params)])) > 0


@pytest.mark.parametrize("widths,steps,batch_norm", [
    pytest.param(WIDTHS, 200, False, marks=pytest.mark.slow),  # The test.
    pytest.param(WIDTHS, 50, True, marks=pytest.mark.slow),  # Batch statistics padded too.
    (WIDTHS[:2], 10, False)])  # The default run's (three programs, seconds).
def test_each_padded_member_equals_its_own_width_alone(widths, steps, batch_norm):
  # With batch norm, momentum SGD: a Dense bias before BatchNorm has a gradient of exactly
  # zero in exact arithmetic, so its float gradient is rounding noise, which Adam scales up
  # to full-size steps (in any two differently ordered computations, padded or not).
  c = _config(**{"model.batch_norm": batch_norm, "train.eval_every_steps": min(steps, 50),
                 "optim.name": "momentum" if batch_norm else "adamw"})
  s = setup.build(c, data_pipeline="device", placement=False)
  members = [{"id": i, "active": True,
              "settings": {"model.hidden_sizes": w, "optim.learning_rate": lr}}
             for i, (w, lr) in enumerate(zip(widths, RATES))]
  phase, pop = _train(c, s, members, steps, width_choices=widths)
  assert phase.compiles == 1  # One train program for every width.
  for i, m in enumerate(members):
    solo_phase, solo_pop = _train(c, s, [m], steps)
    solo = solo_phase.take(solo_pop, 0)
    mine = phase.take(pop, i)  # Cut to its own width.
    chex.assert_trees_all_close(mine, solo, rtol=1e-5, atol=1e-5, strict=True)
    assert int(mine.step) == steps
    _padded_is_zero(pop, i, solo)


def _search_config(**overrides):
  """A 40-step grid over the four widths (one learning rate)."""
  c = _config(**{"train.num_steps": 40, "train.eval_every_steps": 20,
                 "checkpoint.every_steps": 20, "model.dropout_rate": 0.0, **overrides})
  c.tune.space.optim = dict(learning_rate="choice(0.01)")
  return c


def test_one_train_program_for_four_widths_and_the_best_exports_at_its_width(tmp_path):
  padded = tune_loop.run(_search_config(), tmp_path)
  assert padded["train_step_compiles"] == {0: 1}  # One phase, one compile.
  assert padded["num_members"] == 4
  best = tuple(padded["best_settings"]["model.hidden_sizes"])
  # The export is a normal single run of the best width: jaxtrain.load and --mode=eval.
  final = json.loads((tmp_path / "best" / "final.json").read_text())
  sizes = (64,) + best + (10,)  # digits: 8x8 pixels, 10 classes.
  assert final["num_params"] == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
  loaded = jaxtrain.load(tmp_path / "best")
  assert tuple(loaded.config.model.hidden_sizes) == best
  assert state_lib.num_params(loaded.variables["params"]) == final["num_params"]
  result = evaluate.run(tmp_path / "best")
  assert result["eval/accuracy"] == pytest.approx(padded["best_score"], abs=1e-6)


@pytest.mark.slow
def test_a_padded_search_scores_every_member_as_one_program_per_width_does(tmp_path):
  padded = tune_loop.run(_search_config(), tmp_path / "padded")
  c = _search_config()
  c.tune.pad_widths = False  # Today's execution: one phase (and one program) per width.
  unpadded = tune_loop.run(c, tmp_path / "unpadded")
  assert unpadded["train_step_compiles"] == {0: 1, 1: 1, 2: 1, 3: 1}
  scores = lambda r: {(m["id"], tuple(m["settings"]["model.hidden_sizes"])): m["score"]
                      for m in r["members"]}
  assert scores(padded).keys() == scores(unpadded).keys()
  for key, score in scores(unpadded).items():  # Same members, same evaluations.
    assert scores(padded)[key] == pytest.approx(score, abs=1e-6)


@pytest.mark.slow
def test_a_padded_pbt_search_resumes_bitwise(tmp_path):
  c = _search_config(**{"train.num_steps": 60, "model.dropout_rate": 0.1,
                        "train.eval_every_steps": 10})
  c.tune.strategy, c.tune.population_size, c.tune.pbt.fraction = "pbt", 4, 0.5
  c.tune.space.optim = dict(learning_rate="loguniform(1e-4, 3e-1)")
  tune_loop.run(c, tmp_path / "whole")
  assert tune_loop.run(c, tmp_path / "parts", stop_after_steps=30)["status"] == "stopped"
  assert tune_loop.run(c, tmp_path / "parts")["status"] == "completed"
  final = lambda d: json.loads((tmp_path / d / "best" / "final.json").read_text())
  assert final("parts")["params_sha256"] == final("whole")["params_sha256"]
  lineage = lambda d: (tmp_path / d / "tune" / "lineage.jsonl").read_text()
  assert lineage("parts") == lineage("whole")
  assert '"event": "exploit"' in lineage("whole")


@pytest.mark.slow
def test_a_padded_population_over_8_devices_scores_as_on_one(tmp_path):
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  c = _search_config(**{"model.dropout_rate": 0.1})
  c.tune.space.optim = dict(learning_rate="choice(0.01, 0.003)")  # 8 members.
  one = tune_loop.run(c, tmp_path / "one")
  c.mesh.num_devices = 0  # Every device: the members split over the 'pop' axis.
  many = tune_loop.run(c, tmp_path / "many")
  assert many["train_step_compiles"] == {0: 1}
  assert [m["id"] for m in many["members"]] == [m["id"] for m in one["members"]]
  assert [m["score"] for m in many["members"]] == pytest.approx(
      [m["score"] for m in one["members"]], abs=1e-6)


def test_halving_refills_a_padded_slot_with_a_width_of_its_phase(tmp_path):
  c = _search_config(**{"train.eval_every_steps": 10})
  c.tune.strategy = "halving"
  c.tune.population_size = 4
  c.tune.halving.min_steps, c.tune.halving.eta = 10, 2
  c.tune.space.model = dict(hidden_sizes="choice" + repr(WIDTHS))
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)")
  result = tune_loop.run(c, tmp_path)
  events = [json.loads(line) for line in (tmp_path / "tune" / "lineage.jsonl").open()]
  refills = [e for e in events if e["event"] == "refill"]
  assert refills
  assert {tuple(e["after"]["model.hidden_sizes"]) for e in refills} <= set(WIDTHS)
  assert result["train_step_compiles"] == {0: 1}  # Refills reuse the program.


def test_pbt_exploit_copies_the_parents_width_with_its_state(tmp_path):
  c = _config(**{"train.num_steps": 40, "train.eval_every_steps": 10,
                 "checkpoint.every_steps": 40, "model.dropout_rate": 0.0})
  c.tune.strategy = "pbt"
  c.tune.population_size = 4
  c.tune.pbt.fraction = 0.5
  c.tune.space.optim = dict(learning_rate="loguniform(1e-4, 3e-1)")
  tune_loop.run(c, tmp_path)
  events = [json.loads(line) for line in (tmp_path / "tune" / "lineage.jsonl").open()]
  exploits = [e for e in events if e["event"] == "exploit"]
  assert exploits, "the search exploited nobody; widen the learning-rate range"
  settings = {e["member"]: e["after"] for e in events if e["event"] == "init"}
  for e in exploits:  # A copy takes its parent's width, as the parent had it then.
    assert e["after"]["model.hidden_sizes"] == settings[e["parent"]]["model.hidden_sizes"]
    settings[e["member"]] = e["after"]
  for member, s in settings.items():  # The final population holds each member's width.
    loaded = jaxtrain.load(tmp_path, member=member)
    assert tuple(loaded.config.model.hidden_sizes) == tuple(s["model.hidden_sizes"])
    n = state_lib.num_params(loaded.variables["params"])
    sizes = (64,) + tuple(s["model.hidden_sizes"]) + (10,)
    assert n == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c.model, "name", "cnn"), "model.name='cnn'"),
    (lambda c: c.tune.space.model.__delattr__("hidden_sizes"), "does not search it"),
    (lambda c: setattr(c.model, "lora_rank", 2), "model.lora_rank=2"),
])
def test_bad_pad_widths_is_one_line(change, message, tmp_path):
  c = _config()
  with c.unlocked():
    change(c)
  with pytest.raises(errors.UserError, match="tune.pad_widths=True") as e:
    tune_loop.validate(c)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_mixed_depths_fall_back_to_one_phase_per_depth():
  c = _config()
  c.tune.space.model = dict(hidden_sizes="choice((16,), (64,), (16, 16), (32, 8))")
  dims = tune_loop.validate(c)
  phases = tune_loop._plan_initial(c, dims, np.random.default_rng(0))
  depths = [{len(s["model.hidden_sizes"]) for s in p} for p in phases]
  assert sorted(depths, key=min) == [{1}, {2}]  # One phase per depth.
  for p in phases:
    choices = phase_lib.width_choices(c, dims, p[0])
    assert {tuple(s["model.hidden_sizes"]) for s in p} <= set(choices)
    assert len(choices) == 2


def test_the_padded_model_masks_match_the_real_parameters():
  """param_mask is True exactly on the corner an unpadded model of the width has."""
  c = _config()
  s = setup.build(c, data_pipeline="device", placement=False)
  build_at = lambda sizes: models.build(_with_sizes(c, sizes), 10, (64,))
  p = padded_lib.build(build_at, WIDTHS, s.train_data.sample_batch())
  assert p.sizes == (64, 32)
  for i, w in enumerate(WIDTHS):
    mask = p.model.param_mask({models.WIDTHS_KEY: np.asarray(w, np.float32)})
    mask = jax.tree.map(lambda m, x: np.broadcast_to(m, x.shape), mask, p.shapes["params"])
    real = jax.tree.map(lambda x: int(np.prod(x.shape)), p.solo_shapes[i]["params"])
    chex.assert_trees_all_equal(jax.tree.map(lambda m: int(m.sum()), mask), real)


def _with_sizes(c, sizes):
  m = c.model.copy_and_resolve_references()
  m.hidden_sizes = sizes
  return m
