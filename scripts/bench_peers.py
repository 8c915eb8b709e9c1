"""Peers: Optuna TPE, Ray Tune PBT and jaxtrain PBT / random on one task, in one run.

  pip install -e '.[bench]'      # ray[tune]: benchmark-only, never imported by jaxtrain
  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_peers.py --out=bench_peers.json
  python scripts/bench_peers.py --no-ray           # without Ray Tune (where ray is absent)
  python scripts/bench_peers.py --quick --no-ray   # smoke run: 2 trials, 4 members, 200 steps

The task: MNIST-1D MLP 40-100-100-10, AdamW, learning rate loguniform(1e-4, 3e-2),
weight decay loguniform(1e-6, 1e-1), trained on the full train split and
evaluated on test, --peer_steps steps per trial or member:

  Optuna TPE       --optuna_trials `jaxtrain.train.run` single runs, one at a time.
  Ray Tune PBT     PopulationBasedTraining (reuse_actors=True), --ray_members trials,
                   each a Ray actor with a lean jaxtrain single-model loop
                   (`pip install 'ray[tune]'`, or the `bench` extra; --no-ray skips it).
  jaxtrain         `tune.run` with --peer_members members, strategy 'pbt' and 'random'.

Reported: wall-clock (and CPU, where measured) seconds from the start of each
search to each --targets test accuracy, and the best accuracy within --budget_sec.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from pathlib import Path

import bench_common as common  # First: it puts the repository on sys.path.
from bench_common import log, median

from jaxtrain.io import writers


class EvalClock:
  """Records (wall s, CPU s since start, step, values) for every metrics.jsonl record.

  CPU seconds (this process, all threads) are reported next to wall seconds:
  on a shared machine they are much less sensitive to other people's jobs.

  Wraps `writers.MetricsLog.write` in this process only (observes, changes nothing),
  so wall-clock-to-accuracy can be read for single runs and for the tuner alike.
  """

  def __init__(self):
    self.records = []
    self.start = time.perf_counter()
    self.cpu_start = time.process_time()
    self._orig = writers.MetricsLog.write
    clock = self

    def write(log_self, step, values):
      clock.records.append((time.perf_counter() - clock.start,
                            time.process_time() - clock.cpu_start, step, dict(values)))
      return clock._orig(log_self, step, values)

    writers.MetricsLog.write = write

  def close(self):
    writers.MetricsLog.write = self._orig

  def elapsed(self) -> tuple[float, float]:
    return time.perf_counter() - self.start, time.process_time() - self.cpu_start

  def accuracy_curve(self, cpu: bool = False) -> list[tuple[float, float]]:
    """(seconds, best eval accuracy in this record) for records with evaluations."""
    out = []
    for wall, cpu_sec, _, values in self.records:
      sec = cpu_sec if cpu else wall
      acc = values.get("eval/accuracy")
      if acc is None:
        continue
      accs = acc if isinstance(acc, list) else [acc]
      accs = [a for a in accs if isinstance(a, float) and math.isfinite(a)]
      if accs:
        out.append((sec, max(accs)))
    return out


def curve_summary(clock: EvalClock, targets, budget_sec) -> dict:
  out = {}
  for kind in ("wall", "cpu"):
    curve = clock.accuracy_curve(cpu=kind == "cpu")
    first = {}
    for target in targets:
      hit = [sec for sec, acc in curve if acc >= target]
      first[f"{target:.2f}"] = min(hit) if hit else None
    within = [acc for sec, acc in curve if sec <= budget_sec]
    prefix = "" if kind == "wall" else "cpu_"
    out[f"{prefix}seconds_to_target"] = first
    out[f"{prefix}best_within_budget"] = max(within) if within else None
  curve = clock.accuracy_curve()
  out["best_overall"] = max(acc for _, acc in curve) if curve else None
  return out


def peer_config(num_steps: int):
  """The peer task: MNIST-1D MLP 40-100-100-10, adamw, full train split, eval on test."""
  c = common.load_config("mnist1d_pbt")
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.test_split = ""
  c.train.num_steps = num_steps
  c.tune.space = type(c.tune.space)({"optim": dict(learning_rate="loguniform(1e-4, 3e-2)",
                                                   weight_decay="loguniform(1e-6, 1e-1)")})
  return c


def ray_pbt(args, root: Path, steps: int, interval: int) -> dict:
  """Ray Tune PopulationBasedTraining over the same MNIST-1D MLP, data and budget.

  Each trial is a Ray actor (a process) with a lean jaxtrain single-model loop:
  the step `train.run` compiles (device data, donated state), `interval` steps
  per Ray iteration, then test accuracy. Hyperparameters are array leaves of
  the state, so `reset_config` (reuse_actors=True) and exploits (restore the
  donor's checkpoint, then apply the new values) never recompile. PBT settings
  match jaxtrain's: truncation at 25%, perturbation factors 0.8/1.25,
  resampling with probability 0.25, every `interval` steps. One CPU per trial
  (2 trials at a time on 2 cores). Wall seconds only: CPU time is spread over
  Ray's processes.
  """
  import ray  # pylint: disable=g-import-not-at-top
  from ray import tune as ray_tune  # pylint: disable=g-import-not-at-top
  from ray.tune.schedulers import PopulationBasedTraining  # pylint: disable=g-import-not-at-top

  config_dir = root / "ray_member_config"
  config_dir.mkdir(parents=True, exist_ok=True)
  (config_dir / "config.json").write_text(peer_config(steps).to_json())
  config_dir = str(config_dir)

  class JaxtrainMember(ray_tune.Trainable):
    """One PBT trial: a jaxtrain MNIST-1D MLP trained `interval` steps per iteration."""

    def setup(self, config):
      import zlib  # pylint: disable=g-import-not-at-top
      import jax as jx  # pylint: disable=g-import-not-at-top
      import jax.numpy as jnpx  # pylint: disable=g-import-not-at-top
      # pylint: disable=g-import-not-at-top
      from jaxtrain import config as config_lib
      from jaxtrain.core import metrics as mt, optim as opt, step as stp
      from jaxtrain.data import pipeline as pl
      from jaxtrain.jobs import setup as su
      # pylint: enable=g-import-not-at-top
      c = config_lib.load_snapshot(config_dir)
      data, info = pl.create_train_data(c.data, c.seed)
      r = su.recipe(c, info)
      model, tx, schedule = r.model, r.tx, r.schedule
      seed = zlib.crc32(self.trial_id.encode()) % (2**31)
      sample = data.sample_batch()
      self.state = jx.jit(lambda rng: r.create(sample, rng))(jx.random.PRNGKey(seed))
      self.order = pl.new_epoch_order(data.num_examples)
      self.acc = mt.new_sums()
      self.data, self.data_key = data.arrays, jx.random.fold_in(data.data_key, seed)
      batch_size, n = c.data.batch_size, data.num_examples

      def train_fn(state, acc, order, arrays, data_key):
        order = pl.refresh_order(order, data_key, state.step, n, batch_size)
        batch = pl.device_batch(arrays, order, state.step, batch_size)
        state, acc = stp.accumulate_train_step(model, tx, schedule, state, acc, batch)
        return state, acc, order

      self.train_fn = jx.jit(train_fn, donate_argnums=(0, 1, 2))
      self.eval_fn = jx.jit(lambda state, batch: stp.eval_step(model, state, batch))
      inputs, labels = pl.load_eval_arrays(c.data)
      self.eval_batches = [jx.device_put(b) for b in
                           pl.eval_batches(inputs, labels, c.data.eval_batch_size)]
      self.jx, self.jnp, self.opt = jx, jnpx, opt
      self.apply_hparams(config)

    def apply_hparams(self, config):
      self.hparams = dict(config)
      values = {"learning_rate": self.jnp.float32(config["learning_rate"]),
                "weight_decay": self.jnp.float32(config["weight_decay"])}
      self.state = self.state.replace(opt_state=self.opt.set_hparams(self.state.opt_state,
                                                                     values))

    def step(self):
      for _ in range(interval):
        self.state, self.acc, self.order = self.train_fn(self.state, self.acc, self.order,
                                                         self.data, self.data_key)
      correct = count = 0.0
      for batch in self.eval_batches:
        sums = self.jx.device_get(self.eval_fn(self.state, batch))
        correct, count = correct + float(sums["accuracy"]), count + float(sums["count"])
      return {"accuracy": correct / count}

    def save_checkpoint(self, checkpoint_dir):
      return {"state": self.jx.device_get(self.state)}

    def load_checkpoint(self, checkpoint):
      self.state = self.jx.device_put(checkpoint["state"])
      self.apply_hparams(self.hparams)  # The donor's state, this trial's new values.

    def reset_config(self, new_config):
      self.apply_hparams(new_config)
      return True

  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("ray").setLevel(logging.WARNING)  # PBT logs every exploit at INFO.
  records = []
  start = time.perf_counter()

  class Clock(ray_tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
      wall = time.perf_counter() - start
      records.append((wall, wall, result["training_iteration"],
                      {"eval/accuracy": result["accuracy"]}))

  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"PYTHONPATH": str(common.REPO), "JAX_PLATFORMS": "cpu",
                                     "JAXTRAIN_DATA_DIR": os.environ["JAXTRAIN_DATA_DIR"]}})
  space = {"learning_rate": ray_tune.loguniform(1e-4, 3e-2),
           "weight_decay": ray_tune.loguniform(1e-6, 1e-1)}
  scheduler = PopulationBasedTraining(
      time_attr="training_iteration", perturbation_interval=1, hyperparam_mutations=space,
      quantile_fraction=0.25, resample_probability=0.25, perturbation_factors=(1.25, 0.8))
  tuner = ray_tune.Tuner(
      ray_tune.with_resources(JaxtrainMember, {"cpu": 1}), param_space=space,
      tune_config=ray_tune.TuneConfig(metric="accuracy", mode="max", scheduler=scheduler,
                                      num_samples=args.ray_members, reuse_actors=True),
      run_config=ray_tune.RunConfig(name="ray_pbt", storage_path=str(root / "ray"),
                                    stop={"training_iteration": steps // interval}, verbose=0,
                                    callbacks=[Clock()]))
  try:
    grid = tuner.fit()
    total = time.perf_counter() - start
    errors_ = sum(1 for r in grid if r.error)
  finally:
    ray.shutdown()
  clock = EvalClock.__new__(EvalClock)  # Only its accuracy_curve over these records.
  clock.records = records
  summary = curve_summary(clock, args.targets, args.budget_sec)
  for key in ("cpu_seconds_to_target", "cpu_best_within_budget"):
    summary[key] = None  # Not measured: CPU time is spread over Ray's processes.
  return {"members": args.ray_members, "member_steps": args.ray_members * steps,
          "iterations": len(records), "failed_trials": errors_, "total_sec": total,
          "reuse_actors": True, "ray": ray.__version__, **summary}


def bench_peers(args, root: Path) -> dict:
  import optuna  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import train  # pylint: disable=g-import-not-at-top
  from jaxtrain.tune import loop as tune_loop  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  steps = args.peer_steps
  out = {"task": "mnist1d MLP 40-100-100-10, adamw, lr loguniform(1e-4, 3e-2), "
                 "wd loguniform(1e-6, 1e-1), train split 'train', eval split 'test'",
         "steps_per_trial": steps, "targets": args.targets, "budget_sec": args.budget_sec}

  # Optuna TPE: one normal jaxtrain single run per trial, one at a time.
  base = peer_config(steps)
  base.train.eval_every_steps = min(500, steps)
  base.train.log_every_steps = min(250, steps)
  base.checkpoint.every_steps = steps
  study = optuna.create_study(direction="maximize",
                              sampler=optuna.samplers.TPESampler(seed=0))
  clock = EvalClock()
  trials = []
  try:
    for i in range(args.optuna_trials):
      trial = study.ask()
      c = tune_loop.member_config(base, {
          "optim.learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True),
          "optim.weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)})
      t0 = time.perf_counter()
      final = train.run(c, root / f"optuna_{i:03d}")
      accuracy = final["final"]["eval/accuracy"]
      study.tell(trial, accuracy)
      trials.append({"trial": i, "params": trial.params, "final_accuracy": accuracy,
                     "best_accuracy": final["best"].get("eval/accuracy"),
                     "seconds": time.perf_counter() - t0,
                     "train_time_sec": final["train_time_sec"],
                     "end_sec": time.perf_counter() - clock.start})
  finally:
    clock.close()
  seconds = [t["seconds"] for t in trials]
  total_wall, total_cpu = clock.elapsed()
  out["optuna"] = {"trials": len(trials), "total_sec": total_wall, "total_cpu_sec": total_cpu,
                   "median_trial_sec": median(seconds),
                   "median_trial_train_sec": median([t["train_time_sec"] for t in trials]),
                   **curve_summary(clock, args.targets, args.budget_sec),
                   "trial_log": trials}
  log(f"  optuna: {len(trials)} trials in {out['optuna']['total_sec']:.1f} s "
      f"(median {median(seconds):.2f} s/trial), best {out['optuna']['best_overall']:.4f}, "
      f"to target {out['optuna']['seconds_to_target']}")

  # jaxtrain: 16 members x `steps` in one population (PBT and random).
  for strategy in ("pbt", "random"):
    c = peer_config(steps)
    c.tune.strategy = strategy
    c.tune.population_size = args.peer_members
    if args.quick:
      c.train.eval_every_steps = steps // 4
    c.checkpoint.every_steps = steps
    clock = EvalClock()
    try:
      result = common.tune_once(c, root / f"peer_{strategy}")
    finally:
      clock.close()
    out[f"jaxtrain_{strategy}"] = {
        **{k: result[k] for k in ("members", "member_steps", "best_eval", "best_settings",
                                  "wall_time_sec", "cpu_sec", "train_time_sec")},
        **curve_summary(clock, args.targets, args.budget_sec)}
    log(f"  jaxtrain {strategy}: {result['members']} members in {result['wall_time_sec']:.1f} s,"
        f" best {result['best_eval']:.4f}, "
        f"to target {out[f'jaxtrain_{strategy}']['seconds_to_target']}")

  # Ray Tune PBT (benchmark-only dependency: pip install 'ray[tune]').
  if args.ray:
    interval = steps // 4 if args.quick else 250
    out["ray_pbt"] = ray_pbt(args, root, steps, interval)
    log(f"  ray tune pbt: {args.ray_members} trials in {out['ray_pbt']['total_sec']:.1f} s, "
        f"best {out['ray_pbt']['best_overall']:.4f}, "
        f"to target {out['ray_pbt']['seconds_to_target']}")

  # How much sooner jaxtrain PBT reaches each target (wall seconds), and budgets.
  ours = out["jaxtrain_pbt"]["seconds_to_target"]
  out["speedup_of_jaxtrain_pbt"] = {
      peer: {t: (theirs[t] / ours[t] if theirs[t] and ours[t] else None) for t in ours}
      for peer, theirs in ((p, out[p]["seconds_to_target"]) for p in ("optuna", "ray_pbt")
                           if p in out)}
  log(f"  jaxtrain PBT speed-up to target (wall): {out['speedup_of_jaxtrain_pbt']}")
  return out


def markdown(results: dict) -> list[str]:
  peers = results.get("peers")
  if not peers:
    return []
  lines = []
  targets = [f"{t:.2f}" for t in peers["targets"]]
  budget = f"{peers['budget_sec']:.0f} s"

  def cell(value, digits=1):
    return "not reached" if value is None else f"{value:.{digits}f}"

  for kind, prefix in (("wall", ""), ("CPU", "cpu_")):
    rows = []
    for name, key, count in (("Optuna TPE (train.run per trial)", "optuna", "trials"),
                             ("Ray Tune PBT (reuse_actors=True)", "ray_pbt", "members"),
                             ("jaxtrain PBT", "jaxtrain_pbt", "members"),
                             ("jaxtrain random", "jaxtrain_random", "members")):
      r = peers.get(key)
      if not r:
        continue
      if prefix and r.get(f"{prefix}seconds_to_target") is None:
        rows.append([name, f"{r[count]}", "n/a", f"{r['best_overall']:.4f}", "n/a",
                     *("n/a" for _ in targets)])
        continue
      total = (r.get("total_cpu_sec", r.get("cpu_sec")) if prefix
               else r.get("total_sec", r.get("wall_time_sec")))
      rows.append([name, f"{r[count]}", f"{total:.1f}", f"{r['best_overall']:.4f}",
                   cell(r[f"{prefix}best_within_budget"], 4),
                   *(cell(r[f"{prefix}seconds_to_target"][t]) for t in targets)])
    lines += common.table([f"searcher ({kind} seconds)", "trials/members", "total s",
                           "best acc", f"best within {budget}",
                           *(f"s to {t}" for t in targets)], rows)
  speedups = peers.get("speedup_of_jaxtrain_pbt", {})
  if speedups:
    lines += common.table(
        ["jaxtrain PBT reaches the target sooner than (wall)", *targets],
        [[peer, *(f"{row[t]:.1f}x" if row.get(t) else "-" for t in targets)]
         for peer, row in speedups.items()])
  return lines


def parse_args(argv=None):
  p = common.arg_parser(__doc__, "smoke run: 2 Optuna trials, 4 members / Ray trials, "
                        "200 steps, 10 s budget", tuning=True)
  p.add_argument("--optuna_trials", type=int, default=48)
  p.add_argument("--peer_steps", type=int, default=3000)
  p.add_argument("--peer_members", type=int, default=16)
  p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True,
                 help="include Ray Tune PBT in the peers (needs `pip install 'ray[tune]'`)")
  p.add_argument("--ray_members", type=int, default=16, help="Ray Tune PBT trials")
  p.add_argument("--targets", default="0.60,0.65,0.68", help="test accuracies to time")
  p.add_argument("--budget_sec", type=float, default=60.0)
  args = p.parse_args(argv)
  if args.ray and importlib.util.find_spec("ray") is None:
    p.error("this benchmark runs Ray Tune: pip install -e '.[bench]' (or 'ray[tune]'), "
            "or pass --no-ray")
  args.targets = [float(x) for x in args.targets.split(",")]
  if args.quick:
    args.optuna_trials, args.peer_steps = 2, 200
    args.peer_members, args.budget_sec, args.ray_members = 4, 10.0, 4
  return args


def measure(args, results: dict) -> None:
  common.tuning_part(args, results, "peers", bench_peers)


if __name__ == "__main__":
  common.main(parse_args, measure, markdown)
