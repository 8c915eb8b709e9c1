"""The training loop: build -> restore -> step -> periodic actions -> save.

Read top to bottom; each section is labelled. All side effects of a run
(files, checkpoints, progress output) live here; what it calls is pure.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxtrain.io import checkpoint as checkpoint_lib
from jaxtrain import config as config_lib
from jaxtrain.jobs import compile as compile_lib
from jaxtrain import errors, models
from jaxtrain.core import multistep, optim
from jaxtrain.io import preemption, profiling, provenance
from jaxtrain.core import step as step_lib
from jaxtrain.io import throughput as throughput_lib, writers
from jaxtrain.core import metrics as metrics_lib
from jaxtrain.parallel import distributed, sharding
from jaxtrain.core import state as state_lib
from jaxtrain.core import ema as ema_lib, lora
from jaxtrain.jobs import transfer
from jaxtrain.data import catalog, pipeline

TRAIN_METRICS = ("loss", "accuracy", "grad_norm", "update_norm", "learning_rate", "count")


class NonFiniteError(errors.JaxtrainError):
  """train.nan_policy stopped the run at a non-finite loss or gradient."""
  exit_code = errors.EXIT_NONFINITE


def prepare_workdir(workdir: str | Path) -> Path:
  """Creates `workdir` if needed; raises `UserError` if it cannot be written."""
  path = Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise errors.UserError(f"--workdir {path} is a file, not a directory; "
                           "pass a directory path (it is created if missing)")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".jaxtrain_write_test.{os.getpid()}"  # Processes of one run share it.
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise errors.UserError(f"--workdir {path} is not writable ({e.strerror}); "
                           "choose a directory you can write to") from None
  return path


def config_differences(old: dict, new: dict) -> list[str]:
  """Flattened keys whose values differ between two config dicts."""
  def norm(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config_lib.flatten(d).items()}
  a, b = norm(old), norm(new)
  # The mesh says where arrays live, not what is computed: a run may resume on other devices.
  return sorted(k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and not k.startswith("mesh."))


def _snapshot_config(config: ml_collections.ConfigDict, workdir: Path, resuming: bool,
                     allow_config_change: bool) -> None:
  path = workdir / "config.json"
  new = json.loads(config.to_json())
  if resuming and path.exists():
    diff = config_differences(json.loads(path.read_text()), new)
    if diff and not allow_config_change:
      raise errors.UserError(
          f"{workdir} holds a run with a different config (keys: {', '.join(diff)}); "
          "use a new --workdir (or, for a single run, pass --allow_config_change to resume "
          "with the new values)")
  # Rewritten on every (re)start: a crash mid-write must not leave it empty.
  if distributed.is_main():
    writers.write_text_atomic(path, json.dumps(new, indent=2, sort_keys=True) + "\n")


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        stop_after_steps: int | None = None, allow_config_change: bool = False,
        compile_only: bool = False) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the contents of final.json.

  Args:
    config: a config from `jaxtrain.config.base_config()` plus overrides.
    workdir: the run's directory; an existing checkpoint there is resumed.
    stop_after_steps: stop after this step (saving a checkpoint), as a
      preempted job would; running again continues from there.
    allow_config_change: resume even if config.json in `workdir` differs.
    compile_only: build the state's shapes (nothing allocated), compile the train
      step and return `compile.report(...)` instead of training (--mode=compile).

  Raises:
    UserError: bad config, workdir, dataset or checkpoint (before compiling).
  """
  wall_start = time.perf_counter()
  # --- Config and workdir: every check that can fail does so before device work.
  config_lib.validate(config)
  catalog.check_splits(config.data)
  sharding.check_single_run(config)  # Mesh sizes vs devices and batch size.
  workdir = prepare_workdir(workdir)
  c = config
  compile_lib.enable_cache(c.compile.cache_dir)  # Before the first compile.
  num_steps = c.train.num_steps

  # --- Input.
  _, data_info = catalog.open_split(c.data.name, c.data.train_split, c.data.data_dir)
  # e.g. per-token labels need a token model: said before anything compiles.
  models.zoo.check_for_data(c.model, data_info.input_shape, data_info.label_shape)
  train_data, info = pipeline.create_train_data(c.data, c.seed)
  eval_inputs, eval_labels = pipeline.load_eval_arrays(c.data)
  eval_batches = list(  # Placed on the mesh below.
      pipeline.eval_batches(eval_inputs, eval_labels, c.data.eval_batch_size))

  # --- Model, optimizer, state.
  model = models.build(c.model, info.num_classes, info.input_shape, precision=c.precision)
  model = lora.maybe_wrap(model, c.model)  # model.lora_rank > 0: adapters only are trained.
  tx, schedule = optim.build(c.optim, num_steps)
  hparams = {"dropout_rate": c.model.dropout_rate, "label_smoothing": c.loss.label_smoothing}
  hparams.update(ema_lib.hparams(c.train))  # train.ema_decay > 0: EMA params in the state.
  create = jax.jit(lambda batch, rng: state_lib.create(model, tx, batch, hparams, rng))

  # --- Mesh: where each array lives (config.mesh, jaxtrain/parallel/sharding.py).
  placement = sharding.Placement.for_run(c, tx, jax.eval_shape(
      create, train_data.sample_batch(), jax.random.PRNGKey(c.seed)))
  create = jax.jit(create, out_shardings=placement.state)
  eval_batches = [placement.eval_batch(b) for b in eval_batches]
  state = (jax.eval_shape if compile_only else lambda f, *a: f(*a))(
      create, train_data.sample_batch(), jax.random.PRNGKey(c.seed))

  def new_acc():
    return placement.replicate({k: jnp.zeros((), jnp.float32) for k in TRAIN_METRICS})

  # --- Checkpoints: restore the latest if there is one.
  ckpts = checkpoint_lib.Checkpoints(workdir / "checkpoints", keep=c.checkpoint.keep,
                                     async_save=c.checkpoint.async_save)
  grain_iterator = train_data.iterator if train_data.kind == "grain" else None
  loop_state = {"best_score": None, "best_step": None, "best_eval": {},
                "stop_best": None, "evals_since_best": 0, "elapsed_sec": 0.0}
  latest = ckpts.latest_step()
  if latest is None and c.init_from.workdir and not compile_only:
    # A new run starting from another run's parameters (a resumed one has its own).
    state = transfer.init_state(c.init_from, state, workdir)
  _snapshot_config(c, workdir, latest is not None, allow_config_change)
  acc, guard = new_acc(), placement.replicate(step_lib.new_guard())
  if latest is not None:
    restored, loop_state = ckpts.restore(
        latest, {"train_state": state, "metric_sums": acc, "guard": guard}, grain_iterator)
    state, acc, guard = restored["train_state"], restored["metric_sums"], restored["guard"]
    if allow_config_change:
      # Hyperparameters are state leaves: without this the resumed run would keep the
      # checkpoint's values and silently ignore the new config's (e.g. a lower learning rate).
      state = state.replace(
          opt_state=optim.set_hparams(state.opt_state, optim.hparams_of(c.optim)),
          hparams={k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()})
  if not compile_only:  # Restored or transferred arrays onto the mesh (no-op if there).
    state = jax.device_put(state, placement.state)
  start_step = 0 if compile_only else int(state.step)
  if distributed.is_main():  # Logs and records: process 0 only.
    (workdir / "provenance.json").write_text(json.dumps(provenance.collect(), indent=2) + "\n")

  # --- Compiled steps. State and metric sums are donated: updated in place.
  traces = []  # One entry per trace of the train step; more than one = a recompile.

  def train_one(state, acc, guard, order, data, data_key):
    traces.append(1)
    if train_data.kind == "device":
      order = pipeline.refresh_order(order, data_key, state.step, train_data.num_examples,
                                     c.data.batch_size)
      data = pipeline.device_batch(data, order, state.step, c.data.batch_size)
      data = placement.constrain_batch(data)  # Split over data/fsdp like a loaded batch.
    state, acc, guard = step_lib.guarded_train_step(model, tx, schedule, c.train.nan_policy,
                                                    state, acc, guard, data)
    return state, acc, guard, order

  train_fn = placement.jit_train(train_one, train_data.kind)  # Donates state, sums, guard, order.
  # train.steps_per_call = K > 1: K steps per dispatch in a lax.scan (see multistep.py).
  steps_per_call = c.train.steps_per_call
  train_many = placement.jit_train(multistep.repeat(
      train_one, steps_per_call, stacked_data=train_data.kind == "grain",
      unroll=multistep.scan_unroll(c.train.scan_unroll, c.model.name, jax.default_backend())),
      train_data.kind, stacked=True)
  eval_fn = placement.jit_eval(functools.partial(step_lib.eval_step, model))

  order = None  # Device pipeline: the epoch's permutation, recomputed once per epoch.
  if train_data.kind == "device":
    data_args = placement.replicate((train_data.arrays, train_data.data_key))
    order = placement.replicate(pipeline.new_epoch_order(train_data.num_examples))
  else:
    data_args = (train_data.sample_batch(), None)  # Shapes only; the loop reads batches.
  if compile_only:
    programs = {"train_step": (train_fn, (state, acc, guard, order, *data_args))}
    if steps_per_call > 1:
      many_data = (data_args if train_data.kind == "device" else
                   (multistep.stack_batches([data_args[0]] * steps_per_call), None))
      programs["train_steps_per_call"] = (train_many, (state, acc, guard, order, *many_data))
    ckpts.close()  # Opened on a scratch workdir (compile.run); nothing was saved.
    return compile_lib.report(c, programs)

  def evaluate(state, prefix: str = "eval/") -> dict[str, float]:
    sums = None
    for batch in eval_batches:
      batch_sums = eval_fn(state, batch)
      sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    values = metrics_lib.compute(sums, prefix=prefix)
    if state.ema_params is not None and prefix == "eval/":  # train.ema_decay > 0
      values.update(evaluate(ema_lib.as_params(state), prefix="eval/ema_"))
    return values


  # --- Writers (process 0 only; the others' writers drop everything).
  null = None if distributed.is_main() else distributed.NullWriter()
  metrics_log = null or writers.MetricsLog(workdir, start_step)
  tensorboard = null or writers.TensorBoard(
      workdir, writers.hparams_for_tensorboard(config_lib.flatten(c)),
      ["eval/accuracy", "eval/loss"])
  progress = null or writers.Progress(num_steps, start_step)

  best_metric, best_mode = c.checkpoint.best_metric, config_lib.mode_of(c.checkpoint.best_metric)
  stop_metric, stop_mode = c.early_stopping.metric, config_lib.mode_of(c.early_stopping.metric)

  def score_of(eval_metrics, metric, mode):  # Higher is better; NaN stays NaN.
    value = eval_metrics[metric]
    return value if mode == "max" else -value

  def write_record(step, values):
    metrics_log.write(step, values)
    tensorboard.write(step, values)
    progress.update(step, values)

  def flush(pending):
    p_step, p_acc, p_guard, p_rate, p_eval = pending
    p_guard = jax.device_get(p_guard)
    write_record(p_step, {**metrics_lib.compute(p_acc, prefix="train/"),
                          "train/skipped_steps": int(p_guard["skipped"]),
                          "steps_per_sec": p_rate, **throughput.values(p_rate), **p_eval})
    return p_guard

  def nonfinite(guard) -> bool:
    """Whether train.nan_policy says stop, given the (host) guard counters."""
    if c.train.nan_policy == "stop":
      return int(guard["first_nonfinite_step"]) >= 0
    if c.train.nan_policy == "skip":
      return int(guard["streak"]) >= c.train.max_consecutive_skips
    return False

  # --- Loop.
  throughput = throughput_lib.Throughput(c.data.batch_size,
                                         c.throughput.peak_tflops_per_device)
  profiler = profiling.Profiler(workdir, c.profile.start_step, c.profile.num_steps)
  pending = None  # (step, sums, guard, steps/s, eval values) on device: fetched one step late.
  last_eval: dict[str, float] = {}
  status = "completed"
  step = start_step
  t_interval, steps_interval, paused_sec = time.perf_counter(), 0, 0.0
  session_start = time.perf_counter()
  with preemption.PreemptionGuard() as preempt:
    while step < num_steps:
      # K steps per call where the host needs nothing in between (log, eval,
      # save and stop steps end a call), single steps otherwise.
      n = multistep.call_size(step, steps_per_call, multistep.next_stop(
          step, (c.train.log_every_steps, c.train.eval_every_steps, c.checkpoint.every_steps),
          (num_steps, stop_after_steps)))
      if train_data.kind == "grain":
        batches = [next(train_data) for _ in range(n)]
        data_args = (batches[0] if n == 1 else multistep.stack_batches(batches), None)
        data_args = (placement.put_batch(data_args[0], stacked=n > 1), None)  # This process's rows.
      if step == start_step:  # FLOPs per step for the log, from the one-step program.
        one_step_data = data_args if n == 1 or train_data.kind == "device" else (
            placement.put_batch(batches[0], stacked=False), None)
        throughput.set_step(train_fn, (state, acc, guard, order, *one_step_data))
      profiler.before_call(step)
      state, acc, guard, order = (train_fn if n == 1 else train_many)(
          state, acc, guard, order, *data_args)
      step += n
      steps_interval += n
      profiler.after_call(step, state)
      throughput.measure()  # Once, in the first interval (with the compile), not later.

      # Metrics of the last log step are pulled to the host only now, after the
      # next step is queued, so the device never waits for the host.
      if pending is not None:
        host_guard = flush(pending)
        pending = None
        if nonfinite(host_guard):
          status = "nonfinite"
          break

      # A requested stop (stop_after_steps, SIGTERM, SIGINT) saves a checkpoint
      # but adds no log record or evaluation, so the resumed run's records are
      # exactly those of an uninterrupted run.
      is_end = step == num_steps
      if preempt.requested:
        status = "preempted"
      is_last = is_end or step == stop_after_steps or status == "preempted"
      is_log = step % c.train.log_every_steps == 0 or is_end
      is_eval = step % c.train.eval_every_steps == 0 or is_end
      is_save = step % c.checkpoint.every_steps == 0 or is_last
      if is_save and nonfinite(jax.device_get(guard)):  # Never checkpoint past a bad step.
        status = "nonfinite"
        break
      if is_log:
        # The interval's steps/s counts them as done, not as queued: with several
        # steps per call the host can otherwise run a whole interval ahead of the device.
        jax.block_until_ready(acc)
      t_pause = time.perf_counter()  # Eval and saves are not counted in steps/s.
      rate = steps_interval / max(t_pause - t_interval - paused_sec, 1e-9)

      eval_values: dict[str, float] = {}
      if is_eval:
        eval_values = last_eval = evaluate(state)
        score = score_of(eval_values, best_metric, best_mode)
        if math.isfinite(score) and (loop_state["best_score"] is None
                                     or score > loop_state["best_score"]):
          loop_state.update(best_score=score, best_step=step, best_eval=eval_values)
          is_save = True  # So the best checkpoint exists on disk.
        stop_score = score_of(eval_values, stop_metric, stop_mode)
        previous = loop_state.get("stop_best")
        if math.isfinite(stop_score) and (
            previous is None or stop_score > previous + c.early_stopping.min_delta):
          loop_state.update(stop_best=stop_score, evals_since_best=0)
        else:
          loop_state["evals_since_best"] += 1
        if 0 < c.early_stopping.patience <= loop_state["evals_since_best"]:
          status, is_last, is_save, is_log = "early_stopped", True, True, True
      if is_log:
        pending = (step, acc, jax.tree.map(jnp.copy, guard), rate, eval_values)
        acc = new_acc()
        t_interval, steps_interval, paused_sec = t_pause, 0, 0.0
      elif is_eval:
        write_record(step, eval_values)
      if is_save:
        # This step's log record goes to disk before its checkpoint can commit:
        # a crash in between would resume after the record and never write it.
        if pending is not None:
          flush(pending)
          pending = None
        loop_state["elapsed_sec"] += time.perf_counter() - session_start
        session_start = time.perf_counter()
        # The partial metric sums are saved too: the next log record averages
        # the same steps whether or not the run was interrupted in between.
        ckpts.save(step, {"train_state": state, "metric_sums": acc, "guard": guard}, loop_state,
                   grain_iterator,
                   score=score_of(eval_values, best_metric, best_mode) if eval_values else None)
      paused_sec += time.perf_counter() - t_pause
      if is_last:
        if status == "completed" and step < num_steps:
          status = "stopped"
        break

  profiler.stop(state)
  if pending is not None:
    flush(pending)
  if not last_eval:  # Resumed a finished run, or stopped early: evaluate now.
    last_eval = evaluate(state)
  ckpts.close()
  if step > start_step:  # A rerun of a finished run adds no training time.
    loop_state["elapsed_sec"] += time.perf_counter() - session_start
  metrics_log.close()
  tensorboard.close()
  progress.close()

  # --- Final record.
  final = {
      "status": status,
      "step": int(state.step),
      "final": last_eval,
      "best": {"metric": best_metric, "step": loop_state["best_step"], **loop_state["best_eval"]},
      "train_time_sec": loop_state["elapsed_sec"],
      "wall_time_sec": time.perf_counter() - wall_start,
      "params_sha256": state_lib.params_sha256(sharding.to_host(state.params)),
      "num_params": state_lib.num_params(state.params),
      "train_step_compiles": len(traces),
      "checkpoint_steps": ckpts.all_steps(),
      "skipped_steps": int(jax.device_get(guard)["skipped"]),
  }
  if c.model.lora_rank > 0 and status != "nonfinite":  # Adapters merged: a plain run.
    final["lora_merged_workdir"] = str(transfer.export_merged(c, state, workdir / "merged", final))
  if distributed.is_main():
    (workdir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
  if status == "nonfinite":
    g = jax.device_get(guard)
    where = (f"at step {int(g['first_nonfinite_step']) + 1}" if c.train.nan_policy == "stop"
             else f"in {int(g['streak'])} consecutive steps")
    raise NonFiniteError(
        f"non-finite loss or gradient {where} (train.nan_policy={c.train.nan_policy}); no "
        f"bad update was applied or saved; "
        + (f"last checkpoint: step {ckpts.latest_step()} in {ckpts.directory}; "
           if ckpts.latest_step() is not None else "no checkpoint was written; ")
        + "lower optim.learning_rate or set optim.clip_norm, then rerun in a new --workdir")
  return final
