"""Benchmarks of the population engine and tuner against single runs and peers.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_population.py --out=bench_population.json
  python scripts/bench_population.py --quick          # smoke run of every part, 2-3 minutes

Parts (all on by default; `--parts engine,conv` picks some; `--no-peers` skips
the slow peer part):

  engine  population step time for N members (vmap, jitted, donated, warm) vs a
          single-model step loop and N sequential runs; steps_per_call=10 scan;
          fraction of the measured f32 matmul peak.
  select  the vmapped step with the member-wise `where(active)` select always on (as
          before) vs only when some member is inactive (now), digits MLP N=16, 64.
  conv    a CNN population, execution 'vmap' vs 'map' (host loop) at N=8.
  search  PBT with 16 members vs the best point of a 64-point grid (digits, MNIST-1D).
  peers   Optuna TPE over `jaxtrain.train.run` single runs, Ray Tune
          PopulationBasedTraining (reuse_actors=True; `pip install 'ray[tune]'`, or
          the `bench` extra) and jaxtrain PBT/random on MNIST-1D, in one run:
          wall-clock to a target test accuracy, best accuracy within a budget.

Timings on a shared CPU are noisy: every comparison is measured side by side in
this process, in interleaved rounds, and reported as the median of the rounds.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxtrain import models  # noqa: E402
from jaxtrain.core import optim
from jaxtrain.io import writers
from jaxtrain.core import step as step_lib  # noqa: E402
from jaxtrain.core import state as state_lib  # noqa: E402
from jaxtrain.config import base_config  # noqa: E402
from jaxtrain.data import pipeline  # noqa: E402
from jaxtrain.tune import execution as execution_lib  # noqa: E402
from jaxtrain.tune import population as pop_lib  # noqa: E402

PARTS = ("engine", "select", "conv", "search", "peers")
# The device pipeline caches each epoch's permutation (newer jaxtrain) instead of
# sorting the whole split every step (older jaxtrain); the script runs on both.
EPOCH_ORDER = hasattr(pipeline, "refresh_order")


def log(*args):
  print(*args, file=sys.stderr, flush=True)


# --- Timing helpers. ---


def block(tree):
  jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)
  return tree


def peak_matmul(n: int = 2048, reps: int = 10) -> dict:
  """f32 n x n @ n x n with jnp.dot, jitted, warm: the practical FLOP/s ceiling."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  block(dot(a, b))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    block(dot(a, b))
    times.append(time.perf_counter() - t0)
  best, median = min(times), statistics.median(times)
  return {"n": n, "gflops_best": 2 * n**3 / best / 1e9, "gflops_median": 2 * n**3 / median / 1e9}


class Runner:
  """A jitted step function with its carried (donated) state; times warm calls."""

  def __init__(self, fn, carry, args, steps_per_call: int, members: int):
    self.fn, self.carry, self.args = fn, carry, args
    self.steps_per_call, self.members = steps_per_call, members
    t0 = time.perf_counter()
    self.carry = block(self.fn(*self.carry, *self.args))  # Compile + first call.
    self.compile_sec = time.perf_counter() - t0
    self.calls = 1

  def time_calls(self, calls: int) -> float:
    """Seconds per call over `calls` warm calls (one block at the end)."""
    t0 = time.perf_counter()
    for _ in range(calls):
      self.carry = self.fn(*self.carry, *self.args)
    block(self.carry)
    return (time.perf_counter() - t0) / calls

  def calibrate(self, target_sec: float, min_calls: int = 3) -> int:
    per_call = self.time_calls(2)
    return max(min_calls, int(target_sec / max(per_call, 1e-6)))


