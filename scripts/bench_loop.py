"""jaxtrain's training loop vs a minimal hand-written `jax.jit` loop, side by side.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_loop.py --out=bench_loop.json
  python scripts/bench_loop.py --steps=300 --log_every=100 --rounds=1   # smoke run, ~20 s
  python scripts/bench_loop.py --jaxtrain_root=/tmp/other_checkout --set train.nan_policy=none

Both sides train the same model on the same data in this one process:

  jaxtrain      `jaxtrain.train.run(config, workdir)` on configs/digits_mlp.py with
                train.num_steps = --steps, checkpoint.every_steps = num_steps and
                train.eval_every_steps = num_steps (one eval and one save, at the end),
                a log record every --log_every steps; a fresh workdir per run.
  hand-written  the same Flax MLP (built by `jaxtrain.models.build`, same init), optax.adam,
                the same batch size and the same epoch permutations as jaxtrain's device
                pipeline; the split lives on the device and a Python for-loop calls a
                jitted, donated step that gathers its batch on the device from a
                precomputed index stream. Nothing else: no metrics, no hooks. With
                --set train.steps_per_call=K the hand-written step runs K steps per
                call too (a lax.scan), as a user would write it.

Each round runs jaxtrain for --steps steps and the (already compiled and warm)
hand-written loop for --steps steps, back to back, alternating which goes first;
the table shows the median over --rounds of each side, their ratio, and the
median of the per-round ratios.

jaxtrain's steady-state steps/s is measured two ways:

  logged  the `steps_per_sec` values train.run writes to WORKDIR/metrics.jsonl, first
          interval dropped (it includes compilation); median over intervals. This is
          the loop's own clock: it excludes eval and checkpoint pauses but includes all
          per-step host work.
  wall    train.run's total wall time minus its startup and teardown, i.e. the wall
          time between the first and the last in-loop metrics record (timestamped by
          wrapping `writers.MetricsLog.write` in this process; jaxtrain is not modified).
          Startup = everything up to the first record (checks, data loading, state init,
          compilation, the first interval); teardown = the final eval, checkpoint wait,
          closing files. Both are reported in seconds.

The ratio jaxtrain / hand-written uses `wall` (it counts everything that scales with
the number of steps, as the hand-written timing does); `logged` is shown beside it,
and so is the ratio of CPU time per step (process CPU seconds over the same steps,
all threads): it is not a speed, but it moves much less than wall time when other
processes load the machine, so it is the steadier comparison on a shared CPU.
Compile time: the seconds JAX reports (`jax.monitoring` trace + lowering + XLA compile
events) for jaxtrain's `train_fn` and for the hand-written step; the hand-written
step's first call (compile + one step, blocked) is shown too.

Timings on a shared CPU are noisy: compare the two sides within one run of this
script, not across runs. Goal: jaxtrain / hand-written >= 0.95.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
  class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass

  parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
  parser.add_argument("--config", default=str(REPO / "configs" / "digits_mlp.py"),
                      help="config file with get_config() (an MLP + adam config)")
  parser.add_argument("--steps", type=int, default=2000,
                      help="train steps per timed run (each side, each round)")
  parser.add_argument("--rounds", type=int, default=3,
                      help="rounds of (jaxtrain run, hand-written run); medians are reported")
  parser.add_argument("--log_every", type=int, default=200,
                      help="jaxtrain's train.log_every_steps (one steps/s value per interval)")
  parser.add_argument("--warmup", type=int, default=200,
                      help="hand-written steps run once after compiling, before timing")
  parser.add_argument("--data_dir", default="",
                      help="config.data.data_dir (default: $JAXTRAIN_DATA_DIR or jaxtrain's)")
  parser.add_argument("--jaxtrain_root", default=str(REPO),
                      help="directory holding the jaxtrain package to benchmark (e.g. an "
                           "exported commit, to compare versions)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, repeatable (e.g. train.steps_per_call=10); the "
                           "hand-written loop reads only data, model, optim.learning_rate, seed")
  parser.add_argument("--out", default="", help="also write the results as JSON here")
  args = parser.parse_args(argv)
  if args.steps < 3 * args.log_every:
    parser.error(f"--steps={args.steps} must be at least 3 * --log_every={args.log_every} "
                 "(the wall rate needs records after the first one and before the last)")
  return args


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def load_config(path: str, overrides: list[str]):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    key, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # A bare string, e.g. data.name=mnist1d.
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    with config.unlocked():
      node[leaf] = value
  return config


class CompileTimes:
  """Seconds JAX spends tracing, lowering and compiling, per function name."""

  def __init__(self, jax_monitoring):
    self.seconds: dict[str, float] = {}
    jax_monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, fun_name: str = "", **_):
    if event.startswith("/jax/core/compile/"):
      name = fun_name.removeprefix("jit(").removesuffix(")")
      self.seconds[name] = self.seconds.get(name, 0.0) + duration

  def pop(self, *names: str) -> float:
    """Seconds for functions named `names` (or `name_xK`, K-step scans); clears the table."""
    total = sum(s for n, s in self.seconds.items()
                if n in names or any(n.startswith(name + "_x") for name in names))
    self.seconds.clear()
    return total


# --- jaxtrain: train.run in a fresh workdir. ---


def jaxtrain_run(config, steps: int, log_every: int, compiles: CompileTimes) -> dict:
  """One `train.run`; returns its steady-state rates, startup, teardown and compile time."""
  from jaxtrain.io import writers  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import train
  c = config.copy_and_resolve_references()
  c.train.num_steps = steps
  c.train.log_every_steps = log_every
  c.train.eval_every_steps = steps  # One evaluation, at the end.
  c.checkpoint.every_steps = steps  # One save, at the end.

  record_times: list[tuple[int, float, float]] = []  # (step, wall clock, CPU time)
  original = writers.MetricsLog

  class TimedMetricsLog(original):
    def write(self, step, values):
      record_times.append((step, time.perf_counter(), time.process_time()))
      super().write(step, values)

  compiles.pop()
  writers.MetricsLog = TimedMetricsLog
  try:
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as workdir:
      t0 = time.perf_counter()
      final = train.run(c, workdir)
      total = time.perf_counter() - t0
      records = writers.read_metrics(workdir)
  finally:
    writers.MetricsLog = original
  # train_one (and train_one_xK with train.steps_per_call = K); train_fn in older versions.
  compile_s = compiles.pop("train_one", "train_fn")
  if not compile_s:
    log("warning: no compile events for a function named train_one or train_fn; jaxtrain's "
        "compile time is reported as 0")

  rates = [r["steps_per_sec"] for r in records if "steps_per_sec" in r]
  logged = statistics.median(rates[1:])  # The first interval includes compilation.
  # In-loop records: every log step before the last (the last is written after the loop,
  # behind the final eval and save).
  in_loop = [record for record in record_times if record[0] < steps]
  (s_first, t_first, cpu_first), (s_last, t_last, cpu_last) = in_loop[0], in_loop[-1]
  return {
      "logged_steps_per_sec": logged,
      "logged_intervals": rates,
      "wall_steps_per_sec": (s_last - s_first) / (t_last - t_first),
      "cpu_us_per_step": 1e6 * (cpu_last - cpu_first) / (s_last - s_first),
      "total_s": total,
      "startup_s": t_first - t0,
      "teardown_s": t0 + total - t_last - (steps - s_last) / ((s_last - s_first) /
                                                               (t_last - t_first)),
      "compile_s": compile_s,
      "eval_accuracy": final["final"].get("eval/accuracy"),
      "train_step_compiles": final.get("train_step_compiles"),
  }


# --- Hand-written: the minimal loop. ---


class HandLoop:
  """Flax MLP + optax.adam in a Python loop over one jitted, donated step."""

  def __init__(self, config, total_steps: int, compiles: CompileTimes):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from jaxtrain import models  # pylint: disable=g-import-not-at-top
    from jaxtrain.data import pipeline  # pylint: disable=g-import-not-at-top
    self.jax = jax
    c = config
    batch_size = c.data.batch_size
    train_data, info = pipeline.create_train_data(c.data, c.seed)
    inputs, labels = train_data.arrays["inputs"], train_data.arrays["labels"]
    num_examples = int(labels.shape[0])
    per_epoch = num_examples // batch_size

    # The same batches as jaxtrain's device pipeline: epoch e is a permutation
    # seeded by fold_in(data_key, e), its last incomplete batch dropped.
    def epoch_indices(e):
      key = jax.random.fold_in(train_data.data_key, e)
      return jax.random.permutation(key, num_examples)[:per_epoch * batch_size]
    num_epochs = total_steps // per_epoch + 1
    stream = jnp.concatenate([epoch_indices(e) for e in range(num_epochs)]).astype(jnp.int32)

    model = models.build(c.model, info.num_classes, info.input_shape)
    # The same initial parameters as jaxtrain (state.create splits the seed this way).
    init_rng, _ = jax.random.split(jax.random.PRNGKey(c.seed))
    params = model.init(init_rng, train_data.sample_batch())["params"]
    tx = optax.adam(c.optim.learning_rate)
    unused_rng = jax.random.PRNGKey(0)  # No dropout: the model ignores it.

    def loss_fn(params, batch):
      logits, _ = model.apply({"params": params}, batch, unused_rng, True,
                              {"dropout_rate": 0.0})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    def hand_train_step(params, opt_state, step, inputs, labels, stream):
      indices = jax.lax.dynamic_slice_in_dim(stream, step * batch_size, batch_size)
      batch = {"inputs": jnp.take(inputs, indices, axis=0),
               "labels": jnp.take(labels, indices, axis=0)}
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, step + 1, loss

    # K steps per call (train.steps_per_call) as a user would write it: a lax.scan of the
    # step, so both sides pay the Python dispatch once per K steps.
    k = self.steps_per_call = int(c.train.steps_per_call)
    if k > 1:
      def hand_train_steps(params, opt_state, step, inputs, labels, stream):
        def body(carry, _):
          params, opt_state, step, _ = hand_train_step(*carry[:3], inputs, labels, stream)
          return (params, opt_state, step, carry[3]), None
        carry, _ = jax.lax.scan(body, (params, opt_state, step, jnp.zeros((), jnp.float32)),
                                None, length=k)
        return carry
      self.step_fn = jax.jit(hand_train_steps, donate_argnums=(0, 1, 2))
    else:
      self.step_fn = jax.jit(hand_train_step, donate_argnums=(0, 1, 2))
    self.data = (inputs, labels, jax.block_until_ready(stream))
    self.carry = (params, tx.init(params), jnp.zeros((), jnp.int32))
    self.loss = None
    self.model, self.unused_rng, self.data_config = model, unused_rng, c.data

    name = "hand_train_steps" if k > 1 else "hand_train_step"
    compiles.pop(name)
    t0 = time.perf_counter()
    self.run(k)
    self.first_call_s = time.perf_counter() - t0
    self.compile_s = compiles.pop(name)

  def run(self, steps: int) -> tuple[float, float]:
    """Runs `steps` steps; returns (wall seconds, CPU seconds of this process), blocked."""
    params, opt_state, step = self.carry
    inputs, labels, stream = self.data
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps // self.steps_per_call):
      params, opt_state, step, self.loss = self.step_fn(params, opt_state, step, inputs,
                                                        labels, stream)
    self.jax.block_until_ready((params, opt_state, step))
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    self.carry = (params, opt_state, step)
    return seconds, cpu_seconds

  def eval_accuracy(self) -> float:
    """Accuracy on the eval split (a sanity check that both sides train the same thing)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jaxtrain.data import pipeline  # pylint: disable=g-import-not-at-top
    inputs, labels = pipeline.load_eval_arrays(self.data_config)
    logits, _ = self.model.apply({"params": self.carry[0]}, {"inputs": inputs},
                                 self.unused_rng, False, {"dropout_rate": 0.0})
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


