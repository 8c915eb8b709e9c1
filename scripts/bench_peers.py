"""Time to result: jaxtrain's tuner against the alternatives a user would write instead.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_peers.py --seeds=0,1,2 --out=peers.json
  python scripts/bench_peers.py --seeds=0,1,2 --ray    # with Ray Tune PBT (pip install 'ray[tune]')
  python scripts/bench_peers.py --quick                # smoke run, about a minute

Every arm is its own process, timed from its launch (imports, data, compiles included),
one after another (never two at once), interleaved seed by seed:

  lean Optuna  scripts/peer_optuna_lean.py: TPE over one jitted step with the learning
               rate and weight decay as traced arrays (one compile for all trials), 48
               trials x 3000 steps, test accuracy every 500 steps, MedianPruner; once
               one trial at a time, once two at a time (`--n_jobs=2`, Optuna's threads:
               JAX releases the GIL while a step runs, so two trials use two cores, as
               jaxtrain's members split over the cores do).
  jaxtrain     python -m jaxtrain.main --config=configs/mnist1d_pbt.py, as shipped, with
               the protocol's splits (train on all 4,000 signals, evaluate on the 1,000
               test signals, as the other arms do) and an empty compilation cache
               (cold: --config.compile.cache_dir=<new empty dir>). Its seconds come from
               the `wall_time` of each metrics.jsonl record. Run again with a warm
               compilation cache (the default cache, filled by an earlier run).
  Ray Tune     scripts/peer_ray_pbt.py (--ray): PopulationBasedTraining, reuse_actors,
               the same lean step in each trial.

The task (MNIST-1D, MLP 40-100-100-10, AdamW, batch 100, learning rate log-uniform
[1e-4, 1e-1], weight decay log-uniform [1e-6, 1e-1], 3000 steps per trial or member) is
that of the lean loop; jaxtrain's search space and population are its config's own.
Reported per arm: seconds from launch to each --targets test accuracy (the first
evaluation at which any trial or member reaches it), the best accuracy within 10 s and
30 s, and the whole search's seconds; medians over --seeds; and jaxtrain's speed-up
(the peer's seconds / jaxtrain's) per target. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGETS = (10.0, 30.0)


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def _run(cmd: list[str], env: dict, timeout: float) -> tuple[float, float, str]:
  """(launch time, seconds to exit, stdout) of a process."""
  launch = time.time()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                        cwd=REPO)
  seconds = time.time() - launch
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
  return launch, seconds, proc.stdout


def lean_optuna(seed: int, args, env, n_jobs: int = 1) -> dict:
  cmd = [sys.executable, "scripts/peer_optuna_lean.py", f"--seed={seed}",
         f"--trials={args.trials}", f"--steps={args.steps}", f"--n_jobs={n_jobs}"]
  _, seconds, out = _run(cmd, env, args.timeout)
  return {"curve": _curve(out), "total_sec": seconds}


def _curve(stdout: str) -> list[tuple[float, float]]:
  """(seconds, accuracy) of the JSON lines a peer prints (other lines are its logs)."""
  records = [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]
  return [(r["t"], r["accuracy"]) for r in records if "accuracy" in r]


def jaxtrain_pbt(seed: int, args, env, root: Path, cache: Path | None = None) -> dict:
  """The CLI run; `cache` None: a new empty compilation cache (cold), else that one."""
  workdir = Path(tempfile.mkdtemp(prefix=f"jaxtrain_{seed}_", dir=root)) / "run"
  if cache is None:
    cache = Path(tempfile.mkdtemp(prefix="empty_cache_", dir=root))  # Cold: nothing cached.
  cmd = [sys.executable, "-m", "jaxtrain.main", f"--config={args.config}",
         f"--workdir={workdir}", f"--config.seed={seed}",
         "--config.data.train_split=train", "--config.data.eval_split=test",
         "--config.data.test_split=", f"--config.compile.cache_dir={cache}", *args.set]
  launch, seconds, _ = _run(cmd, env, args.timeout)
  curve = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    accs = [a for a in r.get("eval/accuracy", []) if isinstance(a, float)]
    if accs:
      curve.append((r["wall_time"] - launch, max(accs)))
  return {"curve": curve, "total_sec": seconds}


def ray_pbt(seed: int, args, env) -> dict:
  cmd = [sys.executable, "scripts/peer_ray_pbt.py", f"--seed={seed}",
         f"--steps={args.steps}"]
  _, seconds, out = _run(cmd, env, args.timeout)
  return {"curve": _curve(out), "total_sec": seconds}


def summarize(run: dict, targets) -> dict:
  curve = sorted(run["curve"])
  out = {"seconds_to": {}, "best_within": {}, "total_sec": run["total_sec"],
         "best": max((a for _, a in curve), default=None),
         "first_eval_sec": curve[0][0] if curve else None}
  for target in targets:
    hit = [t for t, a in curve if a >= target]
    out["seconds_to"][f"{target:.2f}"] = hit[0] if hit else None
  for budget in BUDGETS:
    within = [a for t, a in curve if t <= budget]
    out["best_within"][f"{budget:.0f}"] = max(within) if within else None
  return out


def median_or_none(values):
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--trials", type=int, default=48, help="lean Optuna trials")
  p.add_argument("--steps", type=int, default=3000, help="steps per trial (peers)")
  p.add_argument("--config", default="configs/mnist1d_pbt.py")
  p.add_argument("--set", action="append", default=[],
                 help="extra --config.KEY=VALUE for the jaxtrain arm (e.g. for a what-if)")
  p.add_argument("--targets", default="0.60,0.65,0.68")
  p.add_argument("--ray", action="store_true", help="add Ray Tune PBT (needs ray[tune])")
  p.add_argument("--quick", action="store_true", help="4 trials, 1000 steps, 4 members")
  p.add_argument("--timeout", type=float, default=1800.0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  if args.quick:
    args.trials, args.steps = 4, 1000
    args.set += ["--config.train.num_steps=1000", "--config.tune.population_size=4"]
  targets = [float(t) for t in args.targets.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  env.pop("XLA_FLAGS", None)  # One CPU device, as a user's machine.
  root = Path(tempfile.mkdtemp(prefix="bench_peers_"))
  warm_cache = root / "warm_cache"  # Filled by the first jaxtrain run, reused after.
  arms = {"lean_optuna": lambda s: lean_optuna(s, args, env),
          "lean_optuna_2jobs": lambda s: lean_optuna(s, args, env, n_jobs=2),
          "jaxtrain_pbt": lambda s: jaxtrain_pbt(s, args, env, root),
          "jaxtrain_pbt_warm": lambda s: jaxtrain_pbt(s, args, env, root, warm_cache)}
  if args.ray:
    arms["ray_pbt"] = lambda s: ray_pbt(s, args, env)
  runs = {name: [] for name in arms}
  jaxtrain_pbt(seeds[0], args, env, root, warm_cache)  # Fills the warm cache (not timed).
  for i, seed in enumerate(seeds):
    order = list(arms) if i % 2 == 0 else list(arms)[::-1]  # Alternate who goes first.
    for name in order:
      log(f"seed {seed}: {name} ...")
      runs[name].append({"seed": seed, **summarize(arms[name](seed), targets)})
      log(f"  {json.dumps(runs[name][-1])}")

  medians = {}
  for name, rs in runs.items():
    medians[name] = {
        "seconds_to": {k: median_or_none([r["seconds_to"][k] for r in rs])
                       for k in rs[0]["seconds_to"]},
        "best_within": {k: median_or_none([r["best_within"][k] for r in rs])
                        for k in rs[0]["best_within"]},
        "total_sec": median_or_none([r["total_sec"] for r in rs]),
        "first_eval_sec": median_or_none([r["first_eval_sec"] for r in rs]),
        "best": median_or_none([r["best"] for r in rs])}
  ours = medians["jaxtrain_pbt"]["seconds_to"]
  speedup = {peer: {t: (m["seconds_to"][t] / ours[t] if m["seconds_to"][t] and ours[t] else None)
                    for t in ours}
             for peer, m in medians.items() if not peer.startswith("jaxtrain_pbt")}
  result = {"command": " ".join([sys.executable, *sys.argv]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                     capture_output=True, text=True).stdout.strip(),
            "runs": runs, "medians": medians, "jaxtrain_speedup": speedup}
  print(markdown(result, targets))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return 0


def markdown(result: dict, targets) -> str:
  def cell(v, fmt="{:.1f}"):
    return "not reached" if v is None else fmt.format(v)
  keys = [f"{t:.2f}" for t in targets]
  lines = ["| arm (median over seeds, s from launch) | " + " | ".join(f"s to {k}" for k in keys)
           + " | best in 10 s | best in 30 s | whole search s | first eval s |",
           "|---|" + "---:|" * (len(keys) + 4)]
  names = {"lean_optuna": "lean Optuna TPE loop",
           "lean_optuna_2jobs": "lean Optuna TPE loop, 2 trials at once (n_jobs=2)",
           "jaxtrain_pbt": "jaxtrain mnist1d_pbt.py (cold: empty compile cache)",
           "jaxtrain_pbt_warm": "jaxtrain mnist1d_pbt.py (warm compile cache)",
           "ray_pbt": "Ray Tune PBT"}
  for name, m in result["medians"].items():
    lines.append(f"| {names[name]} | " + " | ".join(cell(m["seconds_to"][k]) for k in keys)
                 + f" | {cell(m['best_within']['10'], '{:.3f}')} | "
                 f"{cell(m['best_within']['30'], '{:.3f}')} | {cell(m['total_sec'])} | "
                 f"{cell(m['first_eval_sec'])} |")
  for peer, row in result["jaxtrain_speedup"].items():
    lines.append(f"| jaxtrain (cold) sooner than {names[peer]} | "
                 + " | ".join(cell(row[k], "{:.2f}x") for k in keys) + " | | | | |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
