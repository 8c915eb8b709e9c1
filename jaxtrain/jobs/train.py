"""One training run: check -> workdir -> build -> programs -> start -> loop -> record.

Read `run` top to bottom; each section is labelled. The loop does not decide
when to log, evaluate, save or stop: it asks `cadence`. What runs on the device
is pure (`jaxtrain.core`); the side effects of a run (files, checkpoints,
progress output) happen here and in the I/O layer this module calls.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.core import lora, metrics, multistep, optim, state as state_lib
from jaxtrain.io import compilation, preemption, profiling, throughput, writers
from jaxtrain.jobs import cadence, checks, setup, transfer, workdir as workdir_lib
from jaxtrain.parallel import distributed, sharding
from jaxtrain.paths import Path


NonFiniteError = errors.NonFiniteError  # train.nan_policy stopped the run.


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        stop_after_steps: int | None = None, allow_config_change: bool = False,
        start_over: bool = False, model=None, data=None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the contents of final.json.

  Args:
    config: a config from `jaxtrain.config.base_config()` plus overrides.
    workdir: the run's directory; an existing checkpoint there is resumed.
    stop_after_steps: stop after this step (saving a checkpoint), as a
      preempted job would; running again continues from there.
    allow_config_change: resume even if config.json in `workdir` differs; with
      train.num_steps raised, a finished run trains on from its last checkpoint.
    start_over: move a used `workdir` aside (WORKDIR.old-DATE-TIME) and start anew.
    model, data: a notebook's objects for model.name / data.name (workdir.with_objects).

  Raises:
    UserError: bad config, workdir, dataset or checkpoint (before compiling).
    NonFiniteError: train.nan_policy stopped the run (final.json is written first).
    Interrupted (a KeyboardInterrupt): Ctrl-C stopped the run; its checkpoint is saved.
  """
  wall_start = time.perf_counter()
  # --- Check: everything that can fail does so before device work.
  c = workdir_lib.with_objects(config, workdir, model, data, allow_config_change,
                               start_over=start_over)
  checks.validate_single_run(c)
  workdir = workdir_lib.prepare(workdir, c, allow_config_change=allow_config_change)
  compilation.enable_cache(c.compile.cache_dir)  # Before the first compile.

  # --- Build: data, model, optimizer, hyperparameters, placement; the compiled steps.
  s = setup.build(c)
  prog = setup.programs(s)
  eval_batches = [s.placement.eval_batch(b) for b in s.eval_batches()]

  # --- Start: the latest checkpoint, else init_from, else the fresh state.
  with workdir_lib.lock(workdir), workdir_lib.checkpoints(workdir / "checkpoints", c) as ckpts:
    acc, guard, order, data_args = setup.initial_args(s)
    feed = _Feed(s, data_args)
    state, acc, guard, loop_state = _start(s, prog, ckpts, feed, acc, guard, workdir,
                                           allow_config_change)
    start_step = step = int(state.step)

    # --- Loop: dispatch, then ask the cadence what else this step does.
    cad = cadence.Cadence(c, stop_after_steps)
    best = cadence.Best(c.checkpoint.best_metric, loop_state)
    stopper = cadence.EarlyStopping(c.early_stopping, loop_state)
    records = _Records(workdir, c, start_step)
    profiler = profiling.Profiler(workdir, c.profile.start_step, c.profile.num_steps)
    rate = _Rate()
    status, last_eval, session_start = "completed", {}, time.perf_counter()
    with preemption.PreemptionGuard() as preempt:
      while step < c.train.num_steps:
        n = cad.call_size(step)  # K steps per call unless the host is needed sooner.
        args = feed.args(n)
        if step == start_step:  # FLOPs per step for the log, from the one-step program.
          records.throughput.set_step(prog.train, (state, acc, guard, order, *feed.one_step(args)))
        profiler.before_call(step)
        state, acc, guard, order = (prog.train if n == 1 else prog.train_many)(
            state, acc, guard, order, *args)
        step += n
        rate.count(n)
        profiler.after_call(step, state)
        records.throughput.measure()  # Once, in the first interval (with the compile).
        # The last log step's metrics reach the host only now, after this call is
        # queued, so the device never waits for the host.
        host_guard = records.flush()
        if host_guard is not None and _nonfinite(c.train, host_guard):
          status = "nonfinite"
          break
        # A requested stop (stop_after_steps, SIGTERM, SIGINT) saves a checkpoint but adds
        # no record or evaluation: a resumed run's records equal an uninterrupted run's.
        if preempt.should_stop(step, sync=cad.host_waits(step)):  # Processes agree.
          status = "preempted"
        is_last = cad.is_stop(step) or status == "preempted"
        is_log, is_eval, is_save = cad.is_log(step), cad.is_eval(step), cad.is_save(step) or is_last
        if is_save and _nonfinite(c.train, jax.device_get(guard)):  # Never save past a bad step.
          status = "nonfinite"
          break
        if is_log:  # Steps/s of steps done, not queued (with K per call the host runs ahead).
          jax.block_until_ready(acc)
        t_pause = time.perf_counter()  # Evaluations and saves are not counted in steps/s.
        steps_per_sec = rate.per_sec(t_pause)
        eval_values: dict[str, float] = {}
        new_best = False
        if is_eval:
          eval_values = last_eval = setup.evaluate(prog.eval, state, eval_batches)
          new_best = best.update(step, eval_values)
          is_save |= new_best  # So the best checkpoint exists on disk.
          if stopper.update(eval_values):
            status, is_last, is_save, is_log = "early_stopped", True, True, True
        if is_log:
          records.defer(step, acc, guard, steps_per_sec, eval_values)  # Not donated: kept.
          acc = setup.fresh_sums(s)
          rate.restart(t_pause)
        elif is_eval:
          records.write(step, eval_values)
        if is_save:
          loop_state["elapsed_sec"] += time.perf_counter() - session_start
          session_start = time.perf_counter()
          _save(ckpts, records, step, workdir_lib.bundle(state, acc, guard), loop_state,
                feed.iterator, loop_state["best_score"] if new_best else None)
        rate.pause(time.perf_counter() - t_pause)
        if is_last:
          if status == "completed" and step < c.train.num_steps:
            status = "stopped"
          break

    # --- Record: the last evaluation, the best one, timings, the parameters' digest.
    profiler.stop(state)
    records.flush()
    if not last_eval:  # Resumed a finished run, or stopped early: evaluate now.
      last_eval = setup.evaluate(prog.eval, state, eval_batches)
    ckpts.close()
    if step > start_step:  # A rerun of a finished run adds no training time.
      loop_state["elapsed_sec"] += time.perf_counter() - session_start
    records.close()
    final = _write_final(s, workdir, status, state, guard, last_eval, best, loop_state, ckpts,
                         len(prog.traces), time.perf_counter() - wall_start)
  return preemption.raise_if_interrupted(preempt.requested, final, workdir)


