"""`--mode=eval`: evaluate a run's checkpoint without changing the run.

Works on any single-run workdir, including the best member a tuner exports
to WORKDIR/best/. The config comes from WORKDIR/config.json (the snapshot the
run was trained with) unless one is given.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxtrain.io import checkpoint as checkpoint_lib
from jaxtrain.jobs import compile as compile_lib
from jaxtrain import config as config_lib
from jaxtrain import errors, models
from jaxtrain.core import ema as ema_lib, lora, optim, step as step_lib
from jaxtrain.core import metrics as metrics_lib
from jaxtrain.parallel import sharding
from jaxtrain.core import state as state_lib
from jaxtrain.data import pipeline


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config snapshot of a workdir (WORKDIR/config.json) as a ConfigDict."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise errors.UserError(f"{path} does not exist; --mode=eval needs a workdir written by "
                           "jaxtrain (or pass --config)")
  saved = config_lib.flatten(json.loads(path.read_text()))
  config = config_lib.base_config()
  defaults = config_lib.flatten(config)
  for key, value in saved.items():
    if key.startswith("tune.space.") or key not in defaults:
      continue
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = tuple(value) if isinstance(defaults[key], tuple) else value
  return config


def run(workdir: str | Path, config: ml_collections.ConfigDict | None = None,
        step: int | str | None = None, which: str = "latest",
        report: bool = False) -> dict[str, Any]:
  """Evaluates checkpoint `step` (or the latest/best) of `workdir` on data.eval_split.

  `step` is a step number, "latest" or "best" (the best checkpoint by
  checkpoint.best_metric); None means `which`. With `report` (and
  eval.report), also writes WORKDIR/report/ (see jaxtrain/analysis/report.py).
  Writes WORKDIR/eval.json and returns {"step": s, "eval/accuracy": ..., ...}.
  """
  workdir = Path(workdir)
  config = config if config is not None else load_config(workdir)
  config_lib.validate(config)
  c = config
  cv = c.eval.cross_validation
  if cv.folds or cv.holdout_fraction:  # Its checkpoints hold a population of folds.
    raise errors.UserError(f"{workdir} is a cross-validation run: its results are in "
                           f"{Path(workdir) / 'cv.json'}; evaluate a single run instead")
  compile_lib.enable_cache(c.compile.cache_dir)  # Before the first compile.
  ckpts = checkpoint_lib.Checkpoints(workdir / "checkpoints", keep=c.checkpoint.keep)
  steps = ckpts.all_steps()
  if not steps:
    if (workdir / "best" / "checkpoints").is_dir():
      raise errors.UserError(f"{workdir} is a tuning workdir; evaluate its best member with "
                             f"--workdir={workdir / 'best'}")
    raise errors.UserError(f"no checkpoint in {workdir / 'checkpoints'}; train first")
  if isinstance(step, str):
    step, which = None, step
  if step is None:
    step = ckpts.best_step() if which == "best" else ckpts.latest_step()
    step = step if step is not None else ckpts.latest_step()
  else:
    which = "--step"
  if step not in steps:
    raise errors.UserError(f"--step={step} is not a checkpoint of {workdir}; "
                           f"available: {', '.join(map(str, sorted(steps)))}")
  eval_inputs, eval_labels = pipeline.load_eval_arrays(c.data)
  _, info = pipeline.catalog.open_split(c.data.name, c.data.eval_split, c.data.data_dir)
  report = report and c.eval.report
  if report:  # Slices and example indices are checked before anything compiles.
    # pylint: disable-next=g-import-not-at-top
    from jaxtrain.analysis import report as report_lib, slices as slices_lib
    slices = slices_lib.resolve(c.eval.slice_key, c.data, eval_inputs, eval_labels)
    report_lib.check_examples(c.eval, len(eval_labels))
  model = lora.maybe_wrap(models.build(c.model, info.num_classes, info.input_shape,
                                       precision=c.precision), c.model)
  tx, _ = optim.build(c.optim, c.train.num_steps)
  hparams = {"dropout_rate": c.model.dropout_rate, "label_smoothing": c.loss.label_smoothing,
             **ema_lib.hparams(c.train)}
  sample = {"inputs": eval_inputs[:1], "labels": eval_labels[:1]}
  target = jax.eval_shape(lambda: state_lib.create(model, tx, sample, hparams,
                                                   jax.random.PRNGKey(0)))
  acc = {k: jax.ShapeDtypeStruct((), jnp.float32)
         for k in ("loss", "accuracy", "grad_norm", "update_norm", "learning_rate", "count")}
  guard = jax.eval_shape(step_lib.new_guard)
  restored, _ = ckpts.restore(step, sharding.on_one_device(  # Saved on any mesh.
      {"train_state": target, "metric_sums": acc, "guard": guard}))
  ckpts.close()
  state = restored["train_state"]
  eval_fn = jax.jit(functools.partial(step_lib.eval_step, model))
  sums = None
  for batch in pipeline.eval_batches(eval_inputs, eval_labels, c.data.eval_batch_size):
    batch_sums = eval_fn(state, batch)
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  result = {"step": int(step), "split": c.data.eval_split,
            **metrics_lib.compute(sums, prefix="eval/"),
            "params_sha256": state_lib.params_sha256(state.params)}
  if state.ema_params is not None:  # train.ema_decay > 0: evaluated alongside, as in training.
    ema_sums = None
    for batch in pipeline.eval_batches(eval_inputs, eval_labels, c.data.eval_batch_size):
      batch_sums = eval_fn(ema_lib.as_params(state), batch)
      ema_sums = batch_sums if ema_sums is None else jax.tree.map(jnp.add, ema_sums, batch_sums)
    result.update(metrics_lib.compute(ema_sums, prefix="eval/ema_"))
  (workdir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
  if report:
    header = {"workdir": str(workdir), "step": int(step), "checkpoint": which,
              "split": c.data.eval_split}
    report_lib.write(workdir, c, model, state, eval_inputs, eval_labels, info, slices, header)
  return result
