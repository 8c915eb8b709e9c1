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

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import errors
from jaxtrain.core import metrics
from jaxtrain.data import catalog, pipeline, subset
from jaxtrain.io import preemption, writers
from jaxtrain.jobs import cadence, checks, setup, transfer, workdir as workdir_lib
from jaxtrain.parallel import distributed
from jaxtrain.tune import folds as folds_lib
from jaxtrain.tune import population as pop_lib
from jaxtrain.paths import Path

METRICS = ("accuracy", "loss")


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` asks for cross-validation (or a holdout split)."""
  cv = config.eval.cross_validation
  return cv.folds != 0 or cv.holdout_fraction != 0.0


def validate(config: ml_collections.ConfigDict) -> int:
  """Raises a one-line `UserError` before any compile; returns the training split's size."""
  checks.validate(config)
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
  source, info = catalog.split_of(config.data, config.data.train_split)
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
        stop_after_steps: int | None = None, start_over: bool = False, model=None,
        data=None) -> dict[str, Any]:
  """Cross-validates (or resumes cross-validating) `config` in `workdir`.

  Returns the contents of WORKDIR/cv.json with "status": "completed", or
  {"status": "stopped" | "preempted", "step": s} when `stop_after_steps` or a
  signal stopped it (with a checkpoint; running again resumes). `start_over` moves a
  used `workdir` aside (WORKDIR.old-DATE-TIME) first.

  Raises:
    UserError: bad config, folds, workdir, dataset or checkpoint (before compiling).
    Interrupted (a KeyboardInterrupt): Ctrl-C stopped it; its checkpoint is saved.
  """
  wall_start = time.perf_counter()
  # --- Check: the config and its folds, before anything is compiled.
  config = workdir_lib.with_objects(config, workdir, model, data,
                                    start_over=start_over)  # A notebook's objects.
  validate(config)
  c = config
  workdir = workdir_lib.prepare(workdir, c)

  # --- Build: the training split on the device; folds are index sets into it.
  s = setup.build(c, data_pipeline="device", placement=False)
  k = c.eval.cross_validation.folds or 1  # A holdout split trains one member.
  setup.check_memory(s.recipe.shapes(s.train_data.sample_batch()), k, s.train_data,
                     f"cross-validation with {k} folds",
                     "lower eval.cross_validation.folds, or choose a smaller model")
  folds = _Folds(c, s.train_data)
  prog = _programs(s, folds)

  # --- Start: the latest checkpoint, else every fold from the same state (init_from's).
  # One writer; closed on any exit.
  with workdir_lib.lock(workdir), workdir_lib.checkpoints(workdir / "checkpoints", c) as ckpts:
    latest = ckpts.latest_step()
    workdir_lib.snapshot_config(c, workdir, resuming=latest is not None)
    pop, acc = _initial_population(s, folds, prog, workdir)
    orders = folds_lib.new_orders(folds.counts)
    step, last, train_sec = 0, [], 0.0
    if latest is not None:
      restored, loop = ckpts.restore(latest, {"population": pop, "metric_sums": acc},
                                     loop_like={"step": 0, "last": [], "train_sec": 0.0})
      pop, acc = restored["population"], restored["metric_sums"]
      step, last, train_sec = loop["step"], loop["last"], loop["train_sec"]

    # --- Loop: every fold steps together; evaluations score each on its held-out fold.
    metrics_log = writers.MetricsLog(workdir, step if latest is not None else -1)
    status, t_interval = "completed", time.perf_counter()
    start, t_start = step, time.perf_counter()  # For the progress lines' eta.
    with preemption.PreemptionGuard() as preempt:
      while step < c.train.num_steps:
        pop, acc, orders = prog.train(pop, acc, orders, s.train_data.arrays, folds.train_index,
                                      folds.data_keys)
        step += 1
        if cadence.itstime(step, c.train.eval_every_steps, c.train.num_steps):
          train_metrics = pop_lib.compute_member_metrics(acc, "train/")
          acc = metrics.new_sums((folds.size,))
          last = pop_lib.compute_member_metrics(
              metrics.sum_batches(lambda b: prog.eval(pop, *b), folds.eval_batches), "cv/")
          record = {k: [m[k] for m in train_metrics] for k in train_metrics[0]}
          record.update(_fold_stats(last))
          metrics_log.write(step, record)
          if distributed.is_main():
            rate = (step - start) / max(time.perf_counter() - t_start, 1e-9)
            writers.say(f"cv step {step}/{c.train.num_steps}: cv/accuracy "
                        f"{record['cv/accuracy_mean']:.4f} +- {record['cv/accuracy_std']:.4f} "
                        f"over {folds.size} folds, eta "
                        f"{writers.eta_text((c.train.num_steps - step) / rate)}")
        stopping = preempt.should_stop(step) or (  # Every interval: processes agree.
            stop_after_steps is not None and step >= stop_after_steps)
        if cadence.itstime(step, c.checkpoint.every_steps, c.train.num_steps) or stopping:
          train_sec += time.perf_counter() - t_interval  # Checkpoint writes not counted.
          metrics_log.sync()  # The records on storage before the checkpoint commits.
          ckpts.save(step, {"population": pop, "metric_sums": acc},
                     {"step": step, "last": last, "train_sec": train_sec})
          t_interval = time.perf_counter()
        if stopping and step < c.train.num_steps:
          status = "preempted" if preempt.requested else "stopped"
          break
    ckpts.close()
  metrics_log.close()
  if status != "completed":
    return preemption.raise_if_interrupted(preempt.requested, {"status": status, "step": step},
                                           workdir)

  # --- Record: per-fold metrics, their mean and standard deviation.
  cv = c.eval.cross_validation
  result = {
      "status": status,
      "folds": cv.folds, "holdout_fraction": cv.holdout_fraction,
      "train_split": f"{c.data.name}:{c.data.train_split}", "examples": folds.num_examples,
      "step": step,
      **_fold_stats(last),
      "per_fold": [{"fold": p, "train_examples": folds.counts[p],
                    "held_out_examples": int(folds.held[p].sum()), **last[p]}
                   for p in range(folds.size)],
      "std_ddof": 0,
      "train_step_compiles": len(prog.traces),
      "train_time_sec": train_sec,
      "wall_time_sec": time.perf_counter() - wall_start,
  }
  workdir_lib.write_json(workdir / "cv.json", result)
  return result


class _Folds:
  """Which examples each member trains on and is scored on, as device arrays."""

  def __init__(self, c, train_data: pipeline.DeviceData):
    cv = c.eval.cross_validation
    self.num_examples = n = train_data.num_examples
    labels = np.asarray(train_data.arrays["labels"])
    self.held = folds_lib.held_out_masks(n, c.seed, cv.folds, cv.holdout_fraction,
                                         labels if cv.stratified else None)
    train_index, self.counts = folds_lib.train_indices(self.held)
    self.train_index = jnp.asarray(train_index)
    self.size = len(self.counts)
    # Each member its own data order over its examples; fold 0's is the single run's.
    self.data_keys = jnp.stack([jax.random.fold_in(train_data.data_key, p)
                                for p in range(self.size)])
    # Eval batches are slices of the training split, each with every member's held-out mask.
    inputs = np.asarray(train_data.arrays["inputs"])
    self.eval_batches = []
    for start, batch in zip(range(0, n, c.data.eval_batch_size),
                            pipeline.eval_batches(inputs, labels, c.data.eval_batch_size)):
      width = len(batch["labels"])
      held_b = np.zeros((self.size, width), bool)
      held_b[:, :min(width, n - start)] = self.held[:, start:start + width]
      self.eval_batches.append(jax.device_put((batch, held_b)))


@dataclasses.dataclass
class _Programs:
  create: Any  # rngs [P, 2] -> population
  train: Any  # (pop, acc, orders, data, train_index, data_keys) -> (pop, acc, orders)
  eval: Any  # (pop, batch, held_out) -> metric sums [P]
  traces: list


def _programs(s: setup.Setup, folds: _Folds) -> _Programs:
  """The jitted fold programs (one compile each for any number of folds)."""
  r, c = s.recipe, s.config
  traces = []
  fold_train = folds_lib.make_train_fn(r.model, r.tx, r.schedule, c.data.batch_size,
                                       folds.counts)

  def train_fn(*args):
    traces.append(1)
    return fold_train(*args)

  sample = s.train_data.sample_batch()
  return _Programs(
      create=jax.jit(lambda rngs: pop_lib.create(r.model, r.tx, sample, r.hparams, rngs)),
      train=jax.jit(train_fn, donate_argnums=(0, 1, 2)),
      eval=jax.jit(folds_lib.make_eval_fn(r.model)),
      traces=traces)


def _initial_population(s: setup.Setup, folds: _Folds, prog: _Programs, workdir: Path):
  """(population, metric sums): every fold from the config's seed, or from init_from's
  arrays (checked against the model's shapes before anything compiles)."""
  c = s.config
  if c.init_from.workdir:
    shapes = s.recipe.shapes(s.train_data.sample_batch())
    copies, record = transfer.load(c.init_from, shapes.params, shapes.model_state)
    transfer.write_record(workdir, record)
  pop = prog.create(jnp.stack([jax.random.PRNGKey(c.seed)] * folds.size))
  if c.init_from.workdir:
    pop = transfer.init_population(copies, pop)
  return pop, metrics.new_sums((folds.size,))


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
