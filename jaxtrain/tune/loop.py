"""The tuning loop: populations of settings trained by one compiled step each.

`run(config, workdir)` reads `config.tune`, turns the search space into
*phases* (one per group of members sharing static settings; Bayesian search
adds a phase per round), and trains each phase's population with the same
readable loop: step -> evaluate every `train.eval_every_steps` -> let the
strategy act (PBT exploit/explore, successive-halving culls and refills,
per-member early stopping) -> checkpoint. All side effects live here; the
population engine (`population.py`) is pure.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import checkpoint as checkpoint_lib
from jaxtrain import config as config_lib
from jaxtrain import errors, models, optim, provenance, train, writers
from jaxtrain import step as step_lib
from jaxtrain import state as state_lib
from jaxtrain.data import catalog, pipeline
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain.tune import population as pop_lib
from jaxtrain.tune import space as space_lib

STRATEGIES = ("grid", "random", "pbt", "halving", "bayes")


# --- Config checks (before anything is compiled). ---


def validate(config: ml_collections.ConfigDict) -> list[space_lib.Dimension]:
  """Checks `config.tune` on top of the usual config checks; returns the space."""
  config_lib.validate(config)
  t = config.tune
  if t.strategy not in STRATEGIES:
    raise errors.unknown_choice("tune.strategy", t.strategy, STRATEGIES)
  if t.population_size <= 0:
    raise errors.UserError(f"tune.population_size={t.population_size} must be > 0")
  if t.metric not in config_lib.RANKABLE_METRICS:
    raise errors.unknown_choice("tune.metric", t.metric, config_lib.RANKABLE_METRICS)
  if t.execution not in pop_lib.EXECUTIONS:
    raise errors.unknown_choice("tune.execution", t.execution, pop_lib.EXECUTIONS)
  if t.steps_per_call <= 0 or config.train.eval_every_steps % t.steps_per_call:
    raise errors.UserError(
        f"tune.steps_per_call={t.steps_per_call} must be > 0 and divide "
        f"train.eval_every_steps={config.train.eval_every_steps}")
  for key in ("train.num_steps", "checkpoint.every_steps"):
    value = config_lib.flatten(config)[key]
    if value % config.train.eval_every_steps:
      raise errors.UserError(
          f"{key}={value} must be a multiple of train.eval_every_steps="
          f"{config.train.eval_every_steps} when tuning (members are compared at evaluations)")
  if t.pbt.exploit not in ("truncation", "tournament"):
    raise errors.unknown_choice("tune.pbt.exploit", t.pbt.exploit, ("truncation", "tournament"))
  if not 0 < t.pbt.fraction <= 0.5:
    raise errors.UserError(f"tune.pbt.fraction={t.pbt.fraction} must be in (0, 0.5]")
  if not t.pbt.perturb_factors or any(f <= 0 for f in t.pbt.perturb_factors):
    raise errors.UserError(
        f"tune.pbt.perturb_factors={tuple(t.pbt.perturb_factors)} must be positive numbers")
  if not 0 <= t.pbt.resample_probability <= 1:
    raise errors.UserError(
        f"tune.pbt.resample_probability={t.pbt.resample_probability} must be in [0, 1]")
  if t.strategy == "halving" and t.halving.eta < 2:
    raise errors.UserError(f"tune.halving.eta={t.halving.eta} must be >= 2")
  if t.strategy == "halving" and (
      t.halving.min_steps <= 0 or t.halving.min_steps % config.train.eval_every_steps):
    raise errors.UserError(
        f"tune.halving.min_steps={t.halving.min_steps} must be a positive multiple of "
        f"train.eval_every_steps={config.train.eval_every_steps}")
  if t.bayes.rounds <= 0:
    raise errors.UserError(f"tune.bayes.rounds={t.bayes.rounds} must be > 0")
  if t.grid_points <= 0:
    raise errors.UserError(f"tune.grid_points={t.grid_points} must be > 0")
  catalog.check_splits(config.data)
  if config.data.test_split:
    catalog.open_split(config.data.name, config.data.test_split, config.data.data_dir)
  dims = space_lib.parse_space(t.space, config_lib.flatten(config_lib.base_config()))
  if not dims:
    raise errors.UserError(
        "tune.space is empty; add at least one dimension, e.g. "
        'config.tune.space.optim.learning_rate = "loguniform(1e-4, 1e-1)"')
  if t.strategy == "pbt" and not any(d.dynamic for d in dims):
    raise errors.UserError(
        "tune.strategy='pbt' needs at least one dimension PBT can change during training: "
        + ", ".join(sorted(space_lib.DYNAMIC_KEYS)))
  for d in dims:
    trial = copy.deepcopy(config)
    for value in ([d.low, d.high] if d.kind != "choice" else list(d.choices)):
      _apply_settings(trial, {d.key: value})
      try:
        config_lib.validate(trial)
      except errors.UserError as e:
        raise errors.UserError(f"tune.space.{d.key} allows {value!r}, which fails: {e}") from None
  return dims


def _apply_settings(config: ml_collections.ConfigDict, settings: dict[str, Any]) -> None:
  for key, value in settings.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    default = node[leaf]
    if isinstance(default, tuple):
      value = tuple(value)  # Settings that went through JSON come back as lists.
    elif isinstance(default, float):
      value = float(value)
    elif isinstance(default, int) and not isinstance(default, bool):
      value = int(value)
    node[leaf] = value


def member_config(config: ml_collections.ConfigDict, settings: dict[str, Any]):
  """The plain single-run config of a member with `settings` (tune.strategy='none')."""
  out = copy.deepcopy(config)
  with out.unlocked():
    _apply_settings(out, settings)
    out.tune.strategy = "none"
    out.tune.space = ml_collections.ConfigDict()  # A single run searches nothing.
  return out


# --- Phases: which members train together. ---


def _plan_initial(config, dims, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
  """Settings per phase for grid/random/pbt/halving, grouped by static settings."""
  t = config.tune
  if t.strategy == "grid":
    settings = space_lib.grid_points(dims, t.grid_points)
  else:
    settings = space_lib.sample_points(dims, t.population_size, rng)
  groups: dict[tuple, list] = {}
  for s in settings:
    groups.setdefault(space_lib.static_part(s), []).append(s)
  return [groups[k] for k in sorted(groups, key=repr)]


def _execution(config, model_name: str) -> str:
  if config.tune.execution != "auto":
    return config.tune.execution
  # vmap turns convolutions into grouped convolutions, which the CPU backend
  # runs 4-7x slower than members one after another (PERF-NOTES.md).
  return "map" if model_name == "cnn" and jax.default_backend() == "cpu" else "vmap"


def _rng_for(seed: int, *counters: int) -> np.random.Generator:
  """A host RNG derived from (seed, counters): no RNG state to checkpoint."""
  return np.random.default_rng([seed, *counters])


def _score(value: float, mode: str) -> float:
  """Higher is better; NaN stays NaN (never best)."""
  return value if mode == "max" else -value


def _new_member(loop: dict, settings: dict[str, Any], step: int, trial: int | None = None) -> dict:
  member = {"id": loop["next_member_id"], "settings": dict(settings), "active": True,
            "score": None, "best_score": None, "evals_since_best": 0, "history": [],
            "last_eval": {}, "created_step": step, "trial": trial}
  loop["next_member_id"] += 1
  return member


class _Phase:
  """One population with shared static settings: its model and compiled functions."""

  def __init__(self, config, settings: dict[str, Any], info, train_data, eval_batches,
               dynamic_dims, size: int):
    self.config = member_config(config, settings)
    c = self.config
    self.size = size
    self.seed = config.seed
    self.dynamic_dims = dynamic_dims
    self.dynamic_keys = [d.key for d in dynamic_dims]
    self.data = train_data.arrays
    self.eval_batches = eval_batches
    force_dropout = "model.dropout_rate" in self.dynamic_keys
    self.model = models.build(c.model, info.num_classes, info.input_shape,
                              force_dropout=force_dropout)
    self.tx, schedule = optim.build(c.optim, c.train.num_steps)
    self.base_hparams = {"dropout_rate": c.model.dropout_rate,
                         "label_smoothing": c.loss.label_smoothing}
    self.sample_batch = train_data.sample_batch()
    self.execution = _execution(config, c.model.name)
    self.traces = []

    # Members sharded over a 1-D 'pop' mesh of all devices, when the count divides.
    devices = jax.devices()
    shard = config.tune.shard_population and len(devices) > 1 and size % len(devices) == 0
    mesh = jax.sharding.Mesh(np.array(devices), ("pop",))
    self.member_sharding = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("pop"))
                            if shard else None)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if shard else None
    pop_train = pop_lib.make_train_fn(
        self.model, self.tx, schedule, c.data.batch_size, self.execution,
        config.tune.steps_per_call,
        unroll=True if c.model.name == "cnn" else 1)  # Rolled conv scans are slow on CPU.

    def train_fn(pop, acc, orders, active, data, data_keys):
      self.traces.append(1)
      return pop_train(pop, acc, orders, active, data, data_keys)

    ms = self.member_sharding
    self._train = jax.jit(
        train_fn, donate_argnums=(0, 1, 2),
        in_shardings=(ms, ms, ms, ms, replicated, ms) if shard else None,
        out_shardings=(ms, ms, ms) if shard else None)
    self._eval = jax.jit(pop_lib.make_eval_fn(self.model))
    self._create = jax.jit(lambda rngs: pop_lib.create(
        self.model, self.tx, self.sample_batch, self.base_hparams, rngs))
    self._set_dynamic = jax.jit(pop_lib.set_dynamic)
    self._exploit = jax.jit(
        lambda pop, scores, rng: pop_lib.exploit_and_explore(
            pop, scores, rng, dynamic_dims, method=config.tune.pbt.exploit,
            fraction=config.tune.pbt.fraction,
            factors=tuple(config.tune.pbt.perturb_factors),
            resample_probability=config.tune.pbt.resample_probability))
    self._select = jax.jit(pop_lib.select)
    self.data_keys = None
    self.orders = None  # Per-member epoch permutations (a cache; never checkpointed).
    self.num_examples = train_data.num_examples

  @property
  def compiles(self) -> int:
    return len(self.traces)

  def _member_rngs(self, ids: list[int]) -> jax.Array:
    return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(self.seed), i) for i in ids])

  def _data_keys(self, members) -> jax.Array:
    base = jax.random.fold_in(jax.random.PRNGKey(self.seed), 0x0DA7A)
    if not self.config.tune.per_member_data_order:
      return jnp.stack([base] * len(members))
    return jnp.stack([jax.random.fold_in(base, m["id"]) for m in members])

  def _put(self, tree):
    if self.member_sharding is None:
      return tree
    return jax.device_put(tree, self.member_sharding)

  def dynamic_values(self, members) -> dict[str, jax.Array]:
    return {k: jnp.asarray([float(m["settings"][k]) for m in members], jnp.float32)
            for k in self.dynamic_keys}

  def initial_state(self, members):
    """A fresh population for `members` (each with its own init RNG and settings)."""
    pop = self._create(self._member_rngs([m["id"] for m in members]))
    if self.dynamic_keys:
      pop = self._set_dynamic(pop, self.dynamic_values(members))
    self.data_keys = self._put(self._data_keys(members))
    self.orders = self._put(pipeline.new_epoch_order(self.num_examples, (len(members),)))
    return self._put(pop), self._put(pop_lib.new_metric_sums(len(members)))

  def active(self, members) -> jax.Array:
    return self._put(jnp.asarray([m["active"] for m in members]))

  def train(self, pop, acc, active):
    pop, acc, self.orders = self._train(pop, acc, self.orders, active, self.data,
                                        self.data_keys)
    return pop, acc

  def evaluate(self, pop) -> list[dict[str, float]]:
    sums = None
    for batch in self.eval_batches:
      batch_sums = self._eval(pop, batch)
      sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    return pop_lib.compute_member_metrics(sums, "eval/")

  def exploit(self, pop, scores: list[float], rng: jax.Array):
    scores_arr = jnp.asarray([s if s is not None else math.nan for s in scores], jnp.float32)
    new_pop, parents, exploited = self._exploit(pop, scores_arr, rng)
    return new_pop, np.asarray(parents), np.asarray(exploited)

  def refill(self, pop, acc, members, mask: list[bool]):
    """Replaces the masked slots with fresh members (new init, settings, data order)."""
    fresh = self.initial_state(members)[0]
    mask_arr = self._put(jnp.asarray(mask))
    pop = self._select(mask_arr, fresh, pop)
    acc = self._select(mask_arr, pop_lib.new_metric_sums(len(members)), acc)
    return self._put(pop), self._put(acc)


def _act(c, phase: _Phase, pop, acc, loop, scores, lineage, dims, dynamic_dims):
  """What the strategy does at an evaluation; returns the (new) population."""
  members, step = loop["members"], loop["step"]
  strategy = c.tune.strategy
  loop["event"] += 1

  # Per-member early stopping (all strategies): stopped members freeze, or are
  # refilled with a new sample by strategies that sample (random, halving).
  if c.tune.early_stopping.patience > 0:
    for m in members:
      if not m["active"]:
        continue
      s = m["score"]
      if s is not None and not math.isnan(s) and (
          m["best_score"] is None or s > m["best_score"] + c.tune.early_stopping.min_delta):
        m["best_score"], m["evals_since_best"] = s, 0
      else:
        m["evals_since_best"] += 1
      if m["evals_since_best"] >= c.tune.early_stopping.patience:
        m["active"] = False
        lineage.write(event="stop", member=m["id"], parent=None, step=step,
                      phase=loop["phase"], before=m["settings"], after=None, score=m["score"])

  if strategy == "pbt":
    rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), loop["event"])
    before = [dict(m["settings"]) for m in members]
    pop, parents, exploited = phase.exploit(pop, [m["score"] for m in members], rng)
    new_values = jax.device_get(pop_lib.get_dynamic(pop, phase.dynamic_keys))
    old_members = copy.deepcopy(members)
    for i, m in enumerate(members):
      if not exploited[i]:
        continue
      parent = old_members[parents[i]]
      after = {**parent["settings"], **{k: float(new_values[k][i]) for k in phase.dynamic_keys}}
      lineage.write(event="exploit", member=m["id"], parent=parent["id"], step=step,
                    phase=loop["phase"], before=before[i], after=after,
                    score=m["score"], parent_score=parent["score"])
      m["settings"] = after
      m["active"] = parent["active"]
      m["history"].append([step, "exploit", parent["id"]])
    return pop, acc

  refill = [False] * len(members)
  if strategy == "halving":
    eta, rung_steps = c.tune.halving.eta, c.tune.halving.min_steps
    for i, m in enumerate(members):
      age = step - m["created_step"]
      rung = _rung_index(age, rung_steps, eta)
      if rung is None or not m["active"]:
        continue
      recorded = loop["rungs"].setdefault(str(rung), [])
      recorded.append(m["score"] if m["score"] is not None and not math.isnan(m["score"])
                      else -math.inf)
      keep = max(1, len(recorded) // eta)
      if m["score"] is None or math.isnan(m["score"]) or m["score"] < sorted(recorded)[-keep]:
        m["active"] = False
        lineage.write(event="cull", member=m["id"], parent=None, step=step, phase=loop["phase"],
                      before=m["settings"], after=None, score=m["score"], rung=rung)
  if strategy in ("halving", "random"):
    rng = _rng_for(c.seed, 1, loop["event"])
    static = {k: v for k, v in members[0]["settings"].items() if k not in space_lib.DYNAMIC_KEYS}
    for i, m in enumerate(members):
      if m["active"]:
        continue
      loop["done"].append(_summary(m, loop["phase"], status="culled" if strategy == "halving"
                                   else "stopped"))
      settings = {**static, **{d.key: d.sample(rng) for d in dynamic_dims}}
      members[i] = _new_member(loop, settings, step)
      lineage.write(event="refill", member=members[i]["id"], parent=None, step=step,
                    phase=loop["phase"], before=m["settings"], after=settings, score=None,
                    replaces=m["id"])
      refill[i] = True
    if any(refill):
      pop, acc = phase.refill(pop, acc, members, refill)
  return pop, acc


def _rung_index(age: int, min_steps: int, eta: int) -> int | None:
  """k if `age` is exactly the k-th rung (min_steps * eta^k), else None."""
  k, rung = 0, min_steps
  while rung < age:
    k, rung = k + 1, rung * eta
  return k if rung == age else None


def _summary(m: dict, phase: int, status: str) -> dict[str, Any]:
  return {"id": m["id"], "phase": phase, "status": status, "settings": m["settings"],
          "score": m["score"], "eval": m["last_eval"], "trial": m["trial"],
          "steps": (m["history"][-1][0] - m["created_step"]) if m["history"] else 0}


def _finish_phase(c, phase: _Phase, pop, loop, lineage, study, tune_dir: Path) -> None:
  """Records final scores, tells Optuna, and exports the best member so far."""
  members = loop["members"]
  for m in members:
    lineage.write(event="final", member=m["id"], parent=None, step=loop["step"],
                  phase=loop["phase"], before=None, after=m["settings"], score=m["score"])
    loop["done"].append(_summary(m, loop["phase"], "completed" if m["active"] else "stopped"))
  _write_member_hparams(tune_dir.parent, members, c.tune.metric)
  if study is not None:
    import optuna  # pylint: disable=g-import-not-at-top
    for m in members:
      value = m["score"]
      if value is None or math.isnan(value):
        study.tell(m["trial"], state=optuna.trial.TrialState.FAIL)
      else:
        study.tell(m["trial"], _score(value, config_lib.mode_of(c.tune.metric)))
  scores = [m["score"] if m["score"] is not None and not math.isnan(m["score"]) else -math.inf
            for m in members]
  best = int(np.argmax(scores))
  previous = loop.get("best")
  if previous is None or scores[best] > previous["score"]:
    loop["best"] = {"id": members[best]["id"], "score": scores[best],
                    "settings": members[best]["settings"], "phase": loop["phase"],
                    "eval": members[best]["last_eval"]}
    events = lineage_lib.read(tune_dir / "lineage.jsonl")
    export_member(c, members[best], pop_lib.take(pop, best), tune_dir.parent / "best",
                  lineage_lib.schedule_of(events, members[best]["id"]))


def _write_member_hparams(workdir: Path, members, metric: str) -> None:
  """One TensorBoard run per member (members/NNNN) with its settings and final
  metrics, so TensorBoard's HParams view tables and compares the members."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  for m in members:
    writer = SummaryWriter(logdir=str(workdir / "members" / f"{m['id']:04d}"))
    hparams = writers.hparams_for_tensorboard(m["settings"])
    final = {k: v for k, v in m["last_eval"].items() if isinstance(v, float)}
    writer.add_hparams(hparams, final or {metric: float("nan")}, name=".")
    writer.close()


