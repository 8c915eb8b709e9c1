"""The population engine's step against single runs, and what its parts cost.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_engine.py --out=bench_engine.json
  python scripts/bench_engine.py --parts engine      # the engine rows and the permutation
  python scripts/bench_engine.py --parts select      # the member-wise select only
  python scripts/bench_engine.py --quick             # smoke run at small sizes, 2-3 minutes

Parts (both on by default; `--parts engine` or `--parts select` picks one):

  engine  population step time for N members (vmap, jitted, donated, warm) vs a
          single-model step loop and N sequential runs; steps_per_call=10 scan;
          fraction of the measured f32 matmul peak. Then the device pipeline's
          shuffle: one permutation of the split vs one single-model step
          (the `permutation` table; it runs with the engine part).
  select  the vmapped step with the member-wise `where(active)` select always on (as
          before) vs only when some member is inactive (now), digits MLP N=16, 64.

The CNN population (vmap vs map) is scripts/bench_conv.py; the tuner against a
grid is scripts/bench_search.py, against Optuna and Ray Tune scripts/bench_peers.py.

Timings on a shared CPU are noisy: every comparison is measured side by side in
this process, in interleaved rounds, and reported as the median of the rounds.
"""

from __future__ import annotations

import time

import bench_common as common  # First: it puts the repository on sys.path.
from bench_common import log, median

import jax
import jax.numpy as jnp

from jaxtrain.core import step as step_lib
from jaxtrain.data import pipeline

PARTS = ("engine", "select")


class Sequential:
  """N single models trained one after another through one compiled step."""

  def __init__(self, single: common.Runner, count: int, make_carry):
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
    common.block(self.carries)
    return time.perf_counter() - t0


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


# --- Part 1: engine throughput. ---


