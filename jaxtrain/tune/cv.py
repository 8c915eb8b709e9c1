"""k-fold cross-validation (or a holdout split) of one config, trained as one population.

`run(config, workdir)` with `config.eval.cross_validation.folds = k` trains the
k folds of `data.train_split` as one vmapped population (`folds.py`: members
differ only by their fold mask), scores each member on its held-out fold every
`train.eval_every_steps`, and reports the mean and standard deviation of the
metrics across folds. `eval.cross_validation.holdout_fraction = f` (with
folds = 0) trains one member on a random (1 - f) of the split and scores it on
the rest. Writes WORKDIR/config.json, WORKDIR/metrics.jsonl (per-fold lists,
means and standard deviations), WORKDIR/checkpoints/ and WORKDIR/cv.json (the
result).

Like a single run, a cross-validation run checkpoints every
`checkpoint.every_steps`, on SIGTERM/SIGINT and at `stop_after_steps`, and
rerunning it resumes bitwise (the per-fold data orders are recomputed from the
step, so only the population and the partial metric sums are saved). A
workdir holding a run with another config is refused.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain.io import checkpoint as checkpoint_lib
from jaxtrain import config as config_lib
from jaxtrain import errors, models
from jaxtrain.core import lora, optim
from jaxtrain.io import preemption, writers
from jaxtrain.jobs import train, transfer
from jaxtrain.data import catalog, pipeline, subset
from jaxtrain.tune import folds as folds_lib
from jaxtrain.tune import phase as phase_lib
from jaxtrain.tune import population as pop_lib

METRICS = ("accuracy", "loss")


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` asks for cross-validation (or a holdout split)."""
  cv = config.eval.cross_validation
  return cv.folds != 0 or cv.holdout_fraction != 0.0


