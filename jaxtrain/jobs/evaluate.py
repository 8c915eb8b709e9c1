"""`--mode=eval`: evaluate a run's checkpoint without changing the run.

Works on any single-run workdir, including the best member a tuner exports
to WORKDIR/best/. The config comes from WORKDIR/config.json (the snapshot the
run was trained with) unless one is given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors, paths
from jaxtrain.analysis import report as report_lib, slices as slices_lib
from jaxtrain.core import ema as ema_lib, metrics, state as state_lib, step as step_lib
from jaxtrain.data import catalog, pipeline
from jaxtrain.io import checkpoint, compilation
from jaxtrain.jobs import checks, setup, workdir as workdir_lib
from jaxtrain.parallel import sharding
from jaxtrain.paths import Path


@dataclasses.dataclass
class Restored:
  """A run's checkpoint as `restore` reads it."""
  config: ml_collections.ConfigDict
  info: catalog.DatasetInfo  # The eval split's dataset info.
  recipe: setup.Recipe  # recipe.model.apply / jaxtrain.core.step.predict give logits.
  state: state_lib.TrainState  # On one device, whatever mesh it was saved on.
  step: int
  which: str  # "latest", "best" or "--step".


def restore(workdir: str | Path, step: int | str | None = None, *,
            config: ml_collections.ConfigDict | None = None, which: str = "latest") -> Restored:
  """Reads checkpoint `step` of a single-run workdir into the structure its config defines.

  `step` is a step number, "latest" or "best" (the best checkpoint by
  checkpoint.best_metric); None means `which`. The config is WORKDIR/config.json
  unless given. Nothing is unpickled: arrays are read into the shapes the
  config's model and optimizer have, and a checkpoint that does not fit is one
  `UserError` line. Nothing in the workdir is written.
  """
  workdir = paths.of(workdir)
  if config is None:  # From the workdir's record, own model included.
    workdir_lib.add_model_paths(workdir)
    config = config_lib.load_snapshot(workdir)
  checks.validate(config)
  c = config
  cv = c.eval.cross_validation
  if cv.folds or cv.holdout_fraction:  # Its checkpoints hold a population of folds.
    raise errors.UserError(f"{workdir} is a cross-validation run: its results are in "
                           f"{paths.of(workdir) / 'cv.json'}; evaluate a single run instead")
  if not has_checkpoints(workdir / "checkpoints"):
    if (workdir / "best" / "checkpoints").is_dir():
      raise errors.UserError(f"{workdir} is a tuning workdir; evaluate its best member with "
                             f"--workdir={workdir / 'best'}")
    raise errors.UserError(f"no checkpoint in {workdir / 'checkpoints'}; train first")
  compilation.enable_cache(c.compile.cache_dir)  # Before the first compile.
  _, info = catalog.split_of(c.data, c.data.eval_split)
  r = setup.recipe(c, info)
  target = workdir_lib.bundle(r.shapes(sample_batch(info)), jax.eval_shape(metrics.new_sums),
                              jax.eval_shape(step_lib.new_guard))
  restored, _, step, which = _read(workdir / "checkpoints", c, target, step, which, workdir)
  return Restored(c, info, r, restored["train_state"], step, which)


def has_checkpoints(directory: Path) -> bool:
  """Whether `directory` holds a committed checkpoint step (checked without opening a
  checkpoint manager, which would create the directory)."""
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def sample_batch(info: catalog.DatasetInfo) -> dict[str, np.ndarray]:
  """One example of zeros: the shapes a restore target is traced with."""
  return {"inputs": catalog.to_model_inputs(np.zeros((1, *info.input_shape), info.input_dtype)),
          "labels": np.zeros((1, *info.label_shape), np.int32)}


def _read(directory: Path, c, target, step, which: str, workdir: Path):
  """(restored tree, loop state, step, which) of checkpoint `step` (or `which`) under
  `directory`, read on one device into the structure of `target` (whatever mesh saved it)."""
  with checkpoint.Checkpoints(directory, keep=c.checkpoint.keep) as ckpts:
    step, which = choose_step(ckpts, step, which, workdir)
    restored, loop = ckpts.restore(step, sharding.on_one_device(target))
  return restored, loop, step, which


def choose_step(ckpts: checkpoint.Checkpoints, step: int | str | None, which: str,
                workdir: Path) -> tuple[int, str]:
  """(step, which) of the checkpoint `step` names: a number, "latest" or "best" (None:
  `which`); "best" is the latest where no evaluation ranked one (e.g. a population's).

  Raises:
    UserError: an unknown name, or a step that is not among the kept checkpoints.
  """
  if isinstance(step, str):
    step, which = None, step
  if step is None:
    if which not in ("latest", "best"):
      raise errors.UserError(f"step {which!r} is not a checkpoint name; use 'latest', 'best' "
                             "or a step number")
    step = ckpts.best_step() if which == "best" else ckpts.latest_step()
    step = step if step is not None else ckpts.latest_step()
  else:
    which = "--step"
  steps = ckpts.all_steps()
  if isinstance(step, bool) or step not in steps:  # (True == 1: not a step.)
    raise errors.UserError(f"step {step} is not a checkpoint of {workdir}; choose one of "
                           f"those kept: {', '.join(map(str, sorted(steps)))}")
  return int(step), which


