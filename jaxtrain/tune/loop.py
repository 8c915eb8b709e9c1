"""The tuning loop: populations of settings trained by one compiled step each.

`run(config, workdir)` has the shape of a single run (`jaxtrain.jobs.train`):
check -> workdir -> build -> start -> loop -> record. The search space becomes
*phases* (one per group of members sharing static settings; Bayesian search
adds a phase per round); each phase's population (`phase.Phase`: its model and
compiled programs) trains from step 0 to `train.num_steps`, evaluated every
`train.eval_every_steps`, when the strategy acts (PBT exploit/explore,
successive-halving culls and refills, per-member early stopping) and the
cadence says whether to checkpoint. All side effects live here; the
population engine (`population.py`) is pure.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.core import optim
from jaxtrain.data import catalog
from jaxtrain.io import compilation, preemption, writers
from jaxtrain.jobs import cadence, checks, evaluate, setup, transfer, workdir as workdir_lib
from jaxtrain.parallel import distributed, sharding
from jaxtrain.tune import export, storage, strategies
from jaxtrain.tune import front as front_lib
from jaxtrain.tune import pareto
from jaxtrain.tune import lineage as lineage_lib
from jaxtrain.tune import phase as phase_lib
from jaxtrain.tune import population as pop_lib
from jaxtrain.tune import soup as soup_lib
from jaxtrain.tune import space as space_lib
from jaxtrain.tune import warm_start
from jaxtrain.tune.phase import Phase, member_config  # noqa: F401 (API)
from jaxtrain.paths import Path

STRATEGIES = ("grid", "random", "pbt", "halving", "bayes")


# --- Config checks (before anything is compiled). ---


def validate(config: ml_collections.ConfigDict) -> list[space_lib.Dimension]:
  """Checks `config.tune` on top of the usual config checks; returns the space."""
  checks.validate(config)
  t = config.tune
  if t.strategy not in STRATEGIES:
    raise errors.unknown_choice("tune.strategy", t.strategy, STRATEGIES)
  if t.population_size <= 0:
    raise errors.UserError(f"tune.population_size={t.population_size} must be > 0")
  checks.check_rankable("tune.metric", t.metric, config)
  pareto.check(config)  # tune.objectives, tune.constraints.
  if t.execution not in pop_lib.EXECUTIONS:
    raise errors.unknown_choice("tune.execution", t.execution, pop_lib.EXECUTIONS)
  if t.steps_per_call < 0 or (t.steps_per_call and
                               config.train.eval_every_steps % t.steps_per_call):
    raise errors.UserError(
        f"tune.steps_per_call={t.steps_per_call} must divide train.eval_every_steps="
        f"{config.train.eval_every_steps} (or be 0: the whole interval per call)")
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
  strategies.check_storage(config)  # tune.storage, tune.study_name: before anything is written.
  soup_lib.check_config(config)
  warm_start.check(config)
  if t.grid_points <= 0:
    raise errors.UserError(f"tune.grid_points={t.grid_points} must be > 0")
  catalog.check_splits(config.data)
  if config.data.test_split:
    catalog.split_of(config.data, config.data.test_split)
  dims = space_lib.parse_space(t.space, config_lib.flatten(config_lib.base_config()))
  if not dims:
    raise errors.UserError(
        "tune.space is empty; add at least one dimension, e.g. "
        'config.tune.space.optim.learning_rate = "loguniform(1e-4, 1e-1)"')
  if t.strategy == "pbt" and not any(d.dynamic for d in dims):
    raise errors.UserError(
        "tune.strategy='pbt' needs at least one dimension PBT can change during training: "
        + ", ".join(sorted(space_lib.DYNAMIC_KEYS)))
  _check_lora_ranks(dims)
  _check_optimizer_hparams(config, dims)
  for d in dims:
    for value in ([d.low, d.high] if d.kind != "choice" else list(d.choices)):
      try:
        checks.validate(config_lib.with_settings(config, {d.key: value}))
      except errors.UserError as e:
        raise errors.UserError(f"tune.space.{d.key} allows {value!r}, which fails: {e}") from None
  _check_pad_widths(config, dims)
  return dims


def _check_optimizer_hparams(config, dims) -> None:
  """A searched optimizer hyperparameter exists in every searched optimizer (SGD has no
  momentum: the search would fail inside its first compile)."""
  names = next((d.choices for d in dims if d.key == "optim.name"), (config.optim.name,))
  for d in dims:
    where, name = space_lib.DYNAMIC_KEYS.get(d.key, (None, None))
    if where != "opt":
      continue
    for optimizer in names:
      if optimizer in optim.NAMES and name not in optim.hparam_names(optimizer):
        raise errors.UserError(
            f"tune.space.{d.key} searches {name}, which optim.name={optimizer!r} does not have "
            f"(it has {', '.join(optim.hparam_names(optimizer))}); choose an optimizer that "
            f"has it (e.g. optim.name='momentum' for momentum) or drop tune.space.{d.key}")


def _check_lora_ranks(dims) -> None:
  """A searched model.lora_rank holds whole numbers >= 1 (one program pads the members
  to the largest; rank 0, full fine-tuning, is another model)."""
  rank = next((d for d in dims if d.key == "model.lora_rank"), None)
  if rank is None:
    return
  values = rank.choices if rank.kind == "choice" else (rank.low, rank.high)
  if rank.kind in ("int", "choice") and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
      and v >= 1 for v in values):
    return
  raise errors.UserError(
      f"tune.space.model.lora_rank allows {', '.join(map(repr, values))}: a LoRA search pads "
      "every member to the largest rank, so each rank must be a whole number >= 1; write "
      "e.g. choice(2, 4, 8) (full fine-tuning, rank 0, is a run of its own)")


def _check_pad_widths(config, dims) -> None:
  """tune.pad_widths: members of several MLP widths in one program (models/padded.py)."""
  if not config.tune.pad_widths:
    return
  off = "or set tune.pad_widths=False (one program per width)"
  if not any(d.key == phase_lib.WIDTHS for d in dims):
    raise errors.UserError(
        "tune.pad_widths=True pads members that differ in model.hidden_sizes, but tune.space "
        f'does not search it; add e.g. tune.space.model.hidden_sizes="choice((64,), (256,))" {off}')
  if config.model.name != "mlp":
    raise errors.UserError(
        f"tune.pad_widths=True pads the hidden layers of model.name='mlp', not "
        f"model.name={config.model.name!r}; use the mlp {off}")
  if config.model.lora_rank > 0 or config.init_from.workdir or config.tune.warm_start_params:
    what = (f"model.lora_rank={config.model.lora_rank}" if config.model.lora_rank > 0
            else f"init_from.workdir={config.init_from.workdir!r}" if config.init_from.workdir
            else "tune.warm_start_params=True (an earlier best/)")
    raise errors.UserError(
        f"tune.pad_widths=True cannot pad {what} (its arrays have one width); "
        f"drop it {off}")
  # Not built together (yet): a soup of padded members, and the padded parameter count
  # as an objective (it would count the padding).
  if config.tune.soup.top_k > 0:
    raise errors.UserError(f"tune.soup.top_k={config.tune.soup.top_k} with "
                           f"tune.pad_widths=True is not supported; set tune.soup.top_k=0 {off}")
  if "model/num_params" in pareto.needed(config):
    raise errors.UserError("tune.objectives or tune.constraints name model/num_params, which "
                           "tune.pad_widths=True would count at the padded width; drop it "
                           f"{off}")


# --- The loop. ---


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        stop_after_steps: int | None = None, start_over: bool = False, model=None,
        data=None) -> dict[str, Any]:
  """Runs (or resumes) the search in `workdir`; returns the result summary.

  The result (also WORKDIR/tune/result.json) holds the best member's settings
  and score and a table with one row per member. The best member is exported
  to WORKDIR/best/ as a normal single-run workdir (`--mode=eval` and
  fine-tuning use it like any run). `stop_after_steps` stops at the first
  evaluation at or after that many population steps (counted over all
  phases), with a checkpoint, as a preempted job would; running again resumes.
  `start_over` moves a used `workdir` aside (WORKDIR.old-DATE-TIME) first.

  Raises:
    UserError: bad config, search space, workdir or dataset (before compiling).
    Interrupted (a KeyboardInterrupt): Ctrl-C stopped the search; its checkpoint is saved.
  """
  wall_start = time.perf_counter()
  config = workdir_lib.with_objects(config, workdir, model, data,
                                    start_over=start_over)  # A notebook's objects.
  # --- Check: the config and its search space, before anything is compiled.
  dims = validate(config)
  c = config
  workdir = workdir_lib.prepare(workdir, c)
  storage.check_workdir(c, workdir)
  compilation.enable_cache(c.compile.cache_dir)  # Before the first compile.
  tune_dir = workdir / "tune"
  tune_dir.mkdir(exist_ok=True)

  # --- Build: the data, on the device (each member gathers its own batches in jit).
  s = setup.build(c, data_pipeline="device", placement=False)
  phase_lib.check_memory(c, s)  # Before any member is allocated.
  eval_batches = [jax.device_put(b) for b in s.eval_batches()]

  # --- Start: the loop state of the latest checkpoint, else a plan of phases.
  # One writer; closed on any exit.
  with workdir_lib.lock(workdir), workdir_lib.checkpoints(tune_dir / "checkpoints", c) as ckpts:
    latest = ckpts.latest_step()
    workdir_lib.snapshot_config(c, workdir, resuming=latest is not None)
    loop = ckpts.restore_loop(latest, _new_loop()) if latest is not None else _new_loop()
    study = (strategies.open_study(c, tune_dir, loop["rounds"]) if c.tune.strategy == "bayes"
             else None)
    if study is not None:  # Trials a killed run finished but did not tell.
      strategies.reconcile(study, loop, c.tune.metric, c)
    if study is not None and c.tune.warm_start_from:  # Before the first round is asked.
      loop["warm_start"] = warm_start.seed_study(study, c, dims, strategies.distribution)
    if loop["phases"] is None:
      loop["phases"] = ([] if study is not None
                        else _plan_initial(c, dims, strategies.rng_for(c.seed, 0)))
    _check_processes(c, loop["phases"])
    if c.init_from.workdir:  # Every planned model must fit the checkpoint: before compiling.
      for planned in loop["phases"]:  # One per static setting (Bayes: per round, in Phase).
        phase_lib.check_init_from(c, {k: v for k, v in planned[0].items() if k != "__trial__"},
                                  s.info, s.train_data.sample_batch())
    records = _Records(workdir, c, loop, resumed=latest is not None)

    # --- Loop: phase by phase; within a phase, evaluation interval by interval.
    with records:
      status, clock, signal = _train_phases(c, s, dims, loop, study, ckpts, records, latest,
                                            eval_batches, workdir, stop_after_steps)

  # --- Record: the result table, the best member on the test split, the figures.
  clock.stop(loop)
  result = {"status": status, **_result(c, loop, records.compiles, records.executions,
                                        time.perf_counter() - wall_start)}
  if pareto.enabled(c):  # The objectives, constraints and the Pareto front.
    result.update(front_lib.result(c, loop, workdir))
  if status == "completed" and c.data.test_split and loop.get("best"):
    # Members were compared on data.eval_split; the winner alone meets the test split.
    test_config = config_lib.load_snapshot(workdir / "best")
    test_config.data.eval_split = c.data.test_split
    test = evaluate.run(workdir / "best", test_config, record="test.json")
    result["best_test"] = {k: v for k, v in test.items() if k.startswith("eval/")}
  if c.tune.warm_start_from:
    result["warm_start"] = {"from": c.tune.warm_start_from, "trials": loop.get("warm_start")}
  if status == "completed" and loop.get("soup"):  # Scored like any run, beside the best.
    result["soup"] = soup_lib.evaluate(c, workdir / "soup", loop["soup"])
  workdir_lib.write_json(tune_dir / "result.json", result)
  if status == "completed" and not loop.get("best"):
    raise errors.NonFiniteError(
        f"every member of the search diverged (non-finite {c.tune.metric}); no best member "
        f"was exported, see {tune_dir / 'result.json'}; narrow the search space (e.g. lower "
        "learning rates) or set optim.clip_norm, then rerun in a new --workdir")
  main = distributed.is_main()  # Process 0 alone draws.
  try:
    if main:
      from jaxtrain.tune import plots  # pylint: disable=g-import-not-at-top
      plots.write(workdir, loop, lineage_lib.read(tune_dir / "lineage.jsonl"), c.tune.metric)
      if pareto.enabled(c):
        plots.write_pareto(workdir, c, loop)
  except ImportError:  # matplotlib is optional for tuning itself.
    pass
  return preemption.raise_if_interrupted(signal, result, workdir, step=loop["global_step"])


def _train_phases(c, s, dims, loop, study, ckpts, records, latest, eval_batches, workdir,
                  stop_after_steps):
  """Trains phase after phase (one compiled population each) from the loop state;
  returns (status, training clock, the stopping signal's name or None). The strategy
  acts at every evaluation; the cadence says when to checkpoint; SIGTERM/SIGINT stop at
  the end of an interval."""
  tune_dir = workdir / "tune"
  status, clock = "completed", _Clock()
  with preemption.PreemptionGuard() as preempt:
    while _next_phase(c, dims, loop, study):
      resuming = latest is not None and bool(loop["members"])
      if not resuming:
        _start_members(loop, records.lineage)
      settings = loop["members"][0]["settings"]
      phase = Phase(warm_start.phase_config(c, settings, s.info, s.train_data.sample_batch()),
                    settings, s.info, s.train_data, eval_batches,
                    [d for d in dims if d.dynamic], len(loop["members"]),
                    width_choices=phase_lib.width_choices(c, dims, settings))
      if phase.init_record is not None:
        transfer.write_record(workdir, phase.init_record)
      phase.precompile(loop["members"])
      pop, acc = phase.initial_state(loop["members"])
      if resuming:
        pop, acc = phase.restore(ckpts, latest, pop, acc)
      latest, stopping = None, False
      while loop["step"] < c.train.num_steps and not stopping:
        pop, acc = _train_interval(c, phase, pop, acc, loop, records)
        clock.trained = True
        if loop["step"] < c.train.num_steps:
          pop, acc = strategies.act(c, phase, pop, acc, loop, [m["score"] for m in loop["members"]],
                                    records.lineage, dims, phase.dynamic_dims)
        else:
          _finish_phase(c, phase, pop, loop, records.lineage, tune_dir)
        # SIGTERM/SIGINT take effect at the end of the current evaluation interval, at
        # the same interval in every process (should_stop: called every interval).
        stopping = preempt.should_stop(loop["global_step"]) or (
            stop_after_steps is not None and loop["global_step"] >= stop_after_steps)
        if cadence.itstime(loop["step"], c.checkpoint.every_steps, c.train.num_steps) or stopping:
          clock.save(ckpts, loop, records, phase.checkpoint_items(pop, acc))
      if study is not None and loop["step"] >= c.train.num_steps:
        # Optuna hears of a round only once its checkpoint has committed: a kill in
        # between leaves trials RUNNING, which a restart tells (`reconcile`), never a
        # study ahead of every checkpoint.
        ckpts.wait()
        strategies.tell_round(study, loop["members"], c.tune.metric, c)
      records.compiles[loop["phase"]] = phase.compiles
      records.executions[loop["phase"]] = phase.execution
      if loop["step"] < c.train.num_steps or stopping:  # Stopped inside or at the end of a
        status = "preempted" if preempt.requested else "stopped"  # phase (its checkpoint
        break  # is the resume point).
      loop["phase"] += 1
      loop["members"] = []
  return status, clock, preempt.requested


def _check_processes(c, phases) -> None:
  """A search over several processes (jax.distributed) shards every phase's members
  over all their devices; what cannot is refused before anything is compiled."""
  if jax.process_count() == 1:
    return
  if c.tune.strategy == "bayes":
    raise errors.UserError(
        f"tune.strategy='bayes' asks Optuna from one process, but this run has "
        f"{jax.process_count()}; run one search per machine that share one study through "
        "tune.storage (docs/guide/tuning.md), or use pbt, halving, random or grid")
  if phase_lib.execution_for(c, c.model.name) == "map":
    raise errors.UserError(
        f"tune.execution={c.tune.execution!r} trains {c.model.name} members one at a time "
        "on one device; a search over several processes needs tune.execution='vmap'")
  for planned in phases:
    sharding.population_mesh(c, len(planned))  # UserError when the members do not divide.


def _new_loop() -> dict[str, Any]:
  """The loop state (checkpointed as JSON) of a search that has not started."""
  return {"phase": 0, "phases": None, "rounds": 0, "next_member_id": 0, "event": 0, "step": 0,
          "members": [], "done": [], "rungs": {}, "elapsed_sec": 0.0, "lineage_count": 0,
          "global_step": 0, "best": None}


def _next_phase(c, dims, loop, study) -> bool:
  """Whether a phase is left to train; Bayesian search asks Optuna for the next round."""
  if loop["phase"] < len(loop["phases"]):
    return True
  if study is None or loop["rounds"] >= c.tune.bayes.rounds:
    return False
  loop["phases"].extend(_group(strategies.ask_round(study, dims, c, loop), c.tune.pad_widths))
  loop["rounds"] += 1
  return True


def _start_members(loop, lineage) -> None:
  """The members of the current phase, from its planned settings (lineage: init)."""
  loop["members"], loop["step"] = [], 0
  for s in loop["phases"][loop["phase"]]:
    trial = s.get("__trial__")
    s = {k: v for k, v in s.items() if k != "__trial__"}
    loop["members"].append(strategies.new_member(loop, s, step=0, trial=trial))
    lineage.write(event="init", member=loop["members"][-1]["id"], parent=None, step=0,
                  phase=loop["phase"], before=None, after=s, score=None, trial=trial)


def _train_interval(c, phase: Phase, pop, acc, loop, records: "_Records"):
  """Trains every active member train.eval_every_steps steps, then evaluates and logs."""
  members = loop["members"]
  t0 = time.perf_counter()
  active = phase.active(members)
  for _ in range(c.train.eval_every_steps // phase.steps_per_call):
    pop, acc = phase.train(pop, acc, active)
  loop["step"] += c.train.eval_every_steps
  loop["global_step"] += c.train.eval_every_steps
  train_metrics = phase.member_metrics(acc, "train/")
  seconds = time.perf_counter() - t0
  acc = phase.fresh_sums(len(members))
  eval_metrics = phase.evaluate(pop)
  mode = config_lib.mode_of(c.tune.metric)
  for m, e in zip(members, eval_metrics):
    if m["active"]:
      m["last_eval"], m["score"] = e, cadence.signed(e[c.tune.metric], mode)
      m["history"].append([loop["step"], m["score"]])
  records.evaluation(c, loop, members, train_metrics, eval_metrics, seconds, phase.execution)
  return pop, acc


class _Clock:
  """Training time across sessions (loop['elapsed_sec']), and the checkpoint saves."""

  def __init__(self):
    self.start, self.trained = time.perf_counter(), False

  def save(self, ckpts, loop, records: "_Records", items) -> None:
    loop["elapsed_sec"] += time.perf_counter() - self.start
    self.start = time.perf_counter()
    loop["lineage_count"] = records.lineage.count  # Lineage events past a checkpoint are redone.
    records.sync()  # What the checkpoint counts is on storage before it commits.
    ckpts.save(loop["global_step"], items, loop)  # Phase.checkpoint_items

  def stop(self, loop) -> None:
    if self.trained:  # A rerun of a finished search adds no training time.
      loop["elapsed_sec"] += time.perf_counter() - self.start


class _Records:
  """Where a search's numbers go: metrics.jsonl, tune/lineage.jsonl, TensorBoard (the
  root run: population summaries; members/NNNN: each member's curves at its own steps,
  its lineage events as text, its hparams session) and the progress lines."""

  def __init__(self, workdir: Path, c, loop, resumed: bool):
    main = distributed.is_main()  # Other processes count lineage events but write nothing.
    self.c, self.loop = c, loop
    self.lineage = lineage_lib.Lineage(workdir / "tune" / "lineage.jsonl",
                                       keep=loop["lineage_count"], write=main,
                                       listener=self._lineage_event if main else None)
    null = None if main else distributed.NullWriter()
    self.log = null or writers.MetricsLog(workdir, loop["global_step"] if resumed else -1)
    workdir_lib.write_provenance(workdir, c.model.name)  # Once the records were checked.
    # No root hparams session: the HParams view compares the members' sessions.
    self.tensorboard = null or writers.TensorBoard(workdir, None, [])
    self.progress = null or _Progress(c, loop)
    self.member_tags: set[str] = set()  # Scalar tags of the member runs (hparams metrics).
    self.compiles: dict[int, int] = {}
    self.executions: dict[int, str] = {}  # 'vmap' or 'map' per phase (tune.execution=auto).

  def evaluation(self, c, loop, members, train_metrics, eval_metrics, seconds,
                 execution: str) -> None:
    """One metrics.jsonl record (per-member lists), TensorBoard scalars (population
    summaries in the root run, each trained member's metrics in its own run at the
    number of steps it has trained) and a progress line."""
    active = sum(m["active"] for m in members)
    record = {"phase": loop["phase"], "phase_step": loop["step"], "execution": execution,
              "steps_per_sec": c.train.eval_every_steps / seconds,
              "member_steps_per_sec": c.train.eval_every_steps * active / seconds,
              "member_ids": [m["id"] for m in members]}
    record.update({k: [m[k] for m in train_metrics] for k in train_metrics[0]})
    record.update({k: [m[k] for m in eval_metrics] for k in eval_metrics[0]})
    scores = [m["score"] if m["score"] is not None else math.nan for m in members]
    finite = [i for i, s in enumerate(scores) if not math.isnan(s) and not math.isinf(s)]
    if finite:
      best = max(finite, key=lambda i: scores[i])
      record[f"best/{c.tune.metric}"] = eval_metrics[best][c.tune.metric]
      record["best/member"] = members[best]["id"]
    self.log.write(loop["global_step"], record)
    self.tensorboard.write(loop["global_step"], {
        **{k: v for k, v in record.items() if isinstance(v, float)},
        "members/active": active, "members/finite": len(finite)})
    for m, t, e in zip(members, train_metrics, eval_metrics):
      if m["active"]:  # A stopped member trained nothing this interval: no new point.
        self.member_tags.update(t)
        self.member_tags.update(e)
        self.tensorboard.write(loop["step"] - m["created_step"], {**t, **e}, _run(m["id"]))
    self.progress.update(members, eval_metrics, record)

  def _lineage_event(self, event: dict[str, Any]) -> None:
    """A member's lineage event in its TensorBoard run: exploits, culls and stops as text
    at the member's step; the end of a member (its phase's `final`, or the `refill` that
    replaces it) writes its hparams session with the settings it ended with."""
    kind, member = event["event"], event["member"]
    if kind == "final":
      self._session(member, event["after"])
    elif kind == "refill":
      self._session(event["replaces"], event["before"])
      self.tensorboard.text(0, "lineage", f"refill: replaces member {event['replaces']}",
                            _run(member))
    elif kind in ("exploit", "cull", "stop"):
      born = next((m["created_step"] for m in self.loop["members"] if m["id"] == member), 0)
      metric, sign = self.c.tune.metric, -1 if config_lib.mode_of(self.c.tune.metric) == "min" else 1
      value = lambda score: "nan" if score is None else f"{sign * score:.4g}"
      if kind == "exploit":
        changed = ", ".join(f"{k} {event['before'].get(k)!r} -> {v!r}"
                            for k, v in event["after"].items() if event["before"].get(k) != v)
        text = (f"exploit at step {event['step']}: {metric} {value(event['score'])}; copied "
                f"member {event['parent']} ({value(event['parent_score'])}); {changed}")
      elif kind == "cull":
        text = f"culled at rung {event['rung']}: {metric} {value(event['score'])}"
      else:
        text = f"stopped ({event.get('reason', 'early stopping')}): {metric} {value(event['score'])}"
      self.tensorboard.text(event["step"] - born, "lineage", text, _run(member))

  def _session(self, member: int, settings: dict[str, Any]) -> None:
    self.tensorboard.session(_run(member), writers.hparams_for_tensorboard(settings),
                             sorted(self.member_tags) or [self.c.tune.metric])

  def sync(self) -> None:
    """lineage.jsonl and metrics.jsonl on storage (object storage uploads in batches)."""
    self.lineage.sync()
    self.log.sync()

  def close(self) -> None:
    self.lineage.close()
    self.log.close()
    self.tensorboard.close()

  def __enter__(self) -> "_Records":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _Progress:
  """One line per evaluation interval on stdout (writers.say): where the search is, its
  best score so far and member, how many members are finite, member-steps per second
  and the time left. With --verbose, one line per member too."""

  def __init__(self, c, loop):
    self.c, self.loop = c, loop
    self.t0, self.done0 = time.perf_counter(), None

  def _done(self) -> tuple[float, str]:
    """(fraction of the search done, 'phase i/n' or 'round i/n')."""
    c, loop = self.c, self.loop
    in_phase = loop["step"] / c.train.num_steps
    if c.tune.strategy == "bayes":  # Rounds asked so far; a round may be several phases.
      per_round = len(loop["phases"]) / max(loop["rounds"], 1)
      total = max(per_round * c.tune.bayes.rounds, 1)
      return (loop["phase"] + in_phase) / total, f"round {loop['rounds']}/{c.tune.bayes.rounds}"
    total = max(len(loop["phases"]), 1)
    return (loop["phase"] + in_phase) / total, f"phase {loop['phase'] + 1}/{total}"

  def update(self, members, eval_metrics, record) -> None:
    if writers.verbosity() < 1:
      return
    c, loop, metric = self.c, self.loop, self.c.tune.metric
    done, where = self._done()
    if self.done0 is None:  # The first interval of this session: its start is the origin.
      self.done0 = done - c.train.eval_every_steps / c.train.num_steps / max(
          len(loop["phases"]), 1)
    now = time.perf_counter()
    rate = (done - self.done0) / max(now - self.t0, 1e-9)
    eta = (1 - done) / rate if rate > 0 else math.inf
    best = (f"best {metric}={record[f'best/{metric}']:.4g} (member {record['best/member']})"
            if f"best/{metric}" in record else f"best {metric}=nan")
    previous = loop.get("best")  # From a finished phase: better than every member now?
    if previous and previous["score"] > max(
        (m["score"] for m in members if m["score"] is not None and math.isfinite(m["score"])),
        default=-math.inf):
      best = f"best {metric}={previous['eval'][metric]:.4g} (member {previous['id']})"
    finite = sum(m["score"] is not None and math.isfinite(m["score"]) for m in members)
    writers.say(f"tune {where} step {loop['step']}/{c.train.num_steps}: {best}, "
                f"{finite}/{len(members)} finite, "
                f"{record['member_steps_per_sec']:,.0f} member-steps/s, "
                f"eta {writers.eta_text(eta)}")
    for m, e in zip(members, eval_metrics):
      settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in m["settings"].items())
      writers.say(f"  member {m['id']}{'' if m['active'] else ' (stopped)'}: "
                  f"{metric}={e[metric]:.4g} {settings}", level=2)


def _run(member: int) -> str:
  """A member's TensorBoard run, below the workdir."""
  return f"members/{member:04d}"


