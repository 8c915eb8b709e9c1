"""LoRA populations over one shared frozen base (jaxtrain/tune/phase.py, population.py,
core/lora.py): members of different ranks in one program, each equal to a run at its
own rank; the base held once, on the device and in the checkpoint."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxtrain import config as config_lib, errors
from jaxtrain.core import lora, metrics, step as step_lib
from jaxtrain.data import pipeline
from jaxtrain.jobs import setup, train
from jaxtrain.tune import loop as tune_run, phase as phase_lib, population as pop_lib

RANKS = (1, 2, 4)  # Padded to 4.
ALPHA = 6.0  # Scales 6, 3, 1.5: each member's own alpha / r.
STEPS = 30
# Tolerance of a padded member against its solo run after STEPS Adam steps. Not bitwise:
# the padded matmuls contract over 4 components instead of r (the extra terms are exact
# zeros, but XLA may group the sums differently) and the vmapped step batches them.
RTOL, ATOL = 1e-5, 1e-6


def lora_config(**overrides):
  return tiny_config(**{"model.lora_rank": max(RANKS), "model.lora_alpha": ALPHA,
                        "optim.name": "adamw", "optim.weight_decay": 1e-2,
                        "optim.clip_norm": 1.0, "optim.learning_rate": 3e-3, **overrides})


def _adapter_leaves(tree):
  """[(path, leaf)] of every adapter matrix in `tree` (params or optimizer moments)."""
  return [(jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
          if lora.is_adapter(jax.tree_util.keystr(k, simple=True, separator="/"))]


def _solo(c, info, data, rank, seed, member_id, data_key, base):
  """A single LoRA run at `rank` (the single-run recipe, unpadded), started as member
  `member_id` starts (its init key) on the shared `base`, trained STEPS steps of the
  single-run step on the member's data order."""
  solo = config_lib.with_settings(c, {"model.lora_rank": rank})
  r = setup.recipe(solo, info)
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), member_id)
  state = jax.jit(r.create)(data.sample_batch(), rng)
  state = state.replace(model_state={**state.model_state, **base})
  bs, n = c.data.batch_size, data.num_examples

  @jax.jit
  def one(state, order):
    order = pipeline.refresh_order(order, data_key, state.step, n, bs)
    batch = pipeline.device_batch(data.arrays, order, state.step, bs)
    return step_lib.train_step(r.model, r.tx, r.schedule, state, batch)[0], order

  order = pipeline.new_epoch_order(n)
  for _ in range(STEPS):
    state, order = one(state, order)
  return state


