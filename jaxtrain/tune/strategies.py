"""What each search strategy does at an evaluation, and Optuna's ask/tell.

`act` is called by the tuning loop after every evaluation of a phase:
per-member early stopping for all strategies, exploit/explore for `pbt`,
rung culls for `halving`, and refills of stopped or culled slots for the
strategies that sample (`random`, `halving`). Bayesian search asks Optuna for a
round of settings (`ask_round`) and tells it the scores when the round ends.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.jobs import cadence
from jaxtrain.tune import pareto
from jaxtrain.tune import space as space_lib
from jaxtrain.tune import storage as storage_lib
from jaxtrain.tune.phase import Phase
from jaxtrain.paths import Path


DUPLICATE_ATTR = "jaxtrain_duplicate"  # Trial user attribute: a setting the study held.


def rng_for(seed: int, *counters: int) -> np.random.Generator:
  """A host RNG derived from (seed, counters): no RNG state to checkpoint."""
  return np.random.default_rng([seed, *counters])


def new_member(loop: dict, settings: dict[str, Any], step: int, trial: int | None = None) -> dict:
  member = {"id": loop["next_member_id"], "settings": dict(settings), "active": True,
            "score": None, "best_score": None, "evals_since_best": 0, "history": [],
            "last_eval": {}, "created_step": step, "trial": trial,
            "origin": loop["next_member_id"]}  # Whose initialisation it carries (soups).
  loop["next_member_id"] += 1
  return member


def act(c, phase: Phase, pop, acc, loop, scores, lineage, dims, dynamic_dims):
  """What the strategy does at an evaluation; returns the (new) population."""
  members, step = loop["members"], loop["step"]
  strategy = c.tune.strategy
  loop["event"] += 1

  # A diverged member (non-finite score) stops: it would only burn compute. PBT's
  # exploit may revive it as a copy of a sound member; random search and halving
  # refill its slot with a new sample; grid and Bayes leave it stopped (a failed trial).
  for m in members:
    if m["active"] and m["score"] is not None and not math.isfinite(m["score"]):
      m["active"] = False
      lineage.write(event="stop", member=m["id"], parent=None, step=step, phase=loop["phase"],
                    before=m["settings"], after=None, score=m["score"], reason="diverged")

  # Per-member early stopping (all strategies): stopped members freeze, or are
  # refilled with a new sample by strategies that sample (random, halving).
  if c.tune.early_stopping.patience > 0:
    for m in members:
      if not m["active"]:
        continue
      m["best_score"], m["evals_since_best"] = cadence.patience_step(
          m["best_score"], m["evals_since_best"], m["score"], c.tune.early_stopping.min_delta)
      if m["evals_since_best"] >= c.tune.early_stopping.patience:
        m["active"] = False
        lineage.write(event="stop", member=m["id"], parent=None, step=step,
                      phase=loop["phase"], before=m["settings"], after=None, score=m["score"])

  if strategy == "pbt":
    before = [dict(m["settings"]) for m in members]
    # Several objectives or constraints: members rank by the constrained Pareto order.
    ranks = (pareto.scores_of(c, [m["last_eval"] for m in members]) if pareto.enabled(c)
             else [m["score"] for m in members])
    pop, parents, exploited, new_values = phase.exploit(pop, ranks, loop["event"], members)
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
      m["origin"] = parent.get("origin", parent["id"])  # The parent's initialisation now.
      # The member now is a copy of its parent: it also continues the parent's
      # early-stopping count, not its own (it would be stopped for the parent's past).
      m["active"] = parent["active"]
      m["best_score"], m["evals_since_best"] = parent["best_score"], parent["evals_since_best"]
      m["history"].append([step, "exploit", parent["id"]])
    return pop, acc

  refill = [False] * len(members)
  if strategy == "halving":
    eta, rung_steps = c.tune.halving.eta, c.tune.halving.min_steps
    arrivals: dict[int, list[dict]] = {}  # Rung -> the active members reaching it now.
    for m in members:
      rung = rung_index(step - m["created_step"], rung_steps, eta)
      if rung is not None and m["active"]:
        arrivals.setdefault(rung, []).append(m)
    for rung, arrived in sorted(arrivals.items()):
      recorded = loop["rungs"].setdefault(str(rung), [])
      promoted = (pareto.promotions(recorded, [(m["id"], m["last_eval"]) for m in arrived],
                                    eta, c) if pareto.enabled(c) else
                  promotions(recorded, [(m["id"], m["score"]) for m in arrived], eta))
      for m in arrived:
        if m["id"] not in promoted:
          m["active"] = False
          lineage.write(event="cull", member=m["id"], parent=None, step=step,
                        phase=loop["phase"], before=m["settings"], after=None,
                        score=m["score"], rung=rung)
  if strategy in ("halving", "random"):
    rng = rng_for(c.seed, 1, loop["event"])
    static = {k: v for k, v in members[0]["settings"].items()
              if k not in space_lib.DYNAMIC_KEYS and k not in space_lib.MEMBER_KEYS}
    sampled = [d for d in dims if d.per_member]  # A LoRA rank too: the program is padded.
    for i, m in enumerate(members):
      if m["active"]:
        continue
      loop["done"].append(summary(m, loop["phase"], status="culled" if strategy == "halving"
                                   else "stopped"))
      settings = {**static, **{d.key: d.sample(rng) for d in sampled},
                  **phase.sample_widths(rng)}  # A padded phase: any of its widths.
      members[i] = new_member(loop, settings, step)
      lineage.write(event="refill", member=members[i]["id"], parent=None, step=step,
                    phase=loop["phase"], before=m["settings"], after=settings, score=None,
                    replaces=m["id"])
      refill[i] = True
    if any(refill):
      pop, acc = phase.refill(pop, acc, members, refill)
  return pop, acc


def promotions(recorded: list[float], arrivals: list[tuple[int, float | None]],
               eta: int) -> set[int]:
  """The ids of the members promoted from a rung of successive halving (ASHA's rule).

  `recorded` holds the scores (higher is better) of the members that reached this
  rung before, and is extended with the arrivals' scores. `arrivals` are
  (member id, score) of the members reaching it now; they are ranked together,
  whatever their order. A member is promoted when its score is finite and among
  the top max(1, n // eta) of all n scores recorded at the rung (Li et al. 2020;
  ties at the cut go to earlier arrivals, then to the lower member id). With every
  member arriving at once this keeps exactly max(1, n // eta).
  """
  arrivals = sorted(arrivals)  # By member id: the slot order does not matter.
  first = len(recorded)
  recorded.extend(s if s is not None and math.isfinite(s) else -math.inf for _, s in arrivals)
  keep = max(1, len(recorded) // eta)
  ranked = sorted(range(len(recorded)), key=lambda j: (-recorded[j], j))[:keep]
  return {arrivals[j - first][0] for j in ranked
          if j >= first and math.isfinite(recorded[j])}


def rung_index(age: int, min_steps: int, eta: int) -> int | None:
  """k if `age` is exactly the k-th rung (min_steps * eta^k), else None."""
  k, rung = 0, min_steps
  while rung < age:
    k, rung = k + 1, rung * eta
  return k if rung == age else None


def summary(m: dict, phase: int, status: str) -> dict[str, Any]:
  return {"id": m["id"], "phase": phase, "status": status, "settings": m["settings"],
          "score": m["score"], "eval": m["last_eval"], "trial": m["trial"],
          "steps": (m["history"][-1][0] - m["created_step"]) if m["history"] else 0}


@dataclasses.dataclass
class Study:
  """A Bayesian search's Optuna study, and which of its trials are this workdir's.

  With tune.storage set, other jaxtrain processes ask and tell in the same study: this
  one marks each trial it asks with `worker` (trial user attribute
  `storage.WORKER_ATTR`) and fails or tells only those when it recovers.
  """
  optuna: Any  # optuna.study.Study
  worker: str | None  # None: WORKDIR/tune/optuna.db, every trial this workdir's.
  where: str  # The study as messages name it (never with a password).

  def owns(self, trial) -> bool:
    return self.worker is None or trial.user_attrs.get(storage_lib.WORKER_ATTR) == self.worker


def check_storage(c) -> None:
  """tune.storage and tune.study_name (`storage.check`), before anything is written."""
  storage_lib.check(c)
  if c.tune.storage and pareto.enabled(c):
    raise errors.UserError(
        "tune.storage is not supported with tune.objectives or tune.constraints yet (a "
        "multi-objective study lives in WORKDIR/tune/optuna.db); set tune.storage=''")


def open_study(c, tune_dir: Path, rounds_done: int = 0) -> Study:
  """The Optuna study of a Bayesian search, created or resumed: tune.study_name in
  tune.storage, or (tune.storage='') in WORKDIR/tune/optuna.db.

  `rounds_done`: rounds the checkpoint being resumed has asked; with rounds done the
  study must exist and hold this workdir's trials (a new empty one would silently
  forget every trial told).

  The study optimises `tune.metric` itself, in its own direction: Optuna is told
  the metric's values (e.g. eval/loss, minimised), so `study.best_trial` is the
  trial with the best metric as Optuna defines it.

  Raises:
    UserError: the storage cannot be opened, the study is missing on a resume, or it
      optimises another metric or the other direction (e.g. written by an older
      jaxtrain that maximised every metric); it cannot be continued.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  if pareto.enabled(c):  # Several objectives (or constraints): a multi-objective study.
    return _open_pareto_study(c, tune_dir, rounds_done)
  direction = "maximize" if config_lib.mode_of(c.tune.metric) == "max" else "minimize"
  if c.tune.storage:
    return _open_shared_study(c, tune_dir, rounds_done, direction)
  path = tune_dir / "optuna.db"
  study = _open_local_study(c, path, rounds_done, direction=direction)
  if study.direction.name.lower() != direction:
    raise errors.UserError(
        f"{path} holds a study that {study.direction.name.lower()}s {c.tune.metric}, but "
        f"{c.tune.metric} is to {direction} (the study was written by an older jaxtrain); "
        "start the search in a new --workdir")
  return Study(study, None, str(path))


def _open_local_study(c, path: Path, rounds_done: int, **directions):
  """The Optuna study in WORKDIR/tune/optuna.db (`directions`: Optuna's `direction=` or
  `directions=`), checked against the checkpoint's rounds; damage is one line."""
  import optuna  # pylint: disable=g-import-not-at-top
  fix = ("it holds the trials of the rounds done: restore it, or start the search over in "
         "a new --workdir")
  if rounds_done and not path.is_file():
    raise errors.UserError(f"{path} is missing, but the checkpoint being resumed has asked "
                           f"{rounds_done} rounds of it: {fix}")
  try:
    study = optuna.create_study(study_name=c.tune.study_name, storage=f"sqlite:///{path}",
                                load_if_exists=True, **directions)
    told = len(study.get_trials(deepcopy=False))
  except Exception as e:  # pylint: disable=broad-except
    # SQLAlchemy and Optuna raise many types for a damaged database file.
    raise errors.UserError(f"{path} cannot be read as an Optuna study ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:160]}): {fix}") from None
  if rounds_done and not told:
    raise errors.UserError(f"{path} holds no trials, but the checkpoint being resumed has "
                           f"asked {rounds_done} rounds of it: {fix}")
  return study


def _open_pareto_study(c, tune_dir: Path, rounds_done: int) -> Study:
  """`open_study` of a search with tune.objectives or tune.constraints: an Optuna study
  with one direction per objective (constraints travel with each trial), in
  WORKDIR/tune/optuna.db alone (a shared tune.storage is refused by `check_storage`)."""
  directions = ["maximize" if o.mode == "max" else "minimize" for o in pareto.objectives_of(c)]
  names = tuple(o.metric for o in pareto.objectives_of(c))
  path = tune_dir / "optuna.db"
  study = _open_local_study(c, path, rounds_done, directions=directions)
  studied = [d.name.lower() for d in study.directions]
  metric = study.user_attrs.get(storage_lib.METRIC_ATTR)
  if studied != directions or (metric is not None and metric != list(names)):
    raise errors.UserError(
        f"{path} holds a study of {metric or 'other objectives'} ({', '.join(studied)}), but "
        f"this search has tune.objectives={names} ({', '.join(directions)}); start the search "
        "in a new --workdir")
  if metric is None:
    study.set_user_attr(storage_lib.METRIC_ATTR, list(names))
  return Study(study, None, str(path))


def _open_shared_study(c, tune_dir: Path, rounds_done: int, direction: str) -> Study:
  """`open_study` of a storage other processes may share (tune.storage set)."""
  import optuna  # pylint: disable=g-import-not-at-top
  kind, target = storage_lib.target(c)
  name = c.tune.study_name
  where = f"{storage_lib.shown(c)}, study {name!r}"
  fix = ("it holds the trials of the rounds done: point tune.storage and tune.study_name at "
         "the study this search began in, or start the search over in a new --workdir")
  worker = storage_lib.read_worker(tune_dir)
  if rounds_done:  # Checked before anything is created (a database, a file, a study).
    if worker is None:
      raise errors.UserError(
          f"{tune_dir / storage_lib.WORKER_FILE} is missing, but the checkpoint being resumed "
          f"has asked {rounds_done} rounds of {where}: it names this workdir's trials there; "
          "restore it, or start the search over in a new --workdir")
    file = storage_lib.file_of(kind, target)
    if file is not None and not file.is_file():
      raise errors.UserError(f"{where}: {file} is missing, but the checkpoint being resumed "
                             f"has asked {rounds_done} rounds of it: {fix}")
  storage = storage_lib.open_storage(c, kind, target)
  try:
    if rounds_done:
      study = optuna.load_study(study_name=name, storage=storage)
    else:  # Processes starting together: one creates it, the others load it.
      study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                  load_if_exists=True)
    trials = study.get_trials(deepcopy=False)
  except KeyError:  # load_study: no study of that name.
    raise errors.UserError(f"{where} does not exist, but the checkpoint being resumed has "
                           f"asked {rounds_done} rounds of it: {fix}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(storage_lib.scrub(
        f"{where} cannot be read as an Optuna study ({type(e).__name__}: "
        f"{' '.join(str(e).split())[:160]}): {fix}", target)) from None
  other = "another search (of another metric) wrote it; give this one another tune.study_name"
  if study.direction.name.lower() != direction:
    raise errors.UserError(f"{where} is a study that {study.direction.name.lower()}s, but "
                           f"{c.tune.metric} is to {direction}: {other}")
  metric = study.user_attrs.get(storage_lib.METRIC_ATTR)
  if metric is not None and metric != c.tune.metric:  # Same direction, other values.
    raise errors.UserError(f"{where} holds values of {metric}, but this search tells "
                           f"{c.tune.metric}: {other}")
  if rounds_done and not any(t.user_attrs.get(storage_lib.WORKER_ATTR) == worker
                             for t in trials):
    raise errors.UserError(
        f"{where} holds none of this workdir's trials ({storage_lib.WORKER_ATTR}={worker!r}), "
        f"but the checkpoint being resumed has asked {rounds_done} rounds of it: {fix}")
  if metric is None:  # The study's first process: later ones check against it.
    study.set_user_attr(storage_lib.METRIC_ATTR, c.tune.metric)
  if worker is None:
    worker = storage_lib.new_worker(tune_dir)
  return Study(study, worker, where)