# --- Phases: which members train together, and what a finished phase records. ---


def _plan_initial(config, dims, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
  """Settings per phase for grid/random/pbt/halving, grouped by static settings."""
  t = config.tune
  if t.strategy == "grid":
    settings = space_lib.grid_points(dims, t.grid_points)
  else:
    settings = space_lib.sample_points(dims, t.population_size, rng)
  return _group(settings, t.pad_widths)


def _finish_phase(c, phase: Phase, pop, loop, lineage, tune_dir: Path) -> None:
  """Records final scores and exports the best member so far."""
  members = loop["members"]
  for m in members:
    lineage.write(event="final", member=m["id"], parent=None, step=loop["step"],
                  phase=loop["phase"], before=None, after=m["settings"], score=m["score"])
    # A refill that started mid-phase trained fewer steps than the others: not 'completed'.
    status = ("stopped" if not m["active"] else
              "completed" if m["created_step"] == 0 else "cut_short")
    loop["done"].append(strategies.summary(m, loop["phase"], status))
  lineage.sync()  # The export below reads the schedule back from lineage.jsonl.
  main = distributed.is_main()

  def export_to(index: int, directory: Path) -> None:
    # Every process takes part in the export's checkpoint; process 0 writes the files.
    schedule = (lineage_lib.schedule_of(lineage_lib.read(tune_dir / "lineage.jsonl"),
                                        members[index]["id"]) if main else None)
    # The phase's config: with tune.warm_start_params, its init_from (warm_start.py).
    export.export_member(phase.search_config, members[index], phase.take(pop, index),
                         directory, schedule)

  if pareto.enabled(c):  # The front (exported as it grows) and the best member of it.
    best = front_lib.finish_phase(c, members, loop, tune_dir.parent, export_to, main)
  else:
    scores = [m["score"] if m["score"] is not None and not math.isnan(m["score"])
              else -math.inf for m in members]
    best = int(np.argmax(scores))
    previous = loop.get("best")
    # A diverged member (non-finite score) is never the best, not even the only one.
    if not (math.isfinite(scores[best]) and (previous is None
                                             or scores[best] > previous["score"])):
      best = None
  if best is not None:
    loop["best"] = {"id": members[best]["id"], "score": members[best]["score"],
                    "settings": members[best]["settings"], "phase": loop["phase"],
                    "eval": members[best]["last_eval"]}
    export_to(best, tune_dir.parent / "best")
    if c.tune.soup.top_k > 0:  # The soup of the best member's phase.
      loop["soup"] = soup_lib.make(phase.search_config, phase, pop, members, best,
                                   tune_dir.parent / "soup")


def _group(settings: list[dict[str, Any]], pad_widths: bool) -> list[list[dict[str, Any]]]:
  """Settings grouped into phases by their static part (`space.static_part`)."""
  groups: dict[tuple, list] = {}
  for s in settings:
    key = space_lib.static_part({k: v for k, v in s.items() if k != "__trial__"}, pad_widths)
    groups.setdefault(key, []).append(s)
  return [groups[k] for k in sorted(groups, key=repr)]


def _result(c, loop, compiles, executions, wall_sec) -> dict[str, Any]:
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
      "execution": executions,
      "train_time_sec": loop["elapsed_sec"],
      "wall_time_sec": wall_sec,
  }