@pytest.mark.parametrize("execution", ["vmap", pytest.param("map", marks=pytest.mark.slow)])
def test_padded_members_equal_solo_runs_at_their_own_rank(execution):
  """Members of ranks 1, 2, 4 (alpha 6) trained in one program padded to rank 4 over one
  shared base equal single runs at their own rank (params and Adam moments, to
  RTOL/ATOL); the padding stays exactly zero in parameters and optimizer state."""
  c = lora_config()
  data, info = pipeline.create_train_data(c.data, seed=0)
  r = setup.recipe(c, info, searched=("model.lora_rank",))
  ids = np.arange(len(RANKS), dtype=np.int32)
  members = [{"settings": {"model.lora_rank": k}} for k in RANKS]
  hparams = {k: np.asarray([lora.member_hparams(m["settings"]["model.lora_rank"], ALPHA)[k]
                            for m in members], np.float32) for k in lora.HPARAMS}
  # The tuner's own init programs (jitted, as Phase jits them).
  pop, data_keys = jax.jit(functools.partial(
      phase_lib._init_population, r.model, r.tx, data.sample_batch(), r.hparams,
      per_member_data_order=True, shared_names=(lora.BASE,)))(
          np.int32(c.seed), ids, {}, {}, hparams, None)  # No padded widths.
  shared = jax.jit(functools.partial(
      phase_lib._init_shared, r.model, r.tx, data.sample_batch(), r.hparams,
      names=(lora.BASE,)))(np.int32(c.seed), {})
  assert lora.BASE not in pop.model_state  # Not stacked: held once, in `shared`.
  if execution == "vmap":
    fn = jax.jit(pop_lib.make_train_fn(r.model, r.tx, r.schedule, c.data.batch_size))
  else:
    from jaxtrain.tune import execution as execution_lib
    fn = execution_lib.HostLoop(r.model, r.tx, r.schedule, c.data.batch_size).train
  acc = metrics.new_sums((len(RANKS),))
  orders = pipeline.new_epoch_order(data.num_examples, (len(RANKS),))
  for _ in range(STEPS):
    pop, acc, orders = fn(pop, acc, orders, None, data.arrays, data_keys, shared)

  for i, rank in enumerate(RANKS):
    member = phase_lib.single_state(pop_lib.take(pop, i), shared)
    solo = _solo(c, info, data, rank, c.seed, int(ids[i]), data_keys[i], shared)
    chex.assert_trees_all_equal_shapes(member.params, solo.params)
    chex.assert_trees_all_close(member.params, solo.params, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(member.opt_state, solo.opt_state, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_equal(member.model_state, solo.model_state)  # The base, untouched.
    assert set(member.hparams) == set(solo.hparams)
    # The adapters moved (the comparison is not between two untrained states).
    assert float(jnp.abs(member.params["Dense_1"]["kernel"]["lora_b"]).max()) > 1e-3
    # Past its rank, member i's adapters and their Adam moments are exactly zero.
    for where, tree in (("params", pop.params), ("opt_state", pop.opt_state)):
      for path, leaf in _adapter_leaves(tree):
        leaf = np.asarray(leaf[i])
        padding = leaf[:, rank:] if path.endswith("'lora_a']") else leaf[rank:, :]
        assert not padding.any(), (where, path, rank)


def test_the_base_is_held_once_whatever_the_population_size():
  """The compiled population step's arguments grow by the members' own state only: from
  K=1 to K=8 by 7 x (adapters + optimizer state + per-member scalars), never by the
  base (compiled.memory_analysis(): the bytes XLA allocates for the arguments)."""
  c = lora_config(**{"model.hidden_sizes": (256, 256)})  # A base much larger than adapters.
  c.tune.strategy = "random"
  c.tune.steps_per_call = 1
  c.tune.space.model = dict(lora_rank="choice(1, 2, 4)")
  s = setup.build(c, data_pipeline="device", placement=False)

  def arguments(size):
    members = [{"id": i, "settings": {"model.lora_rank": RANKS[i % 3]}} for i in range(size)]
    phase = phase_lib.Phase(c, members[0]["settings"], s.info, s.train_data, [], [], size)
    fn, args = phase.train_program(members)
    memory = fn.lower(*args).compile().memory_analysis()
    pop, acc, orders, _, _, data_keys, shared = args
    per_member = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
        (pop, acc, orders, data_keys))) // size
    base = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shared))
    return memory.argument_size_in_bytes, per_member, base

  one, per_member, base = arguments(1)
  eight, per_member_8, base_8 = arguments(8)
  assert per_member == per_member_8 and base == base_8
  assert base > 4 * per_member  # The base outweighs a member ...
  # ... and costs nothing per added member: 7 members' own state (less a few bytes per
  # member where XLA prunes a scalar argument the step does not read), where a stacked
  # base would add 7 x `base`.
  assert 7 * (per_member - 64) <= eight - one <= 7 * per_member