# --- Report. ---


def table(result: dict) -> str:
  j, h = result["jaxtrain"], result["hand_written"]
  lines = [
      "| loop | steps/s (median of rounds) | CPU µs/step | compile s | notes |",
      "|---|---:|---:|---:|---|",
      f"| jaxtrain train.run, wall | {j['wall_steps_per_sec']:.0f} | "
      f"{j['cpu_us_per_step']:.0f} | {j['compile_s']:.2f} | startup {j['startup_s']:.2f} s, "
      f"teardown {j['teardown_s']:.2f} s, total {j['total_s']:.2f} s per run |",
      f"| jaxtrain train.run, logged | {j['logged_steps_per_sec']:.0f} | | | "
      "metrics.jsonl steps_per_sec, first interval dropped |",
      f"| hand-written jax.jit loop | {h['steps_per_sec']:.0f} | {h['cpu_us_per_step']:.0f} | "
      f"{h['compile_s']:.2f} | first call {h['first_call_s']:.2f} s |",
      f"| **ratio jaxtrain / hand** | **{result['ratio_wall']:.3f}** (wall) | "
      f"{result['ratio_cpu']:.3f} | | goal >= 0.95; logged {result['ratio_logged']:.3f}; "
      f"median of per-round wall ratios {result['ratio_wall_paired']:.3f} |",
  ]
  return "\n".join(lines)