class Sequential:
  """N single models trained one after another through one compiled step."""

  def __init__(self, single: Runner, count: int, make_carry):
    self.single, self.count = single, count
    self.carries = [make_carry(i) for i in range(count)]

  def time_steps(self, steps_each: int) -> float:
    """Seconds for all `count` models to take `steps_each` steps (one after another)."""
    fn, args = self.single.fn, self.single.args
    t0 = time.perf_counter()
    for i in range(self.count):
      carry = self.carries[i]
      for _ in range(steps_each // self.single.steps_per_call):
        carry = fn(*carry, *args)
      self.carries[i] = carry
    block(self.carries)
    return time.perf_counter() - t0


# --- Building the pieces from jaxtrain's own config and modules. ---


def task(dataset: str, model_name: str = "mlp", hidden=(256, 256), batch_size: int = 128,
         num_steps: int = 10_000):
  c = base_config()
  c.data.name = dataset
  c.data.pipeline = "device"
  c.data.batch_size = batch_size
  c.model.name = model_name
  c.model.hidden_sizes = tuple(hidden)
  c.optim.name = "adam"
  data, info = pipeline.create_train_data(c.data, c.seed)
  model = models.build(c.model, info.num_classes, info.input_shape)
  tx, schedule = optim.build(c.optim, num_steps)
  hparams = {"dropout_rate": 0.0, "label_smoothing": 0.0}
  sample = data.sample_batch()
  params = jax.eval_shape(lambda: state_lib.create(model, tx, sample, hparams,
                                                   jax.random.PRNGKey(0))).params
  num_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
  return {"config": c, "data": data, "model": model, "tx": tx, "schedule": schedule,
          "hparams": hparams, "sample": sample, "num_params": num_params,
          "batch_size": batch_size}


def single_runner(t, steps_per_call: int = 1, unroll=1, seed: int = 0) -> tuple[Runner, callable]:
  """The single-run step as `jaxtrain.train` builds it (device data, donated)."""
  model, tx, schedule, bs = t["model"], t["tx"], t["schedule"], t["batch_size"]
  num_examples = int(t["data"].arrays["labels"].shape[0])

  if EPOCH_ORDER:  # The step carries the epoch's permutation (recomputed once per epoch).
    def one(state, acc, order, data, data_key):
      order = pipeline.refresh_order(order, data_key, state.step, num_examples, bs)
      batch = pipeline.device_batch(data, order, state.step, bs)
      return (*step_lib.accumulate_train_step(model, tx, schedule, state, acc, batch), order)
  else:  # The step sorts the split every step.
    def one(state, acc, data, data_key):
      batch = pipeline.device_batch(data, data_key, state.step, bs)
      return step_lib.accumulate_train_step(model, tx, schedule, state, acc, batch)

  if steps_per_call == 1:
    fn = one
  else:
    def fn(*carry_and_args):
      carry, args = carry_and_args[:-2], carry_and_args[-2:]
      def body(carry, _):
        return one(*carry, *args), None
      return jax.lax.scan(body, carry, None, length=steps_per_call, unroll=unroll)[0]

  create = jax.jit(lambda rng: state_lib.create(model, tx, t["sample"], t["hparams"], rng))

  def make_carry(i):
    carry = (create(jax.random.PRNGKey(seed + i)),
             {k: jnp.zeros((), jnp.float32) for k in pop_lib.new_metric_sums(1)})
    return carry + (pipeline.new_epoch_order(num_examples),) if EPOCH_ORDER else carry

  donate = (0, 1, 2) if EPOCH_ORDER else (0, 1)
  jitted = jax.jit(fn, donate_argnums=donate)
  args = (t["data"].arrays, t["data"].data_key)
  return Runner(jitted, make_carry(0), args, steps_per_call, 1), make_carry


def population_runner(t, size: int, execution: str = "vmap", steps_per_call: int = 1,
                      unroll=1, active="all") -> Runner:
  """The engine as the tuner uses it, state and sums donated: `make_train_fn` jitted
  (vmap), or the host loop over one jitted member step (map)."""
  if execution == "map":
    fn = execution_lib.HostLoop(t["model"], t["tx"], t["schedule"], t["batch_size"],
                                steps_per_call, unroll=unroll).train
  elif execution == "vmap (select always)":
    fn = always_select_train_fn(t["model"], t["tx"], t["schedule"], t["batch_size"])
  else:
    fn = pop_lib.make_train_fn(t["model"], t["tx"], t["schedule"], t["batch_size"], execution,
                               steps_per_call, unroll=unroll)
  rngs = jnp.stack([jax.random.PRNGKey(i) for i in range(size)])
  pop = jax.jit(lambda r: pop_lib.create(t["model"], t["tx"], t["sample"], t["hparams"], r))(rngs)
  lrs = jnp.geomspace(3e-4, 3e-3, size).astype(jnp.float32)
  pop = jax.jit(pop_lib.set_dynamic)(pop, {"optim.learning_rate": lrs})
  data_keys = jnp.stack([jax.random.fold_in(t["data"].data_key, i) for i in range(size)])
  # As the tuner passes it: None when every member is active (no member-wise select).
  active = {"all": None, "array": jnp.ones((size,), bool),
            "first inactive": jnp.arange(size) != 0}[active]
  if execution == "vmap (select always)" and active is None:
    active = jnp.ones((size,), bool)
  carry = (pop, pop_lib.new_metric_sums(size))
  if EPOCH_ORDER:
    num_examples = int(t["data"].arrays["labels"].shape[0])
    carry += (pipeline.new_epoch_order(num_examples, (size,)),)
  jitted = fn if execution == "map" else jax.jit(fn, donate_argnums=tuple(range(len(carry))))
  return Runner(jitted, carry, (active, t["data"].arrays, data_keys), steps_per_call, size)


def always_select_train_fn(model, tx, schedule, batch_size):
  """The vmapped step as it was before: `where(active, new, old)` inside the member vmap,
  paid on every step even when every member is active (for the `select` part)."""
  def member_step(state, acc, order, active, data):
    batch = pipeline.device_batch(data, order, state.step, batch_size)
    new = step_lib.accumulate_train_step(model, tx, schedule, state, acc, batch)
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, (state, acc))

  def pop_step(states, accs, orders, active, data, data_keys):
    num_examples = data["labels"].shape[0]
    orders = pipeline.refresh_orders(orders, data_keys, states.step, num_examples, batch_size)
    states, accs = jax.vmap(member_step, in_axes=(0, 0, 0, 0, None))(
        states, accs, orders, active, data)
    return states, accs, orders

  return pop_step


