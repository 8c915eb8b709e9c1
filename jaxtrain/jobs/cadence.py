"""When the loops act: "is it time?" questions, and the trackers they consult.

The loops (`train.run`, the tuner, cross-validation) do not decide when to log,
evaluate, save or stop: they ask. `Cadence` answers for a step (every-N with a
last-step rule, and how many steps the next dispatch may take), `Best` says
whether an evaluation is the best so far, and `EarlyStopping` whether patience
has run out. `Best` and `EarlyStopping` keep their state in the loop-state dict
that is checkpointed as JSON, so a resumed run continues with the same counts.
"""

from __future__ import annotations

import math
from typing import Any

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.core import multistep


def check_config(config) -> None:
  """Raises `UserError` for a bad interval, checkpoint count or early-stopping value."""
  for key in ("num_steps", "eval_every_steps", "log_every_steps"):
    errors.check_positive(f"train.{key}", config.train[key])
  for key in ("every_steps", "keep"):
    errors.check_positive(f"checkpoint.{key}", config.checkpoint[key])
  for key in ("patience", "min_delta"):
    errors.check_nonnegative(f"early_stopping.{key}", config.early_stopping[key])


def itstime(step: int, every: int, last: int | None = None) -> bool:
  """Whether `step` is a multiple of `every`, or the `last` step."""
  return step % every == 0 or step == last


def signed(value: float, mode: str) -> float:
  """A metric as a score where higher is better (`mode` 'max' or 'min'); NaN stays NaN."""
  return value if mode == "max" else -value


def patience_step(best: float | None, since: int, score: float | None,
                  min_delta: float) -> tuple[float | None, int]:
  """(best, evaluations since best) after one more evaluation with `score`.

  A finite score that beats `best` by more than `min_delta` is the new best;
  anything else (no score, NaN, Inf, too small a gain) counts one more
  evaluation without improvement.
  """
  if score is not None and math.isfinite(score) and (best is None or score > best + min_delta):
    return score, 0
  return best, since + 1


class Cadence:
  """The periodic actions of a single run, asked step by step."""

  def __init__(self, config, stop_after_steps: int | None = None):
    self.num_steps = config.train.num_steps
    self.log_every = config.train.log_every_steps
    self.eval_every = config.train.eval_every_steps
    self.save_every = config.checkpoint.every_steps
    self.steps_per_call = config.train.steps_per_call
    self.stop_after = stop_after_steps

  def call_size(self, step: int) -> int:
    """Steps in the dispatch after `step`: K (train.steps_per_call) when the call ends at
    or before the next step that logs, evaluates, saves or stops, else 1."""
    stop = multistep.next_stop(step, (self.log_every, self.eval_every, self.save_every),
                               (self.num_steps, self.stop_after))
    return multistep.call_size(step, self.steps_per_call, stop)

  def is_end(self, step: int) -> bool:
    return step == self.num_steps

  def is_stop(self, step: int) -> bool:
    """The last step of the run or of this session (`stop_after_steps`)."""
    return self.is_end(step) or step == self.stop_after

  def is_log(self, step: int) -> bool:
    return itstime(step, self.log_every, self.num_steps)

  def is_eval(self, step: int) -> bool:
    return itstime(step, self.eval_every, self.num_steps)

  def is_save(self, step: int) -> bool:
    return itstime(step, self.save_every, self.num_steps)

  def host_waits(self, step: int) -> bool:
    """Whether the loop waits for the host after `step` anyway (it logs, evaluates, saves
    or stops): where the processes of a multi-process run agree on a preemption."""
    return (self.is_log(step) or self.is_eval(step) or self.is_save(step)
            or self.is_stop(step))


class Best:
  """The best evaluation so far by one rankable metric (e.g. checkpoint.best_metric).

  State: `best_score` (signed: higher is better), `best_step`, `best_eval` in `store`.
  """

  def __init__(self, metric: str, store: dict[str, Any]):
    self.metric, self.mode, self.store = metric, config_lib.mode_of(metric), store

  def score(self, values: dict[str, float]) -> float:
    return signed(values[self.metric], self.mode)

  def update(self, step: int, values: dict[str, float]) -> bool:
    """Records `values` if they are the best so far (finite only); returns whether."""
    score, best = self.score(values), self.store["best_score"]
    if math.isfinite(score) and (best is None or score > best):
      self.store.update(best_score=score, best_step=step, best_eval=values)
      return True
    return False

  def record(self) -> dict[str, Any]:
    """{'metric', 'step', **values} of the best evaluation, as final.json holds it."""
    return {"metric": self.metric, "step": self.store["best_step"], **self.store["best_eval"]}


class EarlyStopping:
  """Stops after `patience` evaluations without an improvement of more than `min_delta`.

  State: `stop_best` and `evals_since_best` in `store`. Patience 0 never stops.
  """

  def __init__(self, early_stopping_config, store: dict[str, Any]):
    self.metric = early_stopping_config.metric
    self.mode = config_lib.mode_of(self.metric)
    self.patience = early_stopping_config.patience
    self.min_delta = early_stopping_config.min_delta
    self.store = store

  def update(self, values: dict[str, float]) -> bool:
    """Counts one evaluation; returns whether the run should stop now."""
    best, since = patience_step(self.store.get("stop_best"), self.store["evals_since_best"],
                                signed(values[self.metric], self.mode), self.min_delta)
    self.store.update(stop_best=best, evals_since_best=since)
    return 0 < self.patience <= since


def new_loop_state() -> dict[str, Any]:
  """The checkpointed loop state of a single run before its first evaluation."""
  return {"best_score": None, "best_step": None, "best_eval": {},
          "stop_best": None, "evals_since_best": 0, "elapsed_sec": 0.0}
