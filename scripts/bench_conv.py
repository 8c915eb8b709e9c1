"""A CNN population: execution 'vmap' vs 'map' (host loop) vs N single models.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_conv.py --out=bench_conv.json
  python scripts/bench_conv.py --quick               # smoke run: N=2, one round, under a minute

The digits CNN of `base_config` (conv blocks of 32 and 64 channels, dense 128),
batch 128, Adam, device-resident data, N=8 members (--conv_members): the vmapped
engine step (grouped convolutions), the engine's `map` (the host loop over one
jitted member step, what `execution='auto'` picks for CNNs on CPU) and one
single-model step loop. The f32 matmul peak is measured before and after, as
scripts/bench_engine.py does, to show how loaded the machine was.

Timings on a shared CPU are noisy: every comparison is measured side by side in
this process, in interleaved rounds, and reported as the median of the rounds.
"""

from __future__ import annotations

import bench_common as common  # First: it puts the repository on sys.path.
from bench_common import log, median

from jaxtrain.tune import execution as execution_lib


def bench_conv(args) -> list[dict]:
  """CNN population: vmap (grouped convolutions) vs map (host loop) vs N singles."""
  t = common.task("digits", model_name="cnn")
  c = t["config"]
  size = args.conv_members
  single, _ = common.single_runner(t)
  auto = execution_lib.choose("auto", "cnn")
  runners = {e: common.population_runner(t, size, e) for e in ("vmap", "map")}
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


def markdown(results: dict) -> list[str]:
  lines = common.peak_lines(results)
  if results.get("conv"):
    lines += common.table(
        ["model", "N", "execution", "population step ms", "per-member ms", "single ms",
         "vs N x single", "compile s"],
        [[r["model"], f"{r['members']}", r["execution"], f"{r['population_step_ms']:.2f}",
          f"{r['per_member_step_ms']:.3f}", f"{r['single_step_ms']:.3f}",
          f"{r['speedup_vs_sequential']:.2f}x", f"{r['compile_sec']:.1f}"]
         for r in results["conv"]])
  return lines


def parse_args(argv=None):
  p = common.arg_parser(__doc__, "smoke run: 2 members, one short round", timing=True)
  p.add_argument("--conv_members", type=int, default=8, help="population size")
  args = p.parse_args(argv)
  if args.quick:
    args.conv_members = 2
  common.quick_timing(args)
  return args


def measure(args, results: dict) -> None:
  common.peak_start(results, args.quick)
  with common.part(results, "conv"):
    results["conv"] = bench_conv(args)
  common.peak_end(results, args.quick)


if __name__ == "__main__":
  common.main(parse_args, measure, markdown)
