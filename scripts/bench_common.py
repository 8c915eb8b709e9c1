"""What the population benchmarks share: timing, set-up, tuning runs and output.

Used by scripts/bench_engine.py, bench_conv.py, bench_search.py and bench_peers.py
(formerly the parts of one script, scripts/bench_population.py). Not a benchmark
itself: a piece used by one of those scripts only lives in that script.
"""

from __future__ import annotations

import argparse
import contextlib
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

from jaxtrain.config import base_config  # noqa: E402
from jaxtrain.core import metrics, state as state_lib, step as step_lib  # noqa: E402
from jaxtrain.data import pipeline  # noqa: E402
from jaxtrain.jobs import setup  # noqa: E402
from jaxtrain.tune import execution as execution_lib  # noqa: E402
from jaxtrain.tune import population as pop_lib  # noqa: E402

# The device pipeline caches each epoch's permutation (newer jaxtrain) instead of
# sorting the whole split every step (older jaxtrain); the scripts run on both.
EPOCH_ORDER = hasattr(pipeline, "refresh_order")


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def median(xs):
  return float(statistics.median(xs))


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


def peak_start(results: dict, quick: bool) -> None:
  results["peak"] = peak_matmul(reps=3 if quick else 10)
  log(f"peak matmul: {results['peak']['gflops_best']:.0f} GFLOP/s")


def peak_end(results: dict, quick: bool) -> float:
  """Measures the peak again after the timed parts; returns the peak the fractions use."""
  results["peak_end"] = peak_matmul(reps=3 if quick else 10)
  # The machine is shared: the fraction of peak uses the best of both measurements.
  peak = max(results["peak"]["gflops_best"], results["peak_end"]["gflops_best"])
  results["peak_used_gflops"] = peak
  return peak


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
  c.train.num_steps = num_steps
  data, info = pipeline.create_train_data(c.data, c.seed)
  r = setup.recipe(c, info)
  model, tx, schedule, hparams = r.model, r.tx, r.schedule, r.hparams
  sample = data.sample_batch()
  params = r.shapes(sample).params
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
             metrics.new_sums())
    return carry + (pipeline.new_epoch_order(num_examples),) if EPOCH_ORDER else carry

  donate = (0, 1, 2) if EPOCH_ORDER else (0, 1)
  jitted = jax.jit(fn, donate_argnums=donate)
  args = (t["data"].arrays, t["data"].data_key)
  return Runner(jitted, make_carry(0), args, steps_per_call, 1), make_carry


def population_runner(t, size: int, execution: str = "vmap", steps_per_call: int = 1,
                      unroll=1, active="all", train_fn=None) -> Runner:
  """The engine as the tuner uses it, state and sums donated: `make_train_fn` jitted
  (vmap), or the host loop over one jitted member step (map).

  `train_fn`, if given, is a what-if step timed in place of the engine's, called
  as the vmapped engine step is, with `active` always an array (bench_engine's
  select part).
  """
  if execution == "map":
    fn = execution_lib.HostLoop(t["model"], t["tx"], t["schedule"], t["batch_size"],
                                steps_per_call, unroll=unroll).train
  elif train_fn is not None:
    fn = train_fn
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
  if train_fn is not None and active is None:
    active = jnp.ones((size,), bool)
  carry = (pop, metrics.new_sums((size,)))
  if EPOCH_ORDER:
    num_examples = int(t["data"].arrays["labels"].shape[0])
    carry += (pipeline.new_epoch_order(num_examples, (size,)),)
  jitted = fn if execution == "map" else jax.jit(fn, donate_argnums=tuple(range(len(carry))))
  return Runner(jitted, carry, (active, t["data"].arrays, data_keys), steps_per_call, size)


# --- Tuning runs (bench_search.py and bench_peers.py). ---


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


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


def tuning_part(args, results: dict, name: str, bench) -> None:
  """Runs a part that starts tuning runs, results[name] = bench(args, root), where
  root is --workdir or a fresh temporary directory."""
  root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_pop_"))
  log(f"workdir for tuning runs: {root}")
  with part(results, name):
    results[name] = bench(args, root)


# --- Command line and output. ---


def arg_parser(doc: str, quick_help: str, timing: bool = False,
               tuning: bool = False) -> argparse.ArgumentParser:
  """The options every benchmark script has (--quick, --out), the timing ones
  (--rounds, --target_sec) with `timing`, --workdir with `tuning`; the script's
  docstring gives the description (first paragraph) and the epilog (the rest)."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=doc.split("\n\n", 1)[1])
  p.add_argument("--quick", action="store_true", help=quick_help)
  p.add_argument("--out", default=None, help="write all results as JSON to this path")
  if timing:
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    p.add_argument("--target_sec", type=float, default=0.25,
                   help="seconds of warm work per timed measurement")
  if tuning:
    p.add_argument("--workdir", default=None,
                   help="where tuning runs write (default: a temp dir)")
  return p


def quick_timing(args) -> None:
  """--quick's short timings, for the scripts with --rounds and --target_sec."""
  if args.quick:
    args.rounds, args.target_sec = 1, 0.05


@contextlib.contextmanager
def part(results: dict, name: str):
  """Around one part's measurements: logs its name, then records the load average."""
  log(f"{name}:")
  yield
  results["meta"]["load_average_by_part"][name] = os.getloadavg()


def table(header: list[str], rows: list[list[str]]) -> list[str]:
  """A markdown table's lines, a blank line first, from column names and cell strings."""
  return (["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(row) + " |" for row in rows])


def peak_lines(results: dict) -> list[str]:
  peak = results.get("peak")
  if not peak:
    return []
  end = results.get("peak_end", {})
  return [f"Peak f32 matmul (2048x2048 jnp.dot), GFLOP/s: start "
          f"{peak['gflops_best']:.0f} best / {peak['gflops_median']:.0f} median; end "
          f"{end.get('gflops_best', math.nan):.0f} best / "
          f"{end.get('gflops_median', math.nan):.0f} median; "
          f"% of peak below uses {results.get('peak_used_gflops', peak['gflops_best']):.0f}"]


def main(parse_args, measure, markdown, argv=None) -> None:
  """A benchmark script's main: its `parse_args(argv)`, the machine's metadata,
  its `measure(args, results)`, then the tables `markdown(results)` makes,
  printed, and the results as JSON (--out)."""
  args = parse_args(argv)
  os.environ.setdefault("JAXTRAIN_DATA_DIR", "/tmp/tfdsdata")
  started = time.perf_counter()
  results = {"meta": {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join([Path(sys.executable).name] + sys.argv),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
      "platform": platform.platform(), "load_average_start": os.getloadavg(),
      "args": vars(args), "load_average_by_part": {}}}
  measure(args, results)
  results["meta"]["total_sec"] = time.perf_counter() - started
  results["meta"]["load_average_end"] = os.getloadavg()
  # Accelerators report their peak memory (GPU/TPU); the CPU client reports none.
  stats = jax.local_devices()[0].memory_stats() or {}
  results["meta"]["peak_device_memory_bytes"] = stats.get("peak_bytes_in_use")
  print("\n".join(markdown(results)))
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {args.out}")
  log(f"total {results['meta']['total_sec']:.0f} s")
