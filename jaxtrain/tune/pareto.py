"""Constrained, multi-objective ranking of tuning members (pure: numpy only).

`tune.objectives` names several metrics (each in its own direction) and
`tune.constraints` bounds some ("eval/ece <= 0.05"). Members are then ordered by
Deb's constrained Pareto order, the order of constrained NSGA-II (Deb et al.
2002, section IV-A):

1. a member with a non-finite objective or constraint value (diverged) is below
   every other and ties with the others like it: it is never on the front and
   never a parent;
2. a feasible member (every constraint met) is above every infeasible one;
3. among infeasible members, the lower total violation is higher (equal: a tie);
4. among feasible members, the lower non-dominated rank is higher (rank 0: the
   Pareto front), and within a rank the larger crowding distance (boundary
   points: infinite), so the front's ends and sparse regions are kept;
5. what is still tied (e.g. the two ends of a front, both infinitely far from
   the rest) goes to the better tune.metric, the objective WORKDIR/best/ follows.

`order_scores` turns the order into one number per member (higher is better,
NaN for a diverged member, equal for members the order ties), which PBT's
exploit, halving's promotions and the export of the best member consume as they
consume a single metric's scores. `tell_values` and `constraint_values` are
what a Bayesian search tells Optuna, whose samplers read constraints the same
way (a value <= 0 is met).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors

# Metrics a multi-objective search may name beyond config.RANKABLE_METRICS, with
# their direction; each is computed only for a search that names it.
EXTRA_METRICS = {
    "eval/ece": "min",  # Expected calibration error (eval.calibration_bins bins).
    "model/num_params": "min",  # Parameters of a member's model (its static settings).
}
_CONSTRAINT = re.compile(r"^\s*([\w/]+)\s*(<=|>=)\s*(\S+)\s*$")


@dataclasses.dataclass(frozen=True)
class Objective:
  metric: str
  mode: str  # 'max' or 'min'


@dataclasses.dataclass(frozen=True)
class Constraint:
  metric: str
  op: str  # '<=' or '>='
  bound: float

  def value(self, x: float) -> float:
    """Optuna's form: <= 0 when met, else by how much it is missed."""
    return x - self.bound if self.op == "<=" else self.bound - x

  def __str__(self) -> str:
    return f"{self.metric} {self.op} {self.bound:g}"


def enabled(config) -> bool:
  """Whether the search ranks by the constrained Pareto order (else by tune.metric)."""
  return bool(config.tune.objectives) or bool(config.tune.constraints)


def objectives_of(config) -> list[Objective]:
  """tune.objectives, or tune.metric alone when none are named."""
  names = list(config.tune.objectives) or [config.tune.metric]
  return [Objective(n, direction(n)) for n in names]


def constraints_of(config) -> list[Constraint]:
  return [parse_constraint(text) for text in config.tune.constraints]


def direction(metric: str) -> str:
  return {**config_lib.RANKABLE_METRICS, **EXTRA_METRICS}[metric]


def needed(config) -> set[str]:
  """The metrics a search's ranking reads (objectives and constrained metrics)."""
  if not enabled(config):
    return {config.tune.metric}
  return ({o.metric for o in objectives_of(config)}
          | {c.metric for c in constraints_of(config)})


def parse_constraint(text: str) -> Constraint:
  """'METRIC <= NUMBER' or 'METRIC >= NUMBER'.

  Raises:
    UserError: another form, an unknown metric or a bound that is not a finite number.
  """
  known = {**config_lib.RANKABLE_METRICS, **EXTRA_METRICS}
  form = "write 'METRIC <= NUMBER' or 'METRIC >= NUMBER', e.g. 'eval/ece <= 0.05'"
  match = _CONSTRAINT.match(text) if isinstance(text, str) else None
  if match is None:
    raise errors.UserError(f"tune.constraints has {text!r}: {form}")
  metric, op, bound = match.groups()
  if metric not in known:
    raise errors.unknown_choice("tune.constraints metric", metric, tuple(known))
  try:
    value = float(bound)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise errors.UserError(f"tune.constraints has {text!r}: its bound {bound!r} is not a "
                           f"finite number; {form}")
  return Constraint(metric, op, value)