def median(xs):
  return float(statistics.median(xs))


# --- Part 1: engine throughput. ---


def bench_engine(args, peak_gflops: float) -> list[dict]:
  rows = []
  rounds = args.rounds
  target = args.target_sec

  def measure(t, label, size, execution="vmap", steps_per_call=1, seq_actual=False,
              single_spc=None):
    """Interleaved rounds: single step loop, population, and (maybe) N sequential runs."""
    single_spc = single_spc or steps_per_call
    single, make_carry = single_runner(t, steps_per_call=single_spc)
    pop = population_runner(t, size, execution, steps_per_call)
    single_calls = single.calibrate(target)
    pop_calls = pop.calibrate(target)
    seq = None
    if seq_actual and size > 1:
      seq = Sequential(single, size, make_carry)
      seq_steps = max(single_spc, (single_calls * single_spc // size) // single_spc * single_spc)
      seq.time_steps(single_spc)  # Warm every model's buffers.
    loop = None  # With scan: also the plain Python step loop, as train.run does it.
    if single_spc > 1:
      loop, _ = single_runner(t)
      loop_calls = loop.calibrate(target)
    single_t, pop_t, seq_t, loop_t = [], [], [], []
    for _ in range(rounds):
      single_t.append(single.time_calls(single_calls) / single_spc)
      pop_t.append(pop.time_calls(pop_calls) / steps_per_call)
      if seq is not None:
        seq_t.append(seq.time_steps(seq_steps) / seq_steps / size)
      if loop is not None:
        loop_t.append(loop.time_calls(loop_calls))
    s, p = median(single_t), median(pop_t)
    flops = 6 * t["num_params"] * t["batch_size"]
    row = {
        "model": label, "members": size, "execution": execution,
        "steps_per_call": steps_per_call, "single_steps_per_call": single_spc,
        "num_params": t["num_params"],
        "single_step_ms": s * 1e3,
        "population_step_ms": p * 1e3,
        "per_member_step_ms": p / size * 1e3,
        "member_examples_per_sec": size * t["batch_size"] / p,
        "speedup_vs_sequential": size * s / p,  # N x single-model time / population time.
        "population_gflops": size * flops / p / 1e9,
        "fraction_of_peak": size * flops / p / 1e9 / peak_gflops,
        "single_fraction_of_peak": flops / s / 1e9 / peak_gflops,
        "peak_at_measure": peak_gflops,
        "population_steps_timed": pop_calls * steps_per_call * rounds,
        "single_steps_timed": single_calls * single_spc * rounds,
        "compile_sec": pop.compile_sec,
        "speedup_rounds": [size * a / b for a, b in zip(single_t, pop_t)],
    }
    if seq_t:
      row["sequential_per_member_step_ms"] = median(seq_t) * 1e3
      row["speedup_vs_sequential_measured"] = median(seq_t) / p * size
    if loop_t:
      row["single_python_loop_step_ms"] = median(loop_t) * 1e3
      row["speedup_vs_sequential_python_loop"] = size * median(loop_t) / p
    log(f"  {label:>18} N={size:<4} {execution:4} spc={steps_per_call:<3} "
        f"pop {p*1e3:8.3f} ms/step  per-member {p/size*1e3:7.3f} ms  single {s*1e3:6.3f} ms  "
        f"x{row['speedup_vs_sequential']:.2f} vs N x single  "
        f"{row['fraction_of_peak']:.0%} of peak"
        + (f"  (measured sequential x{row['speedup_vs_sequential_measured']:.2f})"
           if seq_t else "")
        + (f"  (x{row['speedup_vs_sequential_python_loop']:.2f} vs N x single Python loop)"
           if loop_t else ""))
    rows.append(row)
    del single, pop, seq, loop

  digits = task("digits", hidden=(256, 256))
  sizes = args.sizes
  for size in sizes:
    measure(digits, "digits 64-256-256-10", size, seq_actual=size <= args.seq_max)
  if 16 in sizes or args.quick:
    size = 16 if 16 in sizes else sizes[-1]
    # Scan against the single model also scanned: the fair baseline.
    measure(digits, "digits 64-256-256-10", size, steps_per_call=10)
    measure(digits, "digits 64-256-256-10", size, execution="map")
  m1d = task("mnist1d", hidden=(100, 100))
  for size in args.mnist1d_sizes:
    measure(m1d, "mnist1d 40-100-100-10", size)
  size = 16 if 16 in args.mnist1d_sizes else args.mnist1d_sizes[-1]
  measure(m1d, "mnist1d 40-100-100-10", size, steps_per_call=10)
  return rows


def bench_permutation(args) -> list[dict]:
  """What the device pipeline's shuffle costs: one permutation of the split vs one step.

  Older jaxtrain sorted the split every step; newer jaxtrain once per epoch.
  """
  rows = []
  for dataset, hidden in (("digits", (256, 256)), ("mnist1d", (100, 100))):
    t = task(dataset, hidden=hidden)
    data = t["data"]
    num_examples = int(data.arrays["labels"].shape[0])
    permute = jax.jit(lambda key, epoch: jax.random.permutation(
        jax.random.fold_in(key, epoch), num_examples))
    block(permute(data.data_key, jnp.int32(0)))
    single, _ = single_runner(t)
    calls = single.calibrate(args.target_sec)
    perm_t, step_t = [], []
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      for e in range(calls):
        out = permute(data.data_key, jnp.int32(e))
      block(out)
      perm_t.append((time.perf_counter() - t0) / calls)
      step_t.append(single.time_calls(calls))
    row = {"dataset": dataset, "train_examples": num_examples,
           "steps_per_epoch": num_examples // t["batch_size"],
           "permutation_ms": median(perm_t) * 1e3, "single_step_ms": median(step_t) * 1e3,
           "pipeline": "epoch order cached" if EPOCH_ORDER else "permutation every step"}
    log(f"  permutation of {dataset} ({num_examples}): {row['permutation_ms']:.3f} ms "
        f"(jitted, alone) vs {row['single_step_ms']:.3f} ms per single step ({row['pipeline']})")
    rows.append(row)
  return rows


# --- Part 1b: the member-wise select of the vmapped step. ---


def bench_select(args) -> list[dict]:
  """vmap step with `where(active)` always (before) vs only when a member is inactive (now)."""
  t = task("digits", hidden=(256, 256))
  rows = []
  for size in args.select_sizes:
    runners = {"select always (before)": population_runner(t, size, "vmap (select always)"),
               "select skipped, all active (now)": population_runner(t, size, "vmap"),
               "select, one member inactive (now)": population_runner(
                   t, size, "vmap", active="first inactive")}
    calls = {k: r.calibrate(args.target_sec) for k, r in runners.items()}
    times = {k: [] for k in runners}
    for _ in range(args.rounds):
      for k, r in runners.items():
        times[k].append(r.time_calls(calls[k]))
    before = median(times["select always (before)"])
    for k in runners:
      ms = median(times[k]) * 1e3
      rows.append({"model": "digits 64-256-256-10", "members": size, "variant": k,
                   "population_step_ms": ms, "vs_before": before * 1e3 / ms,
                   "rounds_ms": [x * 1e3 for x in times[k]]})
      log(f"  select N={size:<4} {k:>34}: {ms:8.3f} ms/step  x{before * 1e3 / ms:.3f} vs before")
  return rows


# --- Part 2: conv population, vmap vs map. ---


def bench_conv(args) -> list[dict]:
  """CNN population: vmap (grouped convolutions) vs map (host loop) vs N singles."""
  t = task("digits", model_name="cnn")
  c = t["config"]
  size = args.conv_members
  single, _ = single_runner(t)
  auto = execution_lib.choose("auto", "cnn")
  runners = {e: population_runner(t, size, e) for e in ("vmap", "map")}
  calls = {e: r.calibrate(args.target_sec, min_calls=2) for e, r in runners.items()}
  single_calls = single.calibrate(args.target_sec)
  times = {e: [] for e in runners}
  single_t = []
  for _ in range(args.rounds):
    single_t.append(single.time_calls(single_calls))
    for e, r in runners.items():
      times[e].append(r.time_calls(calls[e]))
  s = median(single_t)
  rows = []
  for e, r in runners.items():
    p = median(times[e])
    rows.append({"model": f"digits cnn {tuple(c.model.features)}", "members": size,
                 "execution": e, "auto_picks": e == auto, "population_step_ms": p * 1e3,
                 "per_member_step_ms": p / size * 1e3, "single_step_ms": s * 1e3,
                 "speedup_vs_sequential": size * s / p, "compile_sec": r.compile_sec,
                 "steps_timed": calls[e] * args.rounds})
    log(f"  cnn N={size} {e:>19}: {p*1e3:8.2f} ms/step, per member {p/size*1e3:.3f} ms, "
        f"single {s*1e3:.3f} ms, x{size*s/p:.2f} vs N x single, compile {r.compile_sec:.1f} s")
  return rows


# --- Parts 3 and 4: the tuner and the peers. ---


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


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


def tune_once(config, workdir: Path) -> dict:
  from jaxtrain import tune  # pylint: disable=g-import-not-at-top
  t0, cpu0 = time.perf_counter(), time.process_time()
  result = tune.run(config, workdir)
  wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  return {"strategy": config.tune.strategy, "members": result["num_members"],
          "member_steps": result["member_steps"], "best_eval": result["best_score"],
          "best_test": (result.get("best_test") or {}).get("eval/accuracy"),
          "best_settings": result["best_settings"], "train_time_sec": result["train_time_sec"],
          "wall_time_sec": wall, "cpu_sec": cpu,
          "train_step_compiles": result["train_step_compiles"]}


def bench_search(args, root: Path) -> list[dict]:
  rows = []
  for name in ("digits_pbt",) if args.quick else ("digits_pbt", "mnist1d_pbt"):
    base = load_config(name)
    if args.quick:
      base.tune.population_size = 4
      base.train.eval_every_steps, base.train.num_steps, base.checkpoint.every_steps = 50, 100, 100
    grid = copy.deepcopy(base)
    grid.tune.strategy = "grid"
    grid.tune.grid_points = args.grid_points
    # The grid searches learning rate x weight decay only (dropout stays at 0).
    grid.tune.space = type(grid.tune.space)({"optim": dict(base.tune.space.optim)})
    for label, config in (("pbt", base), ("grid", grid)):
      log(f"  {name} {label} ...")
      row = {"config": name, "search": label, **tune_once(config, root / f"{name}_{label}")}
      rows.append(row)
      log(f"  {name} {label}: {row['members']} members, {row['member_steps']} member-steps, "
          f"test {row['best_test']:.4f}, eval {row['best_eval']:.4f}, "
          f"wall {row['wall_time_sec']:.1f} s")
  return rows


def peer_config(num_steps: int):
  """The peer task: MNIST-1D MLP 40-100-100-10, adamw, full train split, eval on test."""
  c = load_config("mnist1d_pbt")
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
      from jaxtrain import models as mdl  # pylint: disable=g-import-not-at-top
      from jaxtrain.core import optim as opt
      from jaxtrain.jobs import evaluate as ev
      from jaxtrain.core import state as st, step as stp  # pylint: disable=g-import-not-at-top
      from jaxtrain.data import pipeline as pl  # pylint: disable=g-import-not-at-top
      c = ev.load_config(config_dir)
      data, info = pl.create_train_data(c.data, c.seed)
      model = mdl.build(c.model, info.num_classes, info.input_shape)
      tx, schedule = opt.build(c.optim, c.train.num_steps)
      hparams = {"dropout_rate": c.model.dropout_rate, "label_smoothing": c.loss.label_smoothing}
      seed = zlib.crc32(self.trial_id.encode()) % (2**31)
      sample = data.sample_batch()
      self.state = jx.jit(lambda r: st.create(model, tx, sample, hparams, r))(
          jx.random.PRNGKey(seed))
      self.order = pl.new_epoch_order(data.num_examples)
      self.acc = {k: jnpx.zeros((), jnpx.float32)
                  for k in ("loss", "accuracy", "grad_norm", "update_norm", "learning_rate",
                            "count")}
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
           runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
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
      result = tune_once(c, root / f"peer_{strategy}")
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


# --- Output. ---


def markdown(results: dict) -> str:
  lines = []
  peak = results.get("peak")
  if peak:
    end = results.get("peak_end", {})
    lines.append(f"Peak f32 matmul (2048x2048 jnp.dot), GFLOP/s: start "
                 f"{peak['gflops_best']:.0f} best / {peak['gflops_median']:.0f} median; end "
                 f"{end.get('gflops_best', math.nan):.0f} best / "
                 f"{end.get('gflops_median', math.nan):.0f} median; "
                 f"% of peak below uses {results.get('peak_used_gflops', peak['gflops_best']):.0f}")
  if results.get("engine"):
    lines += ["", "| model | N | execution | steps/call | population step ms | per-member ms | "
              "single ms | member-examples/s | vs N x single | vs N sequential (measured) | "
              "% of peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["engine"]:
      seq = r.get("speedup_vs_sequential_measured")
      loop = r.get("speedup_vs_sequential_python_loop")
      lines.append(
          f"| {r['model']} | {r['members']} | {r['execution']} | {r['steps_per_call']} | "
          f"{r['population_step_ms']:.3f} | {r['per_member_step_ms']:.3f} | "
          f"{r['single_step_ms']:.3f} | {r['member_examples_per_sec']:,.0f} | "
          f"{r['speedup_vs_sequential']:.2f}x | "
          f"{f'{seq:.2f}x' if seq else '-'}"
          f"{f' ({loop:.2f}x vs unscanned singles)' if loop else ''} | "
          f"{r['fraction_of_peak']:.0%} |")
  if results.get("permutation"):
    lines += ["", "| dataset | train examples | steps/epoch | one permutation ms | "
              "single step ms | pipeline |", "|---|---|---|---|---|---|"]
    for r in results["permutation"]:
      lines.append(f"| {r['dataset']} | {r['train_examples']} | {r['steps_per_epoch']} | "
                   f"{r['permutation_ms']:.3f} | {r['single_step_ms']:.3f} | {r['pipeline']} |")
  if results.get("select"):
    lines += ["", "| model | N | vmapped step | population step ms | speed vs before |",
              "|---|---|---|---|---|"]
    for r in results["select"]:
      lines.append(f"| {r['model']} | {r['members']} | {r['variant']} | "
                   f"{r['population_step_ms']:.3f} | {r['vs_before']:.3f}x |")
  if results.get("conv"):
    lines += ["", "| model | N | execution | population step ms | per-member ms | "
              "single ms | vs N x single | compile s |", "|---|---|---|---|---|---|---|---|"]
    for r in results["conv"]:
      lines.append(f"| {r['model']} | {r['members']} | {r['execution']} | "
                   f"{r['population_step_ms']:.2f} | {r['per_member_step_ms']:.3f} | "
                   f"{r['single_step_ms']:.3f} | {r['speedup_vs_sequential']:.2f}x | "
                   f"{r['compile_sec']:.1f} |")
  if results.get("search"):
    lines += ["", "| config | search | members | member-steps | best eval | best test | "
              "wall s | CPU s |", "|---|---|---|---|---|---|---|---|"]
    for r in results["search"]:
      lines.append(f"| {r['config']} | {r['search']} | {r['members']} | {r['member_steps']:,} | "
                   f"{r['best_eval']:.4f} | {r['best_test']:.4f} | {r['wall_time_sec']:.1f} | "
                   f"{r['cpu_sec']:.1f} |")
  peers = results.get("peers")
  if peers:
    targets = [f"{t:.2f}" for t in peers["targets"]]
    budget = f"{peers['budget_sec']:.0f} s"

    def cell(value, digits=1):
      return "not reached" if value is None else f"{value:.{digits}f}"

    for kind, prefix in (("wall", ""), ("CPU", "cpu_")):
      lines += ["", f"| searcher ({kind} seconds) | trials/members | total s | best acc | "
                f"best within {budget} | " + " | ".join(f"s to {t}" for t in targets) + " |",
                "|---|---|---|---|---|" + "---|" * len(targets)]
      for name, key, count in (("Optuna TPE (train.run per trial)", "optuna", "trials"),
                               ("Ray Tune PBT (reuse_actors=True)", "ray_pbt", "members"),
                               ("jaxtrain PBT", "jaxtrain_pbt", "members"),
                               ("jaxtrain random", "jaxtrain_random", "members")):
        r = peers.get(key)
        if not r:
          continue
        if prefix and r.get(f"{prefix}seconds_to_target") is None:
          lines.append(f"| {name} | {r[count]} | n/a | {r['best_overall']:.4f} | n/a | "
                       + " | ".join("n/a" for _ in targets) + " |")
          continue
        total = (r.get("total_cpu_sec", r.get("cpu_sec")) if prefix
                 else r.get("total_sec", r.get("wall_time_sec")))
        cells = [cell(r[f"{prefix}seconds_to_target"][t]) for t in targets]
        lines.append(f"| {name} | {r[count]} | {total:.1f} | {r['best_overall']:.4f} | "
                     f"{cell(r[f'{prefix}best_within_budget'], 4)} | " + " | ".join(cells) + " |")
    speedups = peers.get("speedup_of_jaxtrain_pbt", {})
    if speedups:
      lines += ["", "| jaxtrain PBT reaches the target sooner than (wall) | "
                + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
      for peer, row in speedups.items():
        lines.append(f"| {peer} | " + " | ".join(
            f"{row[t]:.1f}x" if row.get(t) else "-" for t in targets) + " |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--quick", action="store_true",
                 help="smoke run: few members, few steps, short timings (2-3 minutes)")
  p.add_argument("--out", default=None, help="write all results as JSON to this path")
  p.add_argument("--parts", default=",".join(PARTS),
                 help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
  p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                 help="run the peer comparison (minutes); --no-peers skips it")
  p.add_argument("--sizes", default="1,4,16,64,256", help="population sizes, digits MLP")
  p.add_argument("--mnist1d_sizes", default="1,16,64", help="population sizes, MNIST-1D MLP")
  p.add_argument("--seq_max", type=int, default=16,
                 help="also run N single models one after another for N up to this")
  p.add_argument("--select_sizes", default="16,64", help="population sizes, select part")
  p.add_argument("--conv_members", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
  p.add_argument("--target_sec", type=float, default=0.25,
                 help="seconds of warm work per timed measurement")
  p.add_argument("--grid_points", type=int, default=8, help="grid points per dimension")
  p.add_argument("--optuna_trials", type=int, default=48)
  p.add_argument("--peer_steps", type=int, default=3000)
  p.add_argument("--peer_members", type=int, default=16)
  p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True,
                 help="include Ray Tune PBT in the peers (needs `pip install 'ray[tune]'`)")
  p.add_argument("--ray_members", type=int, default=16, help="Ray Tune PBT trials")
  p.add_argument("--targets", default="0.60,0.65,0.68", help="test accuracies to time")
  p.add_argument("--budget_sec", type=float, default=60.0)
  p.add_argument("--workdir", default=None, help="where tuning runs write (default: a temp dir)")
  args = p.parse_args(argv)
  args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
  unknown = set(args.parts) - set(PARTS)
  if unknown:
    p.error(f"unknown part(s) {sorted(unknown)}; choose from {','.join(PARTS)}")
  if not args.peers and "peers" in args.parts:
    args.parts.remove("peers")
  if "peers" in args.parts and args.ray and importlib.util.find_spec("ray") is None:
    p.error("the peers part runs Ray Tune: pip install -e '.[bench]' (or 'ray[tune]'), "
            "or pass --no-ray")
  args.sizes = [int(x) for x in args.sizes.split(",")]
  args.mnist1d_sizes = [int(x) for x in args.mnist1d_sizes.split(",")]
  args.select_sizes = [int(x) for x in args.select_sizes.split(",")]
  args.targets = [float(x) for x in args.targets.split(",")]
  if args.quick:
    args.sizes, args.mnist1d_sizes, args.seq_max, args.select_sizes = [1, 4], [4], 4, [4]
    args.conv_members, args.rounds, args.target_sec = 2, 1, 0.05
    args.grid_points, args.optuna_trials, args.peer_steps = 2, 2, 200
    args.peer_members, args.budget_sec, args.ray_members = 4, 10.0, 4
  return args


def main(argv=None):
  args = parse_args(argv)
  os.environ.setdefault("JAXTRAIN_DATA_DIR", "/tmp/tfdsdata")
  started = time.perf_counter()
  results = {"meta": {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join([Path(sys.executable).name] + sys.argv),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
      "platform": platform.platform(), "load_average_start": os.getloadavg(),
      "args": vars(args)}}
  root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_pop_"))
  log(f"workdir for tuning runs: {root}")
  if "engine" in args.parts or "conv" in args.parts:
    results["peak"] = peak_matmul(reps=3 if args.quick else 10)
    log(f"peak matmul: {results['peak']['gflops_best']:.0f} GFLOP/s")
  loads = results["meta"]["load_average_by_part"] = {}
  if "engine" in args.parts:
    log("engine:")
    results["engine"] = bench_engine(args, results["peak"]["gflops_best"])
    results["permutation"] = bench_permutation(args)
    loads["engine"] = os.getloadavg()
  if "select" in args.parts:
    log("select:")
    results["select"] = bench_select(args)
    loads["select"] = os.getloadavg()
  if "conv" in args.parts:
    log("conv:")
    results["conv"] = bench_conv(args)
    loads["conv"] = os.getloadavg()
  if "peak" in results:
    results["peak_end"] = peak_matmul(reps=3 if args.quick else 10)
    # The machine is shared: the fraction of peak uses the best of both measurements.
    peak = max(results["peak"]["gflops_best"], results["peak_end"]["gflops_best"])
    results["peak_used_gflops"] = peak
    for row in results.get("engine", []):
      row["fraction_of_peak"] = row["population_gflops"] / peak
      row["single_fraction_of_peak"] *= row["peak_at_measure"] / peak
  if "search" in args.parts:
    log("search:")
    results["search"] = bench_search(args, root)
    loads["search"] = os.getloadavg()
  if "peers" in args.parts:
    log("peers:")
    results["peers"] = bench_peers(args, root)
    loads["peers"] = os.getloadavg()
  results["meta"]["total_sec"] = time.perf_counter() - started
  results["meta"]["load_average_end"] = os.getloadavg()
  text = markdown(results)
  print(text)
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {args.out}")
  log(f"total {results['meta']['total_sec']:.0f} s")


if __name__ == "__main__":
  main()