def _save(ckpts, records: "_Records", step: int, bundle, loop_state, iterator, score) -> None:
  """Saves checkpoint `step`: the state, the partial metric sums (the next record
  averages the same steps whether or not the run was interrupted in between), the loop
  state and the data iterator. Only a new best carries a `score`, so the checkpoint
  Orbax keeps as best is the step final.json names (an equal later score, or a save
  between evaluations, never displaces it)."""
  # This step's record reaches disk before its checkpoint can commit: a crash in
  # between would otherwise resume after the record and never write it.
  records.flush()
  records.log.sync()  # Object storage uploads records in batches (paths.LineLog).
  ckpts.save(step, bundle, loop_state, iterator, score=score)


def _write_final(s: setup.Setup, workdir: Path, status: str, state, guard, last_eval, best,
                 loop_state, ckpts, compiles: int, wall_sec: float) -> dict[str, Any]:
  """Writes WORKDIR/final.json (and, for LoRA, the merged export); returns it.

  Raises:
    NonFiniteError: after writing, when train.nan_policy stopped the run.
  """
  c = s.config
  final = {
      "status": status,
      "step": int(state.step),
      "final": last_eval,
      "best": best.record(),
      "train_time_sec": loop_state["elapsed_sec"],
      "wall_time_sec": wall_sec,
      "params_sha256": state_lib.params_sha256(sharding.to_host(state.params)),
      "num_params": state_lib.num_params(state.params),
      "train_step_compiles": compiles,
      "checkpoint_steps": ckpts.all_steps(),
      "skipped_steps": int(jax.device_get(guard)["skipped"]),
  }
  if c.model.lora_rank > 0:  # What was adapted, what trained whole; merged: a plain run.
    final["lora"] = lora.adapted_paths(state.params)
    if status != "nonfinite":
      final["lora_merged_workdir"] = str(workdir_lib.export_merged(c, state, workdir / "merged",
                                                                   final))
  workdir_lib.write_json(workdir / "final.json", final)
  if status == "nonfinite":
    raise _nonfinite_error(c.train, jax.device_get(guard), ckpts)
  return final


def _start(s: setup.Setup, prog: setup.Programs, ckpts, feed: "_Feed", acc, guard,
           workdir: Path, allow_config_change: bool):
  """(state, metric sums, guard, loop state) to start from, on the mesh.

  The latest checkpoint when there is one (with the data iterator's position);
  else a fresh state, with `init_from`'s arrays when set. Writes config.json
  (refusing a resumed run whose config changed).
  """
  c = s.config
  state = prog.create(s.train_data.sample_batch(), np.int32(c.seed))
  loop_state = cadence.new_loop_state()
  latest = ckpts.latest_step()
  if latest is None and c.init_from.workdir:  # A resumed run has parameters of its own.
    state = transfer.init_state(c.init_from, state, workdir)
  workdir_lib.snapshot_config(c, workdir, resuming=latest is not None,
                              allow_config_change=allow_config_change)
  if latest is not None:
    restored, loop_state = ckpts.restore(latest, workdir_lib.bundle(state, acc, guard),
                                         feed.iterator, loop_like=loop_state)
    state, acc, guard = restored["train_state"], restored["metric_sums"], restored["guard"]
    if allow_config_change:
      # Hyperparameters are state leaves: without this the resumed run would keep the
      # checkpoint's values and silently ignore the new config's (e.g. a lower learning rate).
      state = state.replace(
          opt_state=optim.set_hparams(state.opt_state, optim.hparams_of(c.optim)),
          hparams={k: jnp.asarray(v, jnp.float32) for k, v in s.recipe.hparams.items()})
  state = jax.device_put(state, s.placement.state)  # Restored or transferred arrays: placed.
  return state, acc, guard, loop_state