def main(argv=None) -> dict:
  args = parse_args(argv)
  root = Path(args.jaxtrain_root).resolve()
  sys.path.insert(0, str(root))
  if args.data_dir:
    os.environ["JAXTRAIN_DATA_DIR"] = args.data_dir
  import jax  # pylint: disable=g-import-not-at-top
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  import jaxtrain  # pylint: disable=g-import-not-at-top

  config = load_config(args.config, args.set)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  if config.optim.name != "adam" or config.model.name != "mlp":
    log(f"warning: the hand-written loop is an MLP with adam; the config has "
        f"model.name={config.model.name!r}, optim.name={config.optim.name!r}")
  compiles = CompileTimes(monitoring)

  log(f"jaxtrain from {Path(jaxtrain.__file__).parent}; {args.rounds} rounds of "
      f"{args.steps} steps each side")
  hand = HandLoop(config, args.warmup + args.rounds * args.steps + 1, compiles)
  hand.run(args.warmup)

  jax_runs, hand_rates, hand_cpu = [], [], []

  def time_hand():
    seconds, cpu_seconds = hand.run(args.steps)
    hand_rates.append(args.steps / seconds)
    hand_cpu.append(1e6 * cpu_seconds / args.steps)

  for r in range(args.rounds):
    # Alternate which side goes first, so a drift in the machine's load favours neither.
    if r % 2:
      time_hand()
    jax_runs.append(jaxtrain_run(config, args.steps, args.log_every, compiles))
    if not r % 2:
      time_hand()
    log(f"round {r + 1}/{args.rounds}: jaxtrain wall {jax_runs[-1]['wall_steps_per_sec']:.0f} "
        f"logged {jax_runs[-1]['logged_steps_per_sec']:.0f}, hand-written "
        f"{hand_rates[-1]:.0f} steps/s")

  def median_of(key):
    return statistics.median(run[key] for run in jax_runs)

  jaxtrain_summary = {k: median_of(k) for k in (
      "wall_steps_per_sec", "logged_steps_per_sec", "cpu_us_per_step", "total_s", "startup_s",
      "teardown_s", "compile_s")}
  jaxtrain_summary["eval_accuracy"] = jax_runs[-1]["eval_accuracy"]
  hand_summary = {"steps_per_sec": statistics.median(hand_rates),
                  "cpu_us_per_step": statistics.median(hand_cpu),
                  "compile_s": hand.compile_s, "first_call_s": hand.first_call_s,
                  "eval_accuracy": hand.eval_accuracy(), "rounds": hand_rates}
  result = {
      "jaxtrain": jaxtrain_summary,
      "hand_written": hand_summary,
      "ratio_wall": jaxtrain_summary["wall_steps_per_sec"] / hand_summary["steps_per_sec"],
      "ratio_logged": jaxtrain_summary["logged_steps_per_sec"] / hand_summary["steps_per_sec"],
      # Less sensitive to load drift than the ratio of medians: each round's two sides
      # ran back to back.
      "ratio_wall_paired": statistics.median(
          run["wall_steps_per_sec"] / rate for run, rate in zip(jax_runs, hand_rates)),
      # CPU time per step hardly depends on other processes' load: a steadier ratio
      # on a shared machine (it counts all threads, so it is not a speed).
      "ratio_cpu": hand_summary["cpu_us_per_step"] / jaxtrain_summary["cpu_us_per_step"],
      "jaxtrain_runs": jax_runs,
      "settings": {**vars(args), "config_file": args.config, "batch_size": config.data.batch_size,
                   "model": f"{config.model.name} {tuple(config.model.hidden_sizes)}"},
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "devices": [str(d) for d in jax.devices()], "jax": jax.__version__},
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  print(table(result))
  print(f"\n(eval accuracy after the runs: jaxtrain {jaxtrain_summary['eval_accuracy']:.3f} "
        f"after {args.steps} steps, hand-written {hand_summary['eval_accuracy']:.3f})")
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