def bench_engine(args, peak_gflops: float) -> list[dict]:
  rows = []
  rounds = args.rounds
  target = args.target_sec

  def measure(t, label, size, execution="vmap", steps_per_call=1, seq_actual=False,
              single_spc=None):
    """Interleaved rounds: single step loop, population, and (maybe) N sequential runs."""
    single_spc = single_spc or steps_per_call
    single, make_carry = common.single_runner(t, steps_per_call=single_spc)
    pop = common.population_runner(t, size, execution, steps_per_call)
    single_calls = single.calibrate(target)
    pop_calls = pop.calibrate(target)
    seq = None
    if seq_actual and size > 1:
      seq = Sequential(single, size, make_carry)
      seq_steps = max(single_spc, (single_calls * single_spc // size) // single_spc * single_spc)
      seq.time_steps(single_spc)  # Warm every model's buffers.
    loop = None  # With scan: also the plain Python step loop, as train.run does it.
    if single_spc > 1:
      loop, _ = common.single_runner(t)
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

  digits = common.task("digits", hidden=(256, 256))
  sizes = args.sizes
  for size in sizes:
    measure(digits, "digits 64-256-256-10", size, seq_actual=size <= args.seq_max)
  if 16 in sizes or args.quick:
    size = 16 if 16 in sizes else sizes[-1]
    # Scan against the single model also scanned: the fair baseline.
    measure(digits, "digits 64-256-256-10", size, steps_per_call=10)
    measure(digits, "digits 64-256-256-10", size, execution="map")
  m1d = common.task("mnist1d", hidden=(100, 100))
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
    t = common.task(dataset, hidden=hidden)
    data = t["data"]
    num_examples = int(data.arrays["labels"].shape[0])
    permute = jax.jit(lambda key, epoch: jax.random.permutation(
        jax.random.fold_in(key, epoch), num_examples))
    common.block(permute(data.data_key, jnp.int32(0)))
    single, _ = common.single_runner(t)
    calls = single.calibrate(args.target_sec)
    perm_t, step_t = [], []
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      for e in range(calls):
        out = permute(data.data_key, jnp.int32(e))
      common.block(out)
      perm_t.append((time.perf_counter() - t0) / calls)
      step_t.append(single.time_calls(calls))
    row = {"dataset": dataset, "train_examples": num_examples,
           "steps_per_epoch": num_examples // t["batch_size"],
           "permutation_ms": median(perm_t) * 1e3, "single_step_ms": median(step_t) * 1e3,
           "pipeline": "epoch order cached" if common.EPOCH_ORDER else "permutation every step"}
    log(f"  permutation of {dataset} ({num_examples}): {row['permutation_ms']:.3f} ms "
        f"(jitted, alone) vs {row['single_step_ms']:.3f} ms per single step ({row['pipeline']})")
    rows.append(row)
  return rows


# --- Part 1b: the member-wise select of the vmapped step. ---


def bench_select(args) -> list[dict]:
  """vmap step with `where(active)` always (before) vs only when a member is inactive (now)."""
  t = common.task("digits", hidden=(256, 256))
  rows = []
  for size in args.select_sizes:
    always = always_select_train_fn(t["model"], t["tx"], t["schedule"], t["batch_size"])
    runners = {"select always (before)": common.population_runner(
                   t, size, "vmap (select always)", train_fn=always),
               "select skipped, all active (now)": common.population_runner(t, size, "vmap"),
               "select, one member inactive (now)": common.population_runner(
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


# --- Output. ---


def markdown(results: dict) -> list[str]:
  lines = common.peak_lines(results)
  if results.get("engine"):
    rows = []
    for r in results["engine"]:
      seq = r.get("speedup_vs_sequential_measured")
      loop = r.get("speedup_vs_sequential_python_loop")
      rows.append([
          r["model"], f"{r['members']}", r["execution"], f"{r['steps_per_call']}",
          f"{r['population_step_ms']:.3f}", f"{r['per_member_step_ms']:.3f}",
          f"{r['single_step_ms']:.3f}", f"{r['member_examples_per_sec']:,.0f}",
          f"{r['speedup_vs_sequential']:.2f}x",
          f"{f'{seq:.2f}x' if seq else '-'}"
          f"{f' ({loop:.2f}x vs unscanned singles)' if loop else ''}",
          f"{r['fraction_of_peak']:.0%}"])
    lines += common.table(
        ["model", "N", "execution", "steps/call", "population step ms", "per-member ms",
         "single ms", "member-examples/s", "vs N x single", "vs N sequential (measured)",
         "% of peak"], rows)
  if results.get("permutation"):
    lines += common.table(
        ["dataset", "train examples", "steps/epoch", "one permutation ms", "single step ms",
         "pipeline"],
        [[r["dataset"], f"{r['train_examples']}", f"{r['steps_per_epoch']}",
          f"{r['permutation_ms']:.3f}", f"{r['single_step_ms']:.3f}", r["pipeline"]]
         for r in results["permutation"]])
  if results.get("select"):
    lines += common.table(
        ["model", "N", "vmapped step", "population step ms", "speed vs before"],
        [[r["model"], f"{r['members']}", r["variant"], f"{r['population_step_ms']:.3f}",
          f"{r['vs_before']:.3f}x"] for r in results["select"]])
  return lines


def parse_args(argv=None):
  p = common.arg_parser(__doc__, "smoke run: N=1,4, few rounds, short timings", timing=True)
  p.add_argument("--parts", default=",".join(PARTS),
                 help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
  p.add_argument("--sizes", default="1,4,16,64,256", help="population sizes, digits MLP")
  p.add_argument("--mnist1d_sizes", default="1,16,64", help="population sizes, MNIST-1D MLP")
  p.add_argument("--seq_max", type=int, default=16,
                 help="also run N single models one after another for N up to this")
  p.add_argument("--select_sizes", default="16,64", help="population sizes, select part")
  args = p.parse_args(argv)
  args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
  unknown = set(args.parts) - set(PARTS)
  if unknown:
    p.error(f"unknown part(s) {sorted(unknown)}; choose from {','.join(PARTS)}")
  args.sizes = [int(x) for x in args.sizes.split(",")]
  args.mnist1d_sizes = [int(x) for x in args.mnist1d_sizes.split(",")]
  args.select_sizes = [int(x) for x in args.select_sizes.split(",")]
  if args.quick:
    args.sizes, args.mnist1d_sizes, args.seq_max, args.select_sizes = [1, 4], [4], 4, [4]
  common.quick_timing(args)
  return args


def measure(args, results: dict) -> None:
  if "engine" in args.parts:
    common.peak_start(results, args.quick)
    with common.part(results, "engine"):
      results["engine"] = bench_engine(args, results["peak"]["gflops_best"])
      results["permutation"] = bench_permutation(args)
  if "select" in args.parts:
    with common.part(results, "select"):
      results["select"] = bench_select(args)
  if "peak" in results:
    peak = common.peak_end(results, args.quick)
    for row in results.get("engine", []):
      row["fraction_of_peak"] = row["population_gflops"] / peak
      row["single_fraction_of_peak"] *= row["peak_at_measure"] / peak


if __name__ == "__main__":
  common.main(parse_args, measure, markdown)