def export_member(config, member: dict, state, directory: Path, schedule) -> None:
  """Writes one member as a normal single-run workdir (config, checkpoint, final.json)."""
  single = member_config(config, member["settings"])
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(
      json.dumps(json.loads(single.to_json()), indent=2, sort_keys=True) + "\n")
  (directory / "schedule.json").write_text(json.dumps(schedule, indent=2) + "\n")
  state = jax.device_get(state)
  ckpts = checkpoint_lib.Checkpoints(directory / "checkpoints", keep=1, async_save=False)
  for old in ckpts.all_steps():  # A better member replaces an earlier export.
    ckpts.manager.delete(old)
  acc = {k: np.zeros((), np.float32) for k in train.TRAIN_METRICS}
  guard = jax.device_get(step_lib.new_guard())
  step = int(state.step)
  loop_state = {"best_score": None, "best_step": None, "best_eval": {}, "stop_best": None,
                "evals_since_best": 0, "elapsed_sec": 0.0}
  ckpts.save(step, {"train_state": state, "metric_sums": acc, "guard": guard}, loop_state)
  ckpts.close()
  final = {"status": "completed", "step": step, "final": member["last_eval"],
           "best": {"metric": config.tune.metric, "step": step, **member["last_eval"]},
           "params_sha256": state_lib.params_sha256(state.params),
           "num_params": state_lib.num_params(state.params), "member": member["id"],
           "settings": member["settings"]}
  (directory / "final.json").write_text(json.dumps(final, indent=2) + "\n")


