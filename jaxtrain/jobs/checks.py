"""Validation of a whole config, before anything is compiled or written.

The schema (keys and types) is `jaxtrain.config`'s; every component checks the
values it owns (`models.check_config`, `optim.check_config`, ...). This module
sits above them all and calls each, so a mistake anywhere is one `UserError`
line that names the key and the fix. Nothing is compiled or downloaded.
"""

from __future__ import annotations

import ml_collections

from jaxtrain import config as config_lib
from jaxtrain import errors, models
from jaxtrain.analysis import options as analysis_options
from jaxtrain.core import ema, lora, losses, multistep, optim, step
from jaxtrain.data import catalog, pipeline
from jaxtrain.io import compilation, profiling, throughput
from jaxtrain.jobs import cadence, transfer
from jaxtrain.parallel import sharding


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line `UserError` for anything wrong with `config`.

  Checks the schema (unknown or missing keys, wrong types), value ranges, and
  that every named component (dataset, model, activation, optimizer, schedule,
  metric) exists.
  """
  config_lib.check_schema(config)
  config_lib.check_references(config)  # env:/file: values (secrets kept off the record).
  if not 0 <= config.seed < 2**31:  # PRNG seeds are int32 inside the programs.
    raise errors.UserError(f"seed={config.seed} must be in [0, 2**31), e.g. 0")
  check_member(config)
  pipeline.check_config(config.data)
  cadence.check_config(config)
  optim.check_config(config.optim)
  models.check_config(config.model)
  losses.check_config(config.loss)
  check_accumulation(config)
  step.check_config(config.train)
  models.check_precision(config.precision)
  multistep.check_config(config.train)
  compilation.check_config(config.compile)
  throughput.check_config(config.throughput)
  profiling.check_config(config.profile)
  for key in ("checkpoint.best_metric", "early_stopping.metric"):
    check_rankable(key, config_lib.flatten(config)[key], config)
  lora.check_config(config.model)
  ema.check_config(config.train)
  if config.eval.use_ema and not config.train.ema_decay > 0:
    raise errors.UserError(
        "eval.use_ema=True needs train.ema_decay > 0 (without it there is no average to "
        "use); set train.ema_decay (e.g. 0.99) or eval.use_ema=False")
  transfer.check_config(config.init_from)
  sharding.check_config(config.mesh)  # Sizes against devices: sharding.make_mesh.
  analysis_options.check_config(config.eval)


def check_member(config) -> None:
  """tune.member: -1, or (a single run only) the member of a search the run starts as."""
  member, strategy = config.tune.member, config.tune.strategy
  if not -1 <= member < 2**31:
    raise errors.UserError(f"tune.member={member} must be -1 (a plain run) or a member "
                           "number in [0, 2**31)")
  if member >= 0 and strategy != "none":
    raise errors.UserError(
        f"tune.member={member} is a single run's key (the member of a search it starts "
        f"as), but tune.strategy={strategy!r} numbers its own members; set tune.member=-1")
  cv = config.eval.cross_validation
  if member >= 0 and (cv.folds or cv.holdout_fraction):
    raise errors.UserError(
        f"tune.member={member} is a single run's key, but eval.cross_validation trains one "
        "member per fold from the run's own seed; set tune.member=-1")


def check_accumulation(config) -> None:
  """Schedules count optimizer updates; train.num_steps and the intervals count
  micro-steps (train.num_steps / optim.accumulate_steps updates in all)."""
  k, steps = config.optim.accumulate_steps, config.train.num_steps
  if steps % k:
    raise errors.UserError(
        f"train.num_steps={steps} is not a multiple of optim.accumulate_steps={k}: the last "
        f"{steps % k} micro-steps would never make an update; use {steps - steps % k} or "
        f"{steps - steps % k + k}")
  updates = steps // k
  warmup = config.optim.schedule.warmup_steps
  if warmup >= updates:
    unit = (f"the run's {updates} optimizer updates (train.num_steps={steps} / "
            f"optim.accumulate_steps={k}; schedules count updates)" if k > 1 else
            f"train.num_steps={steps}")
    raise errors.UserError(f"optim.schedule.warmup_steps={warmup} must be smaller than {unit}")


def check_rankable(key: str, metric: str, config) -> None:
  """Raises `UserError` unless `metric` is rankable and this config reports it."""
  if metric not in config_lib.RANKABLE_METRICS:
    raise errors.unknown_choice(key, metric, config_lib.RANKABLE_METRICS)
  if metric.startswith("eval/ema_") and not config.train.ema_decay > 0:
    raise errors.UserError(
        f"{key}={metric!r} needs train.ema_decay > 0 (the average is evaluated only then); "
        "set train.ema_decay (e.g. 0.99) or rank by eval/accuracy or eval/loss")
  if metric == "eval/bits_per_char" and config.model.name != "transformer":
    raise errors.UserError(
        f"{key}={metric!r} is reported for language models only (model.name='transformer', "
        f"not {config.model.name!r}); rank by eval/loss")


def validate_single_run(config: ml_collections.ConfigDict) -> None:
  """`validate`, plus what a single run needs of the machine: the dataset's splits
  exist, and the mesh fits the devices and the batch size."""
  validate(config)
  catalog.check_splits(config.data)
  sharding.check_single_run(config)