def compile_report(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`--mode=compile` of a tuning config: the memory and FLOPs of the program that trains
  the largest planned phase -- every member in one dispatch (or, with
  tune.execution=map, the member step that takes the whole population) -- not one
  member's single-run step. Nothing is allocated, trained or written.

  Raises:
    UserError: a bad config, a population that cannot fit (before compiling), or a
      program that needs more memory per device than the device has.
  """
  from jaxtrain.jobs import compile as compile_lib  # pylint: disable=g-import-not-at-top
  dims = validate(config)
  c = config
  compilation.enable_cache(c.compile.cache_dir)
  s = setup.build(c, data_pipeline="device", placement=False)
  phase_lib.check_memory(c, s)
  # Bayesian rounds are asked at run time; a sample of the space stands in for one.
  settings = max(_plan_initial(c, dims, strategies.rng_for(c.seed, 0)), key=len)
  phase = Phase(c, settings[0], s.info, s.train_data, [], [d for d in dims if d.dynamic],
                len(settings), width_choices=phase_lib.width_choices(c, dims, settings[0]))
  fn, args = phase.train_program([{"id": i, "settings": st} for i, st in enumerate(settings)])
  result = compile_lib.report(c, {"train_step": (fn, args)},
                              what=f"a population of {len(settings)} members",
                              fix="lower tune.population_size")
  result.update(population=len(settings), execution=phase.execution,
                steps_per_call=phase.steps_per_call)
  return result