# --- Bayesian search through Optuna's ask/tell interface. ---


def _open_study(c, tune_dir: Path):
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna.create_study(
      study_name="jaxtrain", storage=f"sqlite:///{tune_dir / 'optuna.db'}",
      direction="maximize", load_if_exists=True)


def _distribution(dim: space_lib.Dimension):
  import optuna  # pylint: disable=g-import-not-at-top
  if dim.kind == "uniform":
    return optuna.distributions.FloatDistribution(dim.low, dim.high)
  if dim.kind == "loguniform":
    return optuna.distributions.FloatDistribution(dim.low, dim.high, log=True)
  if dim.kind == "int":
    return optuna.distributions.IntDistribution(int(dim.low), int(dim.high))
  # Optuna's categorical values must be scalars: tuples travel as their index.
  return optuna.distributions.CategoricalDistribution(list(range(len(dim.choices))))


def _ask_round(study, dims, c, loop) -> list[dict[str, Any]]:
  """Asks Optuna for one round of settings (TPE, seeded by the round: restartable)."""
  import optuna  # pylint: disable=g-import-not-at-top
  # Trials asked by a run that died before its first checkpoint of the round.
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
  study.sampler = optuna.samplers.TPESampler(seed=c.seed + loop["phase"],
                                             n_startup_trials=c.tune.population_size)
  settings = []
  for _ in range(c.tune.population_size):
    trial = study.ask({d.key: _distribution(d) for d in dims})
    s = {}
    for d in dims:
      value = trial.params[d.key]
      s[d.key] = d.choices[value] if d.kind == "choice" else value
    s["__trial__"] = trial.number
    settings.append(s)
  return settings


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        stop_after_steps: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) the search in `workdir`; returns the result summary.

  The result (also WORKDIR/tune/result.json) holds the best member's settings
  and score and a table with one row per member. The best member is exported
  to WORKDIR/best/ as a normal single-run workdir (`--mode=eval` and
  fine-tuning use it like any run). `stop_after_steps` stops at the first
  evaluation at or after that many population steps (counted over all
  phases), with a checkpoint, as a preempted job would; running again resumes.

  Raises:
    UserError: bad config, search space, workdir or dataset (before compiling).
  """
  wall_start = time.perf_counter()
  # --- Config and workdir.
  dims = validate(config)
  c = config
  workdir = train.prepare_workdir(workdir)
  tune_dir = workdir / "tune"
  tune_dir.mkdir(exist_ok=True)
  dynamic_dims = [d for d in dims if d.dynamic]
  score_mode = config_lib.mode_of(c.tune.metric)

  # --- Input: the device-resident path (each member gathers its batches in jit).
  data_config = copy.deepcopy(c.data)
  with data_config.unlocked():
    data_config.pipeline = "device"
  train_data, info = pipeline.create_train_data(data_config, c.seed)
  eval_inputs, eval_labels = pipeline.load_eval_arrays(c.data)
  eval_batches = [jax.device_put(b) for b in
                  pipeline.eval_batches(eval_inputs, eval_labels, c.data.eval_batch_size)]

  # --- Checkpoints and the loop state that survives restarts.
  ckpts = checkpoint_lib.Checkpoints(tune_dir / "checkpoints", keep=c.checkpoint.keep,
                                     async_save=c.checkpoint.async_save)
  latest = ckpts.latest_step()
  train._snapshot_config(c, workdir, latest is not None, allow_config_change=False)  # pylint: disable=protected-access
  (workdir / "provenance.json").write_text(json.dumps(provenance.collect(), indent=2) + "\n")
  study = _open_study(c, tune_dir) if c.tune.strategy == "bayes" else None
  loop = {"phase": 0, "phases": None, "rounds": 0, "next_member_id": 0, "event": 0, "step": 0,
          "members": [], "done": [], "rungs": {}, "elapsed_sec": 0.0, "lineage_count": 0,
          "global_step": 0, "best": None}
  if latest is not None:
    loop = ckpts.restore_loop(latest)
  if loop["phases"] is None:
    loop["phases"] = [] if study is not None else _plan_initial(c, dims, _rng_for(c.seed, 0))
  lineage = lineage_lib.Lineage(tune_dir / "lineage.jsonl", keep=loop["lineage_count"])
  metrics_log = writers.MetricsLog(workdir, loop["global_step"] if latest is not None else -1)
  tensorboard = writers.TensorBoard(
      workdir, writers.hparams_for_tensorboard(config_lib.flatten(c)), [f"best/{c.tune.metric}"])
  compiles: dict[int, int] = {}
  status = "completed"
  session_start = time.perf_counter()

  # --- Phases: each is one population trained from step 0 to train.num_steps.
  while True:
    if loop["phase"] == len(loop["phases"]):
      if study is None or loop["rounds"] >= c.tune.bayes.rounds:
        break
      loop["phases"].extend(_group(_ask_round(study, dims, c, loop)))
      loop["rounds"] += 1
    resuming = latest is not None and bool(loop["members"])
    if not resuming:
      loop["members"], loop["step"] = [], 0
      for s in loop["phases"][loop["phase"]]:
        trial = s.get("__trial__")
        s = {k: v for k, v in s.items() if k != "__trial__"}
        loop["members"].append(_new_member(loop, s, step=0, trial=trial))
        lineage.write(event="init", member=loop["members"][-1]["id"], parent=None, step=0,
                      phase=loop["phase"], before=None, after=s, score=None, trial=trial)
    members = loop["members"]
    phase = _Phase(c, members[0]["settings"], info, train_data, eval_batches, dynamic_dims,
                   len(members))
    pop, acc = phase.initial_state(members)
    if resuming:
      restored = ckpts.restore(latest, {"population": pop, "metric_sums": acc})[0]
      pop, acc = phase._put(restored["population"]), phase._put(restored["metric_sums"])  # pylint: disable=protected-access
    latest = None

    while loop["step"] < c.train.num_steps:
      members = loop["members"]
      t0 = time.perf_counter()
      active = phase.active(members)
      for _ in range(c.train.eval_every_steps // c.tune.steps_per_call):
        pop, acc = phase.train(pop, acc, active)
      loop["step"] += c.train.eval_every_steps
      loop["global_step"] += c.train.eval_every_steps
      train_metrics = pop_lib.compute_member_metrics(acc, "train/")
      seconds = time.perf_counter() - t0
      acc = phase._put(pop_lib.new_metric_sums(len(members)))  # pylint: disable=protected-access
      eval_metrics = phase.evaluate(pop)
      for m, e in zip(members, eval_metrics):
        if m["active"]:
          m["last_eval"], m["score"] = e, _score(e[c.tune.metric], score_mode)
          m["history"].append([loop["step"], m["score"]])
      _log_evaluation(c, loop, members, train_metrics, eval_metrics, seconds, metrics_log,
                      tensorboard)
      if loop["step"] < c.train.num_steps:
        pop, acc = _act(c, phase, pop, acc, loop, [m["score"] for m in members], lineage, dims,
                        dynamic_dims)
      finishing = loop["step"] >= c.train.num_steps
      if finishing:
        _finish_phase(c, phase, pop, loop, lineage, study, tune_dir)
      stopping = stop_after_steps is not None and loop["global_step"] >= stop_after_steps
      if loop["step"] % c.checkpoint.every_steps == 0 or finishing or stopping:
        loop["elapsed_sec"] += time.perf_counter() - session_start
        session_start = time.perf_counter()
        loop["lineage_count"] = lineage.count
        ckpts.save(loop["global_step"], {"population": pop, "metric_sums": acc}, loop)
      if stopping and not finishing:
        break
    compiles[loop["phase"]] = phase.compiles
    if loop["step"] < c.train.num_steps:  # Stopped inside this phase.
      status = "stopped"
      break
    if stop_after_steps is not None and loop["global_step"] >= stop_after_steps:
      status = "stopped"  # At a phase boundary: its final checkpoint is the resume point.
      break
    loop["phase"] += 1
    loop["members"] = []

  ckpts.close()
  lineage.close()
  metrics_log.close()
  tensorboard.close()
  loop["elapsed_sec"] += time.perf_counter() - session_start
  result = {"status": status, **_result(c, loop, compiles, time.perf_counter() - wall_start)}
  if status == "completed" and c.data.test_split and loop.get("best"):
    # Members were compared on data.eval_split; the winner alone meets the test split.
    from jaxtrain import evaluate  # pylint: disable=g-import-not-at-top
    test_config = evaluate.load_config(workdir / "best")
    test_config.data.eval_split = c.data.test_split
    test = evaluate.run(workdir / "best", test_config)
    result["best_test"] = {k: v for k, v in test.items() if k.startswith("eval/")}
  (tune_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
  try:
    from jaxtrain.tune import plots  # pylint: disable=g-import-not-at-top
    plots.write(workdir, loop, lineage_lib.read(tune_dir / "lineage.jsonl"), c.tune.metric)
  except ImportError:  # matplotlib is optional for tuning itself.
    pass
  return result


def _group(settings: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
  groups: dict[tuple, list] = {}
  for s in settings:
    key = space_lib.static_part({k: v for k, v in s.items() if k != "__trial__"})
    groups.setdefault(key, []).append(s)
  return [groups[k] for k in sorted(groups, key=repr)]


def _log_evaluation(c, loop, members, train_metrics, eval_metrics, seconds, metrics_log,
                    tensorboard) -> None:
  active = sum(m["active"] for m in members)
  record = {"phase": loop["phase"], "phase_step": loop["step"],
            "steps_per_sec": c.train.eval_every_steps / seconds,
            "member_steps_per_sec": c.train.eval_every_steps * active / seconds,
            "member_ids": [m["id"] for m in members]}
  record.update({k: [m[k] for m in train_metrics] for k in train_metrics[0]})
  record.update({k: [m[k] for m in eval_metrics] for k in eval_metrics[0]})
  scores = [m["score"] if m["score"] is not None else math.nan for m in members]
  finite = [i for i, s in enumerate(scores) if not math.isnan(s)]
  if finite:
    best = max(finite, key=lambda i: scores[i])
    record[f"best/{c.tune.metric}"] = eval_metrics[best][c.tune.metric]
    record["best/member"] = members[best]["id"]
  metrics_log.write(loop["global_step"], record)
  scalars = {k: v for k, v in record.items() if isinstance(v, float)}
  for m, e in zip(members, eval_metrics):
    scalars.update({f"members/{m['id']:04d}/{k}": v for k, v in e.items()})
  tensorboard.write(loop["global_step"], scalars)


def _result(c, loop, compiles, wall_sec) -> dict[str, Any]:
  best = loop["best"] or {}
  table = sorted(loop["done"], key=lambda r: -(r["score"] if r["score"] is not None
                                                 and not math.isnan(r["score"]) else -math.inf))
  return {
      "strategy": c.tune.strategy,
      "metric": c.tune.metric,
      "best_score": best.get("eval", {}).get(c.tune.metric),
      "best_member": best.get("id"),
      "best_settings": best.get("settings"),
      "members": table,
      "num_members": len(table),
      "member_steps": sum(r["steps"] for r in table),
      "train_step_compiles": compiles,
      "train_time_sec": loop["elapsed_sec"],
      "wall_time_sec": wall_sec,
  }
