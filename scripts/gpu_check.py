"""Examples/s and MFU of a GPU-sized transformer on one accelerator (a short, prepared check).

  python scripts/gpu_check.py                  # ~100M-parameter char-level LM, bf16, 300 steps
  python scripts/gpu_check.py --width=512 --depth=4 --steps=100   # a smaller smoke run
  python scripts/gpu_check.py --population=1,4,16,64,256 --population_budget=300
      # the population curve: aggregate examples/s of N members in one vmapped step
      # against N solo runs, with the peak device memory of each N

Trains configs/charlm_transformer.py widened to --width x --depth (bf16 compute,
--steps_per_call steps per dispatch) with `jaxtrain.train.run`, then prints the
median `examples_per_sec`, `steps_per_sec` and `mfu` that the run logged to
metrics.jsonl (first interval dropped: it includes compilation), and the
`--mode=compile` memory/FLOPs report. MFU uses the peak table in
jaxtrain/io/throughput.py (H100/H200: 989 TFLOP/s dense bf16); pass
--peak_tflops on other devices.

With --population, it runs instead `scripts/bench_engine.py --parts engine` once
per N (a child process each, so each peak memory is its own), digits MLP, and
prints one row per N: members' examples/s, the speedup over N solo runs of the
same compiled single-model step, and the peak device memory; a child that passes
the --population_budget (seconds, all sizes together) is killed and the sizes
left are reported as not measured. Goals to compare with: >= 15x aggregate
throughput for 64 small models against solo runs on one GPU (HFTA reports
15.1x) and MFU >= 50% for the transformer. Unmeasured so far: no session that
wrote it had a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--width", type=int, default=1024)
  parser.add_argument("--depth", type=int, default=8)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--log_every", type=int, default=50)
  parser.add_argument("--steps_per_call", type=int, default=10)
  parser.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak TFLOP/s per device (0 = jaxtrain's table)")
  parser.add_argument("--out", default="", help="also write the results as JSON here")
  parser.add_argument("--population", default="",
                      help="comma-separated population sizes: run the population curve instead")
  parser.add_argument("--population_budget", type=float, default=300.0,
                      help="seconds for the whole population curve (children are killed after)")
  return parser.parse_args(argv)


def make_config(args):
  spec = importlib.util.spec_from_file_location("charlm", REPO / "configs" / "charlm_transformer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.width, c.model.depth, c.model.num_heads = args.width, args.depth, args.heads
  c.model.remat = args.remat
  c.precision = args.precision
  c.data.batch_size = args.batch_size
  c.train.num_steps = args.steps
  c.train.log_every_steps = args.log_every
  c.train.eval_every_steps = args.steps
  c.train.steps_per_call = args.steps_per_call
  c.checkpoint.every_steps = args.steps
  c.optim.schedule.warmup_steps = min(c.optim.schedule.warmup_steps, args.steps // 4)
  c.throughput.peak_tflops_per_device = args.peak_tflops
  return c


def population_curve(sizes: list[int], budget: float) -> list[dict]:
  """One bench_engine child per size; rows of N, examples/s, speedup, peak memory."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  rows, deadline = [], time.monotonic() + budget
  for n in sizes:
    left = deadline - time.monotonic()
    if left <= 0:
      rows.append({"members": n, "result": "not measured (budget spent)"})
      continue
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
      try:
        subprocess.run([sys.executable, str(REPO / "scripts" / "bench_engine.py"), "--parts",
                        "engine", f"--sizes={n}", f"--mnist1d_sizes={n}", "--seq_max=0",
                        f"--out={out.name}"], check=True, timeout=left,
                       stdout=subprocess.DEVNULL)
      except subprocess.TimeoutExpired:
        rows.append({"members": n, "result": "not measured (killed at the budget)"})
        continue
      result = json.loads(Path(out.name).read_text())
    peak = result["meta"]["peak_device_memory_bytes"]  # None on CPU.
    for row in result["engine"]:
      if row["members"] == n and row["execution"] == "vmap":
        rows.append({"model": row["model"], "members": n,
                     "member_examples_per_sec": row["member_examples_per_sec"],
                     "speedup_vs_solo": row["speedup_vs_sequential"],
                     "fraction_of_peak": row["fraction_of_peak"],
                     "peak_device_memory_gb": (peak / 1e9 if peak else None)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.population:
    rows = population_curve([int(n) for n in args.population.split(",")],
                            args.population_budget)
    print(json.dumps(rows, indent=2))
    if args.out:
      Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return {"population": rows}
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain.io import writers  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import compile as compile_lib, train
  config = make_config(args)
  print(f"devices: {jax.devices()}", file=sys.stderr)
  report = compile_lib.run(config, None)
  print(compile_lib.format_report(report), file=sys.stderr)
  with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
    final = train.run(config, workdir)
    records = [r for r in writers.read_metrics(workdir) if "steps_per_sec" in r][1:]
  def median(key):
    values = [r[key] for r in records if key in r]
    return statistics.median(values) if values else None
  result = {
      "device_kind": report["device_kind"], "width": args.width, "depth": args.depth,
      "batch_size": args.batch_size, "precision": args.precision,
      "steps_per_call": args.steps_per_call, "num_params": final["num_params"],
      "flops_per_step": report["flops_per_step"],
      "memory_per_device_gb": report["memory_per_device_bytes"] / 1e9,
      "steps_per_sec": median("steps_per_sec"), "examples_per_sec": median("examples_per_sec"),
      "mfu": median("mfu"), "final": final["final"],
  }
  print(json.dumps(result, indent=2))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
