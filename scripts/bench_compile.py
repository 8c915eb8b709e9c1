"""What a cold tuning run spends on XLA compiles: per program, and the dropout draws' share.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_compile.py --rounds=3
  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_compile.py --cli --rounds=2 \
      --roots=/tmp/checkout_before,.     # the CLI on two checkouts, side by side

Default: in this process, with no compilation cache, the tuner's train program for
`configs/mnist1d_pbt.py` (8 members vmapped, 100 steps per dispatch, two dropout layers) is
lowered and compiled `--rounds` times with jaxtrain's dropout draws
(`models/layers.bernoulli`: one flat draw, reshaped) and with JAX's own
`jax.random.bernoulli` over the layer's ranked shape (the same bits; the draw before
the change), alternating; then one [8, 100, 100] draw alone, both ways. Medians.

`--cli`: each root's `python -m jaxtrain.main --config=configs/mnist1d_pbt.py` from a cold
process with an empty compilation cache and `JAX_LOG_COMPILES=1`; prints the seconds XLA
reported for each program ("Finished XLA compilation") and the time from launch to the
first evaluation record. Programs compiled at once (Phase.precompile) share the cores,
so each one's seconds grow while the total wall time shrinks: read the first-evaluation
time, not the sum.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cli(root: str) -> dict:
  d = tempfile.mkdtemp(prefix="bench_compile_")
  env = {**os.environ, "JAX_LOG_COMPILES": "1", "PYTHONPATH": str(Path(root).resolve())}
  t0 = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "jaxtrain.main", "--config=configs/mnist1d_pbt.py",
       f"--workdir={d}/run", "--config.data.train_split=train",
       "--config.data.eval_split=test", "--config.data.test_split=",
       f"--config.compile.cache_dir={d}/cache"], cwd=root, env=env, capture_output=True,
      text=True, check=True)
  programs = [(m.group(1), float(m.group(2))) for m in re.finditer(
      r"Finished XLA compilation of jit\((\S+)\) in ([0-9.]+) sec", proc.stderr)]
  records = [json.loads(line) for line in Path(d, "run", "metrics.jsonl").read_text().splitlines()]
  first = min(r["wall_time"] for r in records if "eval/accuracy" in r) - t0
  return {"first_eval_sec": first, "programs": programs}


def _in_process(rounds: int) -> dict:
  import importlib.util  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", 2)  # As the CLI splits a population on 2 cores.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import setup  # pylint: disable=g-import-not-at-top
  from jaxtrain.models import layers  # pylint: disable=g-import-not-at-top
  from jaxtrain.tune import loop as loop_lib, phase as phase_lib, strategies  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("cfg", REPO / "configs" / "mnist1d_pbt.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.mesh.cpu_devices = 2
  dims = loop_lib.validate(c)
  s = setup.build(c, data_pipeline="device", placement=False)
  settings = max(loop_lib._plan_initial(c, dims, strategies.rng_for(c.seed, 0)), key=len)  # pylint: disable=protected-access
  members = [{"id": i, "settings": st} for i, st in enumerate(settings)]
  ours = layers.bernoulli

  def train_compile(draw) -> float:
    layers.bernoulli = draw
    try:
      phase = phase_lib.Phase(c, settings[0], s.info, s.train_data, [],
                              [d for d in dims if d.dynamic], len(settings),
                              width_choices=phase_lib.width_choices(c, dims, settings[0]))
      fn, args = phase.train_program(members)
      lowered = fn.lower(*args)
      t = time.perf_counter()
      lowered.compile()
      return time.perf_counter() - t
    finally:
      layers.bernoulli = ours

  def draw_compile(draw) -> float:
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    x = jnp.ones((8, 100, 100))
    fn = jax.jit(jax.vmap(lambda k, x: jnp.where(draw(k, jnp.float32(0.7), x.shape), x, 0.0)))
    lowered = fn.lower(keys, x)
    t = time.perf_counter()
    lowered.compile()
    return time.perf_counter() - t

  out = {"train_flat": [], "train_jax": [], "draw_flat": [], "draw_jax": []}
  for i in range(rounds):
    for name, draw in ((("flat", ours), ("jax", jax.random.bernoulli)) if i % 2 == 0 else
                       (("jax", jax.random.bernoulli), ("flat", ours))):
      out[f"train_{name}"].append(train_compile(draw))
      out[f"draw_{name}"].append(draw_compile(draw))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--cli", action="store_true", help="cold CLI runs (see the docstring)")
  p.add_argument("--roots", default=".", help="checkouts for --cli, comma-separated")
  args = p.parse_args(argv)
  if args.cli:
    roots = args.roots.split(",")
    for i in range(args.rounds):
      for root in (roots if i % 2 == 0 else roots[::-1]):
        r = _cli(root)
        print(f"{root}: first evaluation {r['first_eval_sec']:.1f} s from launch; compiles: "
              + ", ".join(f"{n} {s:.2f} s" for n, s in r["programs"] if s >= 0.05), flush=True)
    return 0
  out = _in_process(args.rounds)
  med = {k: statistics.median(v) for k, v in out.items()}
  print(json.dumps({k: [round(x, 2) for x in v] for k, v in out.items()}))
  print(f"train program compile: flat draws {med['train_flat']:.2f} s, JAX's ranked draws "
        f"{med['train_jax']:.2f} s; one [8,100,100] draw: {med['draw_flat']:.2f} s vs "
        f"{med['draw_jax']:.2f} s (medians of {args.rounds})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