def check(config) -> None:
  """tune.objectives and tune.constraints, before anything is compiled.

  Raises:
    UserError: an unknown or repeated objective, a bad constraint, or a tune.metric
      that is not one of the objectives (it names the one the progress lines,
      early stopping and WORKDIR/best/ follow).
  """
  t = config.tune
  known = {**config_lib.RANKABLE_METRICS, **EXTRA_METRICS}
  names = list(t.objectives)
  for name in names:
    if not isinstance(name, str) or name not in known:
      raise errors.unknown_choice("tune.objectives", name, tuple(known))
  if len(set(names)) != len(names):
    raise errors.UserError(f"tune.objectives={tuple(names)} names a metric twice; "
                           "name each once")
  if names and t.metric not in names:
    raise errors.UserError(
        f"tune.metric={t.metric!r} is not one of tune.objectives={tuple(names)}: it names "
        "the objective that WORKDIR/best/, early stopping and the progress lines follow; "
        f"set tune.metric to one of them (e.g. --config.tune.metric={names[0]})")
  constraints_of(config)


def point(objectives: Sequence[Objective], constraints: Sequence[Constraint],
          evals: dict[str, float]) -> tuple[list[float], float]:
  """(objective values signed so that higher is better, total violation) of one member.

  A missing or non-finite value gives NaN there (a diverged member).
  """
  def get(metric):
    value = evals.get(metric)
    return float(value) if value is not None else math.nan
  signed = [get(o.metric) if o.mode == "max" else -get(o.metric) for o in objectives]
  values = [c.value(get(c.metric)) for c in constraints]
  violation = sum(max(v, 0.0) for v in values) if all(map(math.isfinite, values)) else math.nan
  return signed, violation


def points(objectives, constraints, evals: Sequence[dict[str, float]]):
  """`point` of each member: ([N, K] signed values, [N] violations) as arrays."""
  pairs = [point(objectives, constraints, e) for e in evals]
  values = np.asarray([p[0] for p in pairs], np.float64).reshape(len(pairs), len(objectives))
  return values, np.asarray([p[1] for p in pairs], np.float64)


def failed(values_NxK: np.ndarray, violation_N: np.ndarray) -> np.ndarray:
  """Members with a non-finite objective or violation (diverged): [N] bool."""
  return ~(np.isfinite(values_NxK).all(axis=1) & np.isfinite(violation_N))


def nondominated_ranks(values_NxK: np.ndarray) -> np.ndarray:
  """Non-dominated sorting (higher is better on every column): rank 0 is the Pareto
  front, rank r the front of what is left after ranks < r are removed. [N] ints.

  By hand (O(N^2 K), N is a population): Optuna's version is private API.
  """
  n = len(values_NxK)
  v = values_NxK[:, None, :]
  w = values_NxK[None, :, :]
  dominates = (v >= w).all(-1) & (v > w).any(-1)  # [i, j]: i dominates j.
  ranks = np.full(n, -1, np.int64)
  left = np.ones(n, bool)
  rank = 0
  while left.any():
    dominated = (dominates[left][:, left]).any(axis=0)
    current = np.flatnonzero(left)[~dominated]
    ranks[current] = rank
    left[current] = False
    rank += 1
  return ranks


def crowding(values_NxK: np.ndarray) -> np.ndarray:
  """NSGA-II's crowding distance of each point within its set: per objective, the gap
  between the nearest distinct values below and above (over that objective's range),
  summed; a point holding an objective's extreme value gets infinity. Identical
  points get the same distance (neighbours are distinct values, not sort positions)."""
  n, k = values_NxK.shape
  out = np.zeros(n)
  for j in range(k):
    col = values_NxK[:, j]
    distinct = np.unique(col)
    span = distinct[-1] - distinct[0] if n else 0.0
    pos = np.searchsorted(distinct, col)
    edge = (pos == 0) | (pos == len(distinct) - 1)
    lower = distinct[np.maximum(pos - 1, 0)]
    upper = distinct[np.minimum(pos + 1, len(distinct) - 1)]
    gap = (upper - lower) / span if span > 0 else np.zeros(n)
    out += np.where(edge, np.inf, gap)
  return out