def restore_population(directory: Path, config: ml_collections.ConfigDict, population,
                       step: int | str | None = None, which: str = "latest",
                       workdir: Path | None = None, shared=None):
  """(population state, step, which, loop state) of a checkpoint that holds a population
  shaped like `population` (abstract: a TrainState with a leading member axis, e.g.
  jax.eval_shape of the tuner's population.create): {"population": ..., "metric_sums":
  [members]} as jaxtrain/tune/loop.py and jaxtrain/tune/cv.py save it, read on one
  device. The caller builds the shape: the population engine lives above this layer.
  `shared` (abstract): the collections a LoRA population saves once beside it
  ("shared", tune/phase.py); then the population comes back as (population, shared)."""
  workdir = workdir or directory
  if not has_checkpoints(directory):
    raise errors.UserError(f"no checkpoint in {directory}; run {workdir} until it saves one")
  compilation.enable_cache(config.compile.cache_dir)
  size = jax.tree.leaves(population)[0].shape[0]
  target = {"population": population, "metric_sums": metrics.new_sums((size,))}
  if shared is not None:
    target["shared"] = shared
  restored, loop, step, which = _read(directory, config, target, step, which, workdir)
  if shared is not None:
    return (restored["population"], restored["shared"]), step, which, loop
  return restored["population"], step, which, loop


def run(workdir: str | Path, config: ml_collections.ConfigDict | None = None,
        step: int | str | None = None, which: str = "latest",
        report: bool = False, record: str = "eval.json") -> dict[str, Any]:
  """Evaluates checkpoint `step` (or the latest/best) of `workdir` on data.eval_split.

  `step` is a step number, "latest" or "best" (the best checkpoint by
  checkpoint.best_metric); None means `which`. With `report` (and
  eval.report), also writes WORKDIR/report/ (see jaxtrain/analysis/report.py).
  Writes WORKDIR/`record` (eval.json: `--mode=eval`'s own record; the tuner
  scores its best member on the test split into test.json) and returns
  {"step": s, "eval/accuracy": ..., ...}.
  """
  workdir = paths.of(workdir)
  if config is None:  # From the workdir's record, own model included.
    workdir_lib.add_model_paths(workdir)
    config = config_lib.load_snapshot(workdir)
  checks.validate(config)
  c = config
  eval_inputs, eval_labels = pipeline.load_eval_arrays(c.data)
  report = report and c.eval.report
  if report:  # Slices and example indices are checked before anything compiles.
    slices = slices_lib.resolve(c.eval.slice_key, c.data, eval_inputs, eval_labels)
    report_lib.check_examples(c.eval, len(eval_labels))
  run_ = restore(workdir, step, config=c, which=which)
  state, model = run_.state, run_.recipe.model
  weights = "ema" if c.eval.use_ema else "raw"
  if c.eval.use_ema:  # The average is what is scored (and reported), not an extra.
    state = ema_lib.as_params(state).replace(ema_params=None)
  eval_fn = jax.jit(functools.partial(step_lib.eval_step, model))
  batches = list(pipeline.eval_batches(eval_inputs, eval_labels, c.data.eval_batch_size))
  values = setup.evaluate(eval_fn, state, batches)  # eval/ema_* too with train.ema_decay > 0.
  result = {"step": run_.step, "split": c.data.eval_split,
            **{k: v for k, v in values.items() if not k.startswith("eval/ema_")},
            "params_sha256": state_lib.params_sha256(state.params),
            **{k: v for k, v in values.items() if k.startswith("eval/ema_")}}
  if c.train.ema_decay > 0:  # Say which parameters eval/* scored.
    result["weights"] = weights
  if not math.isfinite(result["eval/loss"]):  # Diverged parameters: every metric is NaN.
    result["diverged"] = True
  # E.g. a finished run on a read-only mount (on gs://, a refused write says so itself).
  if not paths.is_url(workdir) and not os.access(workdir, os.W_OK):
    print(f"warning: {workdir} is read-only: {record}{' and report/' if report else ''} not "
          "written; the result is printed only", file=sys.stderr)
    return result
  workdir_lib.write_json(workdir / record, result)
  if report:
    header = {"workdir": str(workdir), "step": run_.step, "checkpoint": run_.which,
              "split": c.data.eval_split, "weights": weights}
    report_lib.write(workdir, c, model, state, eval_inputs, eval_labels, run_.info, slices, header)
  return result