class _Feed:
  """The data arguments of each dispatch: the device-resident split, or Grain batches
  read now (this process's rows of each global batch)."""

  def __init__(self, s: setup.Setup, data_args: tuple):
    self.data, self.placement, self.data_args = s.train_data, s.placement, data_args
    self.iterator = self.data.iterator if self.data.kind == "grain" else None  # Checkpointed.
    self._first_batch = None

  def args(self, n: int) -> tuple:
    if self.data.kind == "device":
      return self.data_args
    batches = [next(self.data) for _ in range(n)]
    self._first_batch = batches[0] if n > 1 else None
    stacked = batches[0] if n == 1 else multistep.stack_batches(batches)
    return (self.placement.put_batch(stacked, stacked=n > 1), None)

  def one_step(self, args: tuple) -> tuple:
    """The data arguments of a one-step call (for the FLOPs of one step)."""
    if self._first_batch is None:  # The device split, or a one-step call already.
      return args
    return (self.placement.put_batch(self._first_batch, stacked=False), None)


class _Rate:
  """Steps per second over a log interval, not counting pauses (evaluations, saves)."""

  def __init__(self):
    self.restart(time.perf_counter())

  def restart(self, now: float) -> None:
    self.start, self.steps, self.paused = now, 0, 0.0

  def count(self, n: int) -> None:
    self.steps += n

  def pause(self, seconds: float) -> None:
    self.paused += seconds

  def per_sec(self, now: float) -> float:
    return self.steps / max(now - self.start - self.paused, 1e-9)


class _Records:
  """Where a single run's numbers go: metrics.jsonl, TensorBoard and the terminal
  (process 0; the other processes' writers drop everything).

  A log step's train metrics stay on the device until `flush`, called after the
  next dispatch (`defer` keeps them until then).
  """

  def __init__(self, workdir: Path, c, start_step: int):
    null = None if distributed.is_main() else distributed.NullWriter()
    self.log = null or writers.MetricsLog(workdir, start_step)
    self.tensorboard = null or writers.TensorBoard(
        workdir, writers.hparams_for_tensorboard(config_lib.changed_from_defaults(c)),
        ["eval/accuracy", "eval/loss"])
    self.progress = null or writers.Progress(c.train.num_steps, start_step)
    workdir_lib.write_provenance(workdir, c.model.name)  # Once metrics.jsonl was checked.
    self.throughput = throughput.Throughput(c.data.batch_size,
                                            c.throughput.peak_tflops_per_device)
    self._pending = None

  def write(self, step: int, values: dict[str, Any]) -> None:
    self.log.write(step, values)
    self.tensorboard.write(step, values)
    self.progress.update(step, values)

  def defer(self, step, acc, guard, steps_per_sec, eval_values) -> None:
    self._pending = (step, acc, guard, steps_per_sec, eval_values)

  def flush(self):
    """Writes the deferred record; returns its guard counters (host), or None."""
    if self._pending is None:
      return None
    step, acc, guard, steps_per_sec, eval_values = self._pending
    self._pending = None
    guard = jax.device_get(guard)
    self.write(step, {**metrics.compute(acc, prefix="train/"),
                      "train/skipped_steps": int(guard["skipped"]),
                      "steps_per_sec": steps_per_sec, **self.throughput.values(steps_per_sec),
                      **eval_values})
    return guard

  def close(self) -> None:
    self.log.close()
    self.tensorboard.close()
    self.progress.close()


def _nonfinite(train_config, guard) -> bool:
  """Whether train.nan_policy says stop, given the (host) guard counters."""
  if train_config.nan_policy == "stop":
    return int(guard["first_nonfinite_step"]) >= 0
  if train_config.nan_policy == "skip":
    return int(guard["streak"]) >= train_config.max_consecutive_skips
  return False


def _nonfinite_error(train_config, guard, ckpts) -> NonFiniteError:
  where = (f"at step {int(guard['first_nonfinite_step']) + 1}"
           if train_config.nan_policy == "stop" else f"in {int(guard['streak'])} consecutive steps")
  latest = ckpts.latest_step()
  return NonFiniteError(
      f"non-finite loss or gradient {where} (train.nan_policy={train_config.nan_policy}); no "
      f"bad update was applied or saved; "
      + (f"last checkpoint: step {latest} in {ckpts.directory}; " if latest is not None
         else "no checkpoint was written; ")
      + "lower optim.learning_rate or set optim.clip_norm, then rerun in a new --workdir")