def order_keys(values_NxK: np.ndarray, violation_N: np.ndarray,
               primary: int = 0) -> list[tuple]:
  """Each member's place in the constrained Pareto order as a tuple, lower is better:
  (0, rank, -crowding, -value) feasible, (1, violation, 0, -value) infeasible,
  (2, 0, 0, 0) diverged; value: the signed objective `primary` (tune.metric's column)."""
  bad = failed(values_NxK, violation_N)
  feasible = ~bad & (violation_N <= 0)
  keys: list[tuple] = [(2, 0.0, 0.0, 0.0)] * len(values_NxK)
  ok = np.flatnonzero(feasible)
  if len(ok):
    ranks = nondominated_ranks(values_NxK[ok])
    for r in np.unique(ranks):
      members = ok[ranks == r]
      for i, d in zip(members, crowding(values_NxK[members])):
        keys[i] = (0, float(r), -float(d), -float(values_NxK[i, primary]))
  for i in np.flatnonzero(~bad & ~feasible):
    keys[i] = (1, float(violation_N[i]), 0.0, -float(values_NxK[i, primary]))
  return keys


def order_scores(values_NxK: np.ndarray, violation_N: np.ndarray,
                 primary: int = 0) -> np.ndarray:
  """One score per member from the constrained Pareto order: higher is better, equal
  for members the order ties, NaN for a diverged member. [N] float64."""
  keys = order_keys(values_NxK, violation_N, primary)
  distinct = sorted(set(k for k in keys if k[0] != 2))
  place = {k: i for i, k in enumerate(distinct)}
  return np.asarray([-float(place[k]) if k[0] != 2 else math.nan for k in keys])


def front(values_NxK: np.ndarray, violation_N: np.ndarray) -> list[int]:
  """Indices of the Pareto front: the feasible, finite members no feasible member
  dominates (empty when none is feasible, as Optuna's `best_trials`)."""
  return [i for i, k in enumerate(order_keys(values_NxK, violation_N))
          if k[0] == 0 and k[1] == 0]


def scores_of(config, evals: Sequence[dict[str, float]]) -> list[float]:
  """`order_scores` of members by their eval metrics (NaN: diverged)."""
  objectives = objectives_of(config)
  values, violation = points(objectives, constraints_of(config), evals)
  primary = [o.metric for o in objectives].index(config.tune.metric)
  return [float(s) for s in order_scores(values, violation, primary)]


def promotions(recorded: list[dict[str, float]], arrivals: list[tuple[int, dict]],
               eta: int, config) -> set[int]:
  """Successive halving's promotions (`strategies.promotions`' rule) by the
  constrained Pareto order of every member recorded at the rung.

  `recorded` holds the eval metrics of the members that reached the rung before
  and is extended with the arrivals'; `arrivals` are (member id, eval metrics).
  The top max(1, n // eta) of all n recorded (ties: earlier arrivals, then the
  lower member id) are kept; a diverged member never is.
  """
  arrivals = sorted(arrivals, key=lambda a: a[0])
  first = len(recorded)
  recorded.extend(dict(e) for _, e in arrivals)
  scores = scores_of(config, recorded)
  ranked = np.nan_to_num(np.asarray(scores), nan=-np.inf)
  keep = max(1, len(recorded) // eta)
  top = sorted(range(len(recorded)), key=lambda j: (-ranked[j], j))[:keep]
  return {arrivals[j - first][0] for j in top if j >= first and math.isfinite(ranked[j])}


def describe(config, evals: dict[str, float]) -> dict[str, Any]:
  """A member's objective values, constraint values and feasibility (result.json)."""
  objectives, constraints = objectives_of(config), constraints_of(config)
  _, violation = point(objectives, constraints, evals)
  return {"objectives": {o.metric: evals.get(o.metric) for o in objectives},
          "violation": violation, "feasible": bool(violation <= 0)}


def tell_values(config, evals: dict[str, float]) -> list[float] | None:
  """The objective values Optuna is told (each in its own direction), or None when
  one of them or of the constrained metrics is not finite (a failed trial)."""
  objectives, constraints = objectives_of(config), constraints_of(config)
  values, violation = point(objectives, constraints, evals)
  if not (all(map(math.isfinite, values)) and math.isfinite(violation)):
    return None
  return [float(evals[o.metric]) for o in objectives]


def constraint_values(config, evals: dict[str, float]) -> dict[str, float]:
  """{constraint text: value} in Optuna's form (<= 0: met), for `Trial.set_constraint`."""
  return {str(c): c.value(float(evals[c.metric])) for c in constraints_of(config)}
