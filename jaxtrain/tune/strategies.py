"""What each search strategy does at an evaluation, and Optuna's ask/tell.

`act` is called by the tuning loop after every evaluation of a phase:
per-member early stopping for all strategies, exploit/explore for `pbt`,
rung culls for `halving`, and refills of stopped or culled slots for the
strategies that sample (`random`, `halving`). Bayesian search asks Optuna for a
round of settings (`ask_round`) and tells it the scores when the round ends.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.jobs import cadence
from jaxtrain.tune import population as pop_lib
from jaxtrain.tune import space as space_lib
from jaxtrain.tune.phase import Phase


def rng_for(seed: int, *counters: int) -> np.random.Generator:
  """A host RNG derived from (seed, counters): no RNG state to checkpoint."""
  return np.random.default_rng([seed, *counters])


def new_member(loop: dict, settings: dict[str, Any], step: int, trial: int | None = None) -> dict:
  member = {"id": loop["next_member_id"], "settings": dict(settings), "active": True,
            "score": None, "best_score": None, "evals_since_best": 0, "history": [],
            "last_eval": {}, "created_step": step, "trial": trial}
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
    pop, parents, exploited = phase.exploit(pop, [m["score"] for m in members], loop["event"])
    new_values = phase.dynamic_of(pop)
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
      promoted = promotions(recorded, [(m["id"], m["score"]) for m in arrived], eta)
      for m in arrived:
        if m["id"] not in promoted:
          m["active"] = False
          lineage.write(event="cull", member=m["id"], parent=None, step=step,
                        phase=loop["phase"], before=m["settings"], after=None,
                        score=m["score"], rung=rung)
  if strategy in ("halving", "random"):
    rng = rng_for(c.seed, 1, loop["event"])
    static = {k: v for k, v in members[0]["settings"].items() if k not in space_lib.DYNAMIC_KEYS}
    for i, m in enumerate(members):
      if m["active"]:
        continue
      loop["done"].append(summary(m, loop["phase"], status="culled" if strategy == "halving"
                                   else "stopped"))
      settings = {**static, **{d.key: d.sample(rng) for d in dynamic_dims}}
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


def open_study(c, tune_dir: Path, rounds_done: int = 0):
  """The Optuna study of a Bayesian search (WORKDIR/tune/optuna.db), created or resumed.

  `rounds_done`: rounds the checkpoint being resumed has asked; with rounds done the
  study must exist (a new empty one would silently forget every trial told).

  The study optimises `tune.metric` itself, in its own direction: Optuna is told
  the metric's values (e.g. eval/loss, minimised), so `study.best_trial` is the
  trial with the best metric as Optuna defines it.

  Raises:
    UserError: the stored study optimises the other direction (written by an older
      jaxtrain that maximised every metric); it cannot be continued.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  direction = "maximize" if config_lib.mode_of(c.tune.metric) == "max" else "minimize"
  path = tune_dir / "optuna.db"
  fix = ("it holds the trials of the rounds done: restore it, or start the search over in "
         "a new --workdir")
  if rounds_done and not path.is_file():
    raise errors.UserError(f"{path} is missing, but the checkpoint being resumed has asked "
                           f"{rounds_done} rounds of it: {fix}")
  try:
    study = optuna.create_study(study_name="jaxtrain", storage=f"sqlite:///{path}",
                                direction=direction, load_if_exists=True)
    told = len(study.get_trials(deepcopy=False))
  except Exception as e:  # pylint: disable=broad-except
    # SQLAlchemy and Optuna raise many types for a damaged database file.
    raise errors.UserError(f"{path} cannot be read as an Optuna study ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:160]}): {fix}") from None
  if rounds_done and not told:
    raise errors.UserError(f"{path} holds no trials, but the checkpoint being resumed has "
                           f"asked {rounds_done} rounds of it: {fix}")
  if study.direction.name.lower() != direction:
    raise errors.UserError(
        f"{path} holds a study that {study.direction.name.lower()}s {c.tune.metric}, but "
        f"{c.tune.metric} is to {direction} (the study was written by an older jaxtrain); "
        "start the search in a new --workdir")
  return study


def tell_round(study, members: list[dict], metric: str) -> None:
  """Tells Optuna each member's final `metric` (non-finite: a failed trial).

  A trial already finished is left as it is (told by `reconcile`, or by a run that
  was killed right after telling).
  """
  import optuna  # pylint: disable=g-import-not-at-top
  for m in members:
    value = m["last_eval"].get(metric)
    if value is None or not math.isfinite(value):
      study.tell(m["trial"], state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    else:
      study.tell(m["trial"], value, skip_if_finished=True)


def reconcile(study, loop: dict, metric: str) -> None:
  """Tells Optuna the trials the checkpointed loop finished but the study still holds
  as RUNNING (the run was killed between its checkpoint and `tell_round`)."""
  import optuna  # pylint: disable=g-import-not-at-top
  running = {t.number for t in study.get_trials(deepcopy=False,
                                                 states=(optuna.trial.TrialState.RUNNING,))}
  finished = {}
  for row in loop["done"]:
    if row.get("trial") in running:
      finished[row["trial"]] = {"trial": row["trial"], "last_eval": row["eval"]}
  tell_round(study, list(finished.values()), metric)


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


def ask_round(study, dims, c, loop) -> list[dict[str, Any]]:
  """Asks Optuna for one round of settings (TPE, seeded by the round: restartable)."""
  import optuna  # pylint: disable=g-import-not-at-top
  # Trials asked by a run that died before its first checkpoint of the round.
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
  # Seeded by (seed, round): a restarted round asks the same settings, and runs with
  # neighbouring seeds do not share samplers (seed + phase did: seed 0's round 1 was
  # seed 1's round 0).
  sampler_seed = int(rng_for(c.seed, 2, loop["rounds"]).integers(2**31 - 1))
  study.sampler = optuna.samplers.TPESampler(seed=sampler_seed,
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