def validate(config: ml_collections.ConfigDict) -> int:
  """Raises a one-line `UserError` before any compile; returns the training split's size."""
  config_lib.validate(config)
  cv = config.eval.cross_validation
  k, fraction = cv.folds, cv.holdout_fraction
  if k and fraction:
    raise errors.UserError(
        f"eval.cross_validation.folds={k} and holdout_fraction={fraction} are both set; "
        "use k folds or one holdout split (set the other to 0)")
  if k < 0 or k == 1:
    raise errors.UserError(
        f"eval.cross_validation.folds={k} must be >= 2 (or 0 for no cross-validation); "
        "with one fold nothing is left to train on")
  if fraction and not 0.0 < fraction < 1.0:
    raise errors.UserError(
        f"eval.cross_validation.holdout_fraction={fraction} must be in (0, 1), e.g. 0.2")
  if config.train.ema_decay > 0:
    raise errors.UserError(
        f"train.ema_decay={config.train.ema_decay} is not used by cross-validation (the "
        "folds are scored with their raw parameters); set train.ema_decay=0")
  if config.tune.strategy != "none":
    raise errors.UserError(
        f"eval.cross_validation cannot be combined with tune.strategy="
        f"{config.tune.strategy!r}; cross-validate one setting with tune.strategy='none' "
        "(e.g. the best/ member a tuning run exports)")
  catalog.check_splits(config.data)
  source, info = catalog.open_split(config.data.name, config.data.train_split,
                                    config.data.data_dir)
  # The examples the run will train on (data.classes / data.examples_per_class).
  source = subset.apply(source, info, config.data, config.data.train_split, config.seed,
                        train=True)
  n = len(source)
  where = f"{config.data.name}:{config.data.train_split}"
  if k > n:
    raise errors.UserError(
        f"eval.cross_validation.folds={k} is more than the {n} examples of {where}; "
        f"use at most {n} folds")
  labels = None
  if cv.stratified:
    labels = np.asarray([ex[info.label_key] for ex in source.__getitems__(range(n))])
    if labels.ndim != 1:
      raise errors.UserError(
          f"eval.cross_validation.stratified=True needs one class label per example; "
          f"{where} has labels of shape {labels.shape[1:]}; set stratified=False")
    classes, counts = np.unique(labels, return_counts=True)
    if k and counts.min() < k:
      raise errors.UserError(
          f"eval.cross_validation.stratified=True with folds={k}: class "
          f"{classes[counts.argmin()]} has only {counts.min()} examples in {where}; "
          f"use at most {counts.min()} folds or stratified=False")
  held = folds_lib.held_out_masks(n, config.seed, k, fraction, labels)
  smallest_train, smallest_held = int((~held).sum(1).min()), int(held.sum(1).min())
  if smallest_held == 0:
    raise errors.UserError(
        f"eval.cross_validation.holdout_fraction={fraction} holds out no example of the {n} "
        f"of {where}; raise it to at least {1 / n:.2g}")
  if smallest_train < config.data.batch_size:
    setting = f"folds={k}" if k else f"holdout_fraction={fraction}"
    raise errors.UserError(
        f"eval.cross_validation.{setting} leaves {smallest_train} training examples of "
        f"{where}, fewer than data.batch_size={config.data.batch_size}; lower "
        "data.batch_size or use fewer folds / a smaller holdout")
  return n


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        stop_after_steps: int | None = None) -> dict[str, Any]:
  """Cross-validates (or resumes cross-validating) `config` in `workdir`.

  Returns the contents of WORKDIR/cv.json with "status": "completed", or
  {"status": "stopped" | "preempted", "step": s} when `stop_after_steps` or a
  signal stopped it (with a checkpoint; running again resumes).

  Raises:
    UserError: bad config, folds, workdir, dataset or checkpoint (before compiling).
  """
  wall_start = time.perf_counter()
  # --- Config and workdir.
  validate(config)
  c = config
  workdir = train.prepare_workdir(workdir)
  ckpts = checkpoint_lib.Checkpoints(workdir / "checkpoints", keep=c.checkpoint.keep,
                                     async_save=c.checkpoint.async_save)
  latest = ckpts.latest_step()
  train._snapshot_config(c, workdir, latest is not None, allow_config_change=False)  # pylint: disable=protected-access

  # --- Input: the training split on the device; folds are index sets into it.
  data_config = copy.deepcopy(c.data)
  with data_config.unlocked():
    data_config.pipeline = "device"
  train_data, info = pipeline.create_train_data(data_config, c.seed)
  n = train_data.num_examples
  held = folds_lib.held_out_masks(
      n, c.seed, c.eval.cross_validation.folds, c.eval.cross_validation.holdout_fraction,
      np.asarray(train_data.arrays["labels"]) if c.eval.cross_validation.stratified else None)
  train_index, counts = folds_lib.train_indices(held)
  size = len(counts)
  # Each member its own data order over its examples; fold 0's is the single run's.
  data_keys = jnp.stack([jax.random.fold_in(train_data.data_key, p) for p in range(size)])
  inputs, labels = (np.asarray(train_data.arrays["inputs"]),
                    np.asarray(train_data.arrays["labels"]))
  eval_batches = []
  for start, batch in zip(range(0, n, c.data.eval_batch_size),
                          pipeline.eval_batches(inputs, labels, c.data.eval_batch_size)):
    width = len(batch["labels"])
    held_b = np.zeros((size, width), bool)
    held_b[:, :min(width, n - start)] = held[:, start:start + width]
    eval_batches.append(jax.device_put((batch, held_b)))

  # --- Model, optimizer, population: every member starts from the same state.
  model = lora.maybe_wrap(  # model.lora_rank > 0: every fold trains adapters only.
      models.build(c.model, info.num_classes, info.input_shape, precision=c.precision), c.model)
  tx, schedule = optim.build(c.optim, c.train.num_steps)
  hparams = {"dropout_rate": c.model.dropout_rate, "label_smoothing": c.loss.label_smoothing}
  rngs = jnp.stack([jax.random.PRNGKey(c.seed)] * size)
  sample = train_data.sample_batch()
  if c.init_from.workdir:  # Checked against the model's shapes before anything compiles.
    copies, record = transfer.load(
        c.init_from, *phase_lib.member_shapes(model, tx, sample, hparams))
    transfer.write_record(workdir, record)
  pop = jax.jit(lambda r: pop_lib.create(model, tx, sample, hparams, r))(rngs)
  if c.init_from.workdir:  # Every fold starts from the copied arrays.
    pop = transfer.init_population(copies, pop)
  acc = pop_lib.new_metric_sums(size)
  orders = folds_lib.new_orders(counts)
  train_index = jnp.asarray(train_index)

  traces = []
  fold_train = folds_lib.make_train_fn(model, tx, schedule, c.data.batch_size, counts)

  def train_fn(*args):
    traces.append(1)
    return fold_train(*args)

  train_fn = jax.jit(train_fn, donate_argnums=(0, 1, 2))
  eval_fn = jax.jit(folds_lib.make_eval_fn(model))

  def evaluate(pop) -> list[dict[str, float]]:
    sums = None
    for batch, held_b in eval_batches:
      batch_sums = eval_fn(pop, batch, held_b)
      sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    return pop_lib.compute_member_metrics(sums, "cv/")

  # --- Resume: the population and partial metric sums of the latest checkpoint.
  step, last, train_sec = 0, [], 0.0
  if latest is not None:
    restored, loop = ckpts.restore(latest, {"population": pop, "metric_sums": acc})
    pop, acc = restored["population"], restored["metric_sums"]
    step, last, train_sec = loop["step"], loop["last"], loop["train_sec"]

  # --- Loop: every member steps together; evaluations score each on its fold.
  metrics_log = writers.MetricsLog(workdir, step if latest is not None else -1)
  status, t_interval = "completed", time.perf_counter()
  with preemption.PreemptionGuard() as preempt:
    while step < c.train.num_steps:
      pop, acc, orders = train_fn(pop, acc, orders, train_data.arrays, train_index, data_keys)
      step += 1
      if step % c.train.eval_every_steps == 0 or step == c.train.num_steps:
        train_metrics = pop_lib.compute_member_metrics(acc, "train/")
        acc = pop_lib.new_metric_sums(size)
        last = evaluate(pop)
        record = {k: [m[k] for m in train_metrics] for k in train_metrics[0]}
        record.update(_fold_stats(last))
        metrics_log.write(step, record)
      stopping = bool(preempt.requested) or (
          stop_after_steps is not None and step >= stop_after_steps)
      if step % c.checkpoint.every_steps == 0 or step == c.train.num_steps or stopping:
        train_sec += time.perf_counter() - t_interval  # Checkpoint writes not counted.
        ckpts.save(step, {"population": pop, "metric_sums": acc},
                   {"step": step, "last": last, "train_sec": train_sec})
        t_interval = time.perf_counter()
      if stopping and step < c.train.num_steps:
        status = "preempted" if preempt.requested else "stopped"
        break
  ckpts.close()
  metrics_log.close()
  if status != "completed":
    return {"status": status, "step": step}

  # --- Result.
  cv = c.eval.cross_validation
  result = {
      "status": status,
      "folds": cv.folds, "holdout_fraction": cv.holdout_fraction,
      "train_split": f"{c.data.name}:{c.data.train_split}", "examples": n,
      "step": step,
      **_fold_stats(last),
      "per_fold": [{"fold": p, "train_examples": counts[p],
                    "held_out_examples": int(held[p].sum()), **last[p]} for p in range(size)],
      "std_ddof": 0,
      "train_step_compiles": len(traces),
      "train_time_sec": train_sec,
      "wall_time_sec": time.perf_counter() - wall_start,
  }
  writers.write_text_atomic(workdir / "cv.json", json.dumps(result, indent=2) + "\n")
  return result


def _fold_stats(per_fold: list[dict[str, float]]) -> dict[str, Any]:
  """Per-fold lists plus their mean and (population, ddof=0) standard deviation."""
  out: dict[str, Any] = {}
  for name in METRICS:
    values = np.asarray([m[f"cv/{name}"] for m in per_fold], np.float64)
    out[f"cv/{name}"] = values.tolist()
    out[f"cv/{name}_mean"] = float(values.mean())
    out[f"cv/{name}_std"] = float(values.std())
  return out


def summary_line(result: dict[str, Any], workdir) -> str:
  """The one line `python -m jaxtrain.main` prints at the end of a CV run."""
  what = (f"{result['folds']}-fold cross-validation" if result["folds"]
          else f"holdout ({result['holdout_fraction']:g} of {result['train_split']})")
  return (f"{what}: cv/accuracy={result['cv/accuracy_mean']:.4f} ± "
          f"{result['cv/accuracy_std']:.4f}, cv/loss={result['cv/loss_mean']:.4f} ± "
          f"{result['cv/loss_std']:.4f} (mean ± std over folds, step {result['step']}); "
          f"results in {workdir}/cv.json")