def test_a_searched_rank_must_be_a_whole_number_from_one(tmp_path):
  c = lora_config()
  c.tune.strategy = "random"
  c.tune.space.model = dict(lora_rank="choice(0, 2)")
  with pytest.raises(errors.UserError, match=r"model.lora_rank allows 0, 2.*>= 1"):
    tune_run.run(c, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def _lora_search(tmp_path, strategy, **overrides):
  train.run(tiny_config(), tmp_path / "pre")
  c = lora_config(**{"train.num_steps": 40, "train.eval_every_steps": 10,
                     "checkpoint.every_steps": 10, **overrides})
  c.tune.strategy = strategy
  c.tune.population_size = 4
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 1e-2)")
  c.tune.space.model = dict(lora_rank="choice(1, 2, 4)", lora_alpha="choice(2.0, 8.0)")
  c.tune.halving.min_steps = 10
  c.tune.halving.eta = 2
  c.tune.bayes.rounds = 2
  c.init_from.workdir = str(tmp_path / "pre")
  return c


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["pbt", "halving", "bayes"])
def test_a_lora_search_trains_in_one_program_and_resumes_bitwise(tmp_path, strategy):
  """PBT, halving and Bayesian search over ranks, alphas and learning rates from a
  pretrained run: one compiled program per phase (Bayes: per round) holding members of
  several ranks; a search stopped at step 20 and resumed exports the same best member
  (bitwise) as an uninterrupted one; the checkpoint holds the base once; each member
  loads at its own rank."""
  import jaxtrain
  import orbax.checkpoint as ocp
  c = _lora_search(tmp_path, strategy)
  whole = tune_run.run(c, tmp_path / "whole")
  rounds = c.tune.bayes.rounds if strategy == "bayes" else 1
  assert whole["train_step_compiles"] == {i: 1 for i in range(rounds)}
  tune_run.run(c, tmp_path / "split", stop_after_steps=20)
  split = tune_run.run(c, tmp_path / "split")
  final = json.loads((tmp_path / "whole" / "best" / "final.json").read_text())
  again = json.loads((tmp_path / "split" / "best" / "final.json").read_text())
  assert again["params_sha256"] == final["params_sha256"]
  assert split["members"] == whole["members"]
  # Exploits copy a parent's rank, refills draw one: members change rank in the program.
  events = [json.loads(line) for line in
            (tmp_path / "whole" / "tune" / "lineage.jsonl").read_text().splitlines()]
  started = [e for e in events if e["event"] == "init" and e["phase"] == 0]
  assert len({e["after"]["model.lora_rank"] for e in started}) > 1  # One program, 2+ ranks.
  assert strategy == "bayes" or any(
      e["event"] in ("exploit", "refill")
      and e["before"]["model.lora_rank"] != e["after"]["model.lora_rank"] for e in events)
  # The checkpoint: the population without the base, the base once beside it.
  ckpts = tmp_path / "whole" / "tune" / "checkpoints"
  ckpt = ckpts / str(max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())) / "state"
  meta = ocp.PyTreeCheckpointer().metadata(ckpt).item_metadata
  assert lora.BASE not in meta["population"]["model_state"]
  kernel = meta["shared"][lora.BASE]["Dense_0"]["kernel"]
  assert tuple(kernel.shape) == (64, 64)  # digits 8x8 -> hidden 64: no member axis.
  last = max(m["phase"] for m in whole["members"])
  for m in whole["members"]:
    if m["status"] == "culled" or m["phase"] != last:  # Not in the latest checkpoint.
      continue
    loaded = jaxtrain.load(tmp_path / "whole", member=m["id"])
    rank = m["settings"]["model.lora_rank"]
    assert loaded.variables["params"]["Dense_0"]["kernel"]["lora_a"].shape == (64, rank)
    assert loaded.config.model.lora_rank == rank
  best = jaxtrain.load(tmp_path / "whole")  # The export: at its own rank, merged too.
  merged = jaxtrain.load(tmp_path / "whole" / "best" / "merged")
  x = np.asarray(pipeline.load_eval_arrays(c.data)[0][:16])
  np.testing.assert_allclose(best.predict(x), merged.predict(x), rtol=1e-4, atol=1e-4)
