"""Population throughput with the members split over the CPU cores (`mesh.cpu_devices`).

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_cores.py --rounds=3 --out=cores.json
  python scripts/bench_cores.py --quick        # smoke run, about a minute

On the CPU backend one small model's step keeps about one core busy, vmapped members
included. A tuning run from the command line therefore splits the host's CPU into one
JAX device per core and shards the members over them (`tune/execution.py`,
`cpu_devices_for`). This script measures what that buys, each arm in its own process
(the device count is fixed when JAX starts), arms interleaved round by round, medians:

  single    ONE member of the same engine on one device, 100 steps per dispatch in a
            `lax.scan` (the fastest way jaxtrain trains one model; x N = N sequential
            runs without their start-up)
  pop 1     N members vmapped on one device (the engine before the split)
  pop split N members vmapped, sharded over one CPU device per core (the default now)

Each arm times the tuner's own compiled train program (`tune.phase.Phase.train`, the
interval as one dispatch) on warm calls. Reported: member-steps/s, the ratios to N x
single and to pop 1, and the fraction of the measured f32 matmul peak (2048^3 `jnp.dot`
on one device using every core) the split population reaches.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TASKS = {  # name: (dataset, hidden sizes, batch size, optimizer)
    "mnist1d_mlp": ("mnist1d", (100, 100), 100, "adamw"),  # The task (40-100-100-10).
    "digits_mlp": ("digits", (256, 256), 128, "adam"),  # configs/digits_mlp.py's MLP.
}


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def worker(args) -> dict:
  """One arm in this process: times the engine's train program; prints one JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if args.devices > 1:
    jax.config.update("jax_num_cpu_devices", args.devices)
  sys.path.insert(0, str(REPO))
  from jaxtrain.config import base_config  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import setup  # pylint: disable=g-import-not-at-top
  from jaxtrain.tune import loop as loop_lib, phase as phase_lib  # pylint: disable=g-import-not-at-top

  dataset, hidden, batch, optimizer = TASKS[args.task]
  c = base_config()
  c.data.name, c.data.train_split, c.data.eval_split = dataset, "train", "test"
  c.data.batch_size = batch
  c.model.name, c.model.hidden_sizes = "mlp", hidden
  c.optim.name = optimizer
  c.train.num_steps = 100_000
  c.train.eval_every_steps = args.chunk  # One dispatch per interval, as the tuner does.
  c.checkpoint.every_steps = args.chunk * 10
  c.tune.strategy, c.tune.population_size = "random", args.members
  c.tune.space.optim = dict(learning_rate="loguniform(1e-4, 1e-2)",
                            weight_decay="loguniform(1e-6, 1e-2)")
  dims = loop_lib.validate(c)
  s = setup.build(c, data_pipeline="device", placement=False)
  rng = np.random.default_rng(0)
  members = [{"id": i, "active": True, "settings": {
      "optim.learning_rate": float(10 ** rng.uniform(-4, -2)),
      "optim.weight_decay": float(10 ** rng.uniform(-6, -2))}} for i in range(args.members)]
  phase = phase_lib.Phase(c, members[0]["settings"], s.info, s.train_data,
                          [jax.device_put(b) for b in s.eval_batches()],
                          [d for d in dims if d.dynamic], args.members)
  pop, acc = phase.initial_state(members)
  active = phase.active(members)
  pop, acc = phase.train(pop, acc, active)  # Compile and warm up.
  jax.block_until_ready(pop)
  import resource  # pylint: disable=g-import-not-at-top
  usage = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system
  calls, seconds, cpu0 = 0, 0.0, usage()
  while seconds < args.seconds:
    t0 = time.perf_counter()
    pop, acc = phase.train(pop, acc, active)
    jax.block_until_ready(pop)
    seconds += time.perf_counter() - t0
    calls += 1
  cpu_per_wall = (usage() - cpu0) / seconds  # Cores kept busy (about; the loop waits too).
  per_step = seconds / (calls * phase.steps_per_call)
  # 6 x parameters x batch per member step (fwd 2 + bwd 4), as scripts/bench_engine.py counts.
  # (The weights' count, from the flattened input: digits' [8, 8, 1] images are 64 inputs;
  # counting input_shape[-1] = 1 of them undercounted the digits MLP's FLOPs by a fifth.)
  sizes = (int(np.prod(s.info.input_shape)), *hidden, s.info.num_classes)
  num_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
  flops = 6 * batch * num_params
  out = {"devices": len(jax.devices()), "members": args.members,
         "sharded": phase.member_sharding is not None, "step_ms": per_step * 1e3,
         "member_steps_per_sec": args.members / per_step,
         "gflops": flops * args.members / per_step / 1e9, "flops_per_member_step": flops,
         "compiles": phase.compiles,
         "cpu_per_wall": cpu_per_wall}
  if args.peak:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(10):
      t0 = time.perf_counter()
      dot(a, a).block_until_ready()
      times.append(time.perf_counter() - t0)
    out["peak_gflops"] = 2 * 2048**3 / min(times) / 1e9
  print(json.dumps(out), flush=True)
  return out


def run_arm(task: str, members: int, devices: int, args, peak: bool = False) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  cmd = [sys.executable, __file__, "--worker", f"--task={task}", f"--members={members}",
         f"--devices={devices}", f"--chunk={args.chunk}", f"--seconds={args.seconds}"]
  out = subprocess.run(cmd + (["--peak"] if peak else []), env=env, capture_output=True,
                       text=True, timeout=900, cwd=REPO)
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--task", default="mnist1d_mlp", choices=sorted(TASKS))
  p.add_argument("--members", type=int, default=16)
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--tasks", default="mnist1d_mlp,digits_mlp")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--chunk", type=int, default=100, help="steps per dispatch")
  p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per arm")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  if args.quick:
    args.rounds, args.seconds = 1, 0.5
  cores = len(os.sched_getaffinity(0))
  result = {"command": " ".join([sys.executable, *sys.argv]), "cores": cores,
            "members": args.members, "chunk": args.chunk, "rounds": args.rounds,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.platform(), "load_before": os.getloadavg(), "tasks": {}}
  for task in args.tasks.split(","):
    arms = {"single": [], "pop 1": [], "pop split": []}
    for r in range(args.rounds):
      arms["single"].append(run_arm(task, 1, 1, args, peak=True))
      arms["pop 1"].append(run_arm(task, args.members, 1, args))
      arms["pop split"].append(run_arm(task, args.members, cores, args))
      log(task, f"round {r}:", {k: round(v[-1]["member_steps_per_sec"]) for k, v in arms.items()})
    med = {k: statistics.median(a["member_steps_per_sec"] for a in v) for k, v in arms.items()}
    peak = max(a["peak_gflops"] for a in arms["single"])
    split_gflops = statistics.median(a["gflops"] for a in arms["pop split"])
    result["tasks"][task] = {
        "arms": arms, "median_member_steps_per_sec": med, "peak_gflops": peak,
        "split_vs_n_single": med["pop split"] / med["single"],
        "pop1_vs_n_single": med["pop 1"] / med["single"],
        "split_vs_pop1": med["pop split"] / med["pop 1"],
        "split_fraction_of_peak": split_gflops / peak,
        "split_sharded": all(a["sharded"] for a in arms["pop split"]),
        "median_cpu_per_wall": {k: statistics.median(a["cpu_per_wall"] for a in v)
                                for k, v in arms.items()},
    }
    log(task, json.dumps({k: v for k, v in result["tasks"][task].items() if k != "arms"}))
  result["load_after"] = os.getloadavg()
  text = json.dumps(result, indent=1)
  if args.out:
    Path(args.out).write_text(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