def tell_round(study: Study, members: list[dict], metric: str, config=None) -> None:
  """Tells Optuna each member's final `metric` (non-finite: a failed trial); with
  `config` of a search with tune.objectives or tune.constraints, each objective's
  value and the trial's constraints (`_tell_pareto`).

  A trial already finished is left as it is (told by `reconcile`, or by a run that
  was killed right after telling).
  """
  import optuna  # pylint: disable=g-import-not-at-top
  if config is not None and pareto.enabled(config):
    return _tell_pareto(study, members, config)
  for m in members:
    value = m["last_eval"].get(metric)
    if value is None or not math.isfinite(value):
      study.optuna.tell(m["trial"], state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    else:
      study.optuna.tell(m["trial"], value, skip_if_finished=True)


def _tell_pareto(study: Study, members: list[dict], config) -> None:
  """`tell_round` of a multi-objective study: the objectives' values, and before them
  each constraint's value in Optuna's form (<= 0: met) as the trial's constraint,
  which Optuna's samplers and `study.best_trials` read (Trial.set_constraint)."""
  import optuna  # pylint: disable=g-import-not-at-top
  storage, study_id = study.optuna._storage, study.optuna._study_id  # pylint: disable=protected-access
  for m in members:
    values = pareto.tell_values(config, m["last_eval"])
    if values is None:
      study.optuna.tell(m["trial"], state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
      continue
    # Optuna sets constraints only through a live Trial, and its ask/tell API names a
    # trial by number (a restarted run holds no Trial): the storage maps the two.
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, m["trial"])
    if storage.get_trial(trial_id).state.is_finished():
      continue
    trial = optuna.trial.Trial(study.optuna, trial_id)
    for key, value in pareto.constraint_values(config, m["last_eval"]).items():
      if f"constraints:{key}" not in storage.get_trial_system_attrs(trial_id):
        trial.set_constraint(key, value)
    study.optuna.tell(m["trial"], values, skip_if_finished=True)


def reconcile(study: Study, loop: dict, metric: str, config=None) -> None:
  """Tells Optuna the trials the checkpointed loop finished but the study still holds
  as RUNNING (the run was killed between its checkpoint and `tell_round`)."""
  import optuna  # pylint: disable=g-import-not-at-top
  running = {t.number for t in study.optuna.get_trials(
      deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if study.owns(t)}
  finished = {}
  for row in loop["done"]:
    if row.get("trial") in running:
      finished[row["trial"]] = {"trial": row["trial"], "last_eval": row["eval"]}
  tell_round(study, list(finished.values()), metric, config)


def distribution(dim: space_lib.Dimension):
  """The Optuna distribution `dim` is asked with (a choice: the index of its value)."""
  import optuna  # pylint: disable=g-import-not-at-top
  if dim.kind == "uniform":
    return optuna.distributions.FloatDistribution(dim.low, dim.high)
  if dim.kind == "loguniform":
    return optuna.distributions.FloatDistribution(dim.low, dim.high, log=True)
  if dim.kind == "int":
    return optuna.distributions.IntDistribution(int(dim.low), int(dim.high))
  # Optuna's categorical values must be scalars: tuples travel as their index.
  return optuna.distributions.CategoricalDistribution(list(range(len(dim.choices))))


def ask_round(study: Study, dims, c, loop) -> list[dict[str, Any]]:
  """Asks Optuna for one round of settings (TPE, seeded by the round: restartable)."""
  import optuna  # pylint: disable=g-import-not-at-top
  # Trials this workdir asked in a run that died before its first checkpoint of the
  # round. Its own only: in a shared study, other processes' RUNNING trials are training.
  for trial in study.optuna.get_trials(deepcopy=False,
                                       states=(optuna.trial.TrialState.RUNNING,)):
    if study.owns(trial):
      study.optuna.tell(trial.number, state=optuna.trial.TrialState.FAIL)
  # Seeded by (seed, round): a restarted round asks the same settings (in a shared study,
  # as far as the others' trials allow), and runs with neighbouring seeds do not share
  # samplers (seed + phase did: seed 0's round 1 was seed 1's round 0). Processes sharing
  # a study run one command with one seed: the worker's salt keeps their samples apart.
  sampler_seed = int(rng_for(c.seed, 2, loop["rounds"], *storage_lib.salt(study.worker))
                     .integers(2**31 - 1))
  study.optuna.sampler = optuna.samplers.TPESampler(seed=sampler_seed,
                                                    n_startup_trials=c.tune.population_size)
  settings = []
  known = _known_settings(study.optuna)
  for _ in range(c.tune.population_size):
    trial = _ask_new(study, {d.key: distribution(d) for d in dims}, known)
    s = {}
    for d in dims:
      value = trial.params[d.key]
      s[d.key] = d.choices[value] if d.kind == "choice" else value
    s["__trial__"] = trial.number
    settings.append(s)
  return settings


_ASK_TRIES = 50  # Asks for a setting the study does not hold, before one is taken anyway.


def _params_key(params: dict[str, Any]) -> tuple:
  return tuple(sorted(params.items()))


def _known_settings(study) -> set[tuple]:
  """The settings of every trial the study holds that finished (COMPLETE) or is being
  trained (RUNNING), the warm start's included."""
  import optuna  # pylint: disable=g-import-not-at-top
  states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
  return {_params_key(t.params) for t in study.get_trials(deepcopy=False, states=states)}


def _ask_new(study: Study, distributions, known: set[tuple]):
  """A trial whose settings the study does not hold yet (`known`, updated). A sampler
  may propose a held setting (a choice space, a warm start's trials): that trial is
  failed, marked DUPLICATE_ATTR (a failed trial informs no sampler: the held one keeps
  its single vote) and the sampler asked again; after _ASK_TRIES the setting is taken
  (a space with fewer settings than the search asks)."""
  import optuna  # pylint: disable=g-import-not-at-top
  sampler, trial = study.optuna.sampler, None
  for attempt in range(_ASK_TRIES):
    if attempt:  # TPE proposes the argmax of its model: asked again, in a choice space,
      # it proposes the same held setting. Retries draw at random (seeded by the study).
      study.optuna.sampler = optuna.samplers.RandomSampler(seed=trial.number)
    try:
      trial = study.optuna.ask(distributions)
    finally:
      study.optuna.sampler = sampler
    if study.worker is not None:
      # Marked at once (Optuna's ask takes no attributes): a kill between the two calls
      # would leave a RUNNING trial no process recognises as its own.
      trial.set_user_attr(storage_lib.WORKER_ATTR, study.worker)
    key = _params_key(trial.params)
    if key not in known or attempt == _ASK_TRIES - 1:
      known.add(key)
      return trial
    trial.set_user_attr(DUPLICATE_ATTR, True)
    study.optuna.tell(trial.number, state=optuna.trial.TrialState.FAIL)
  raise AssertionError("unreachable")
