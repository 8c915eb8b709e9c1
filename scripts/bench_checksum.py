"""What the per-array checksums cost a checkpoint: save and restore, with and without.

  python scripts/bench_checksum.py --sizes_mb=4,64,256 --rounds=5

For each state size (float32 arrays of 1 M elements each), alternating rounds time
`Checkpoints.save` (the blocking part), save to commit (`wait`), and `restore`, once as
jaxtrain does it and once with the checksums switched off (`checksums` returning {} and
`verify` returning []), in fresh directories. Prints medians and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxtrain.io import checkpoint


def _state(size_mb: int):
  n = max(1, size_mb // 4)  # 4 MB per array
  keys = jax.random.split(jax.random.key(0), n)
  return {"params": {f"w{i}": jax.random.normal(k, (1024, 1024), jnp.float32)
                     for i, k in enumerate(keys)}}


def _one(directory: Path, state, checked: bool) -> tuple[float, float, float]:
  saved_checksums, saved_verify = checkpoint.checksums, checkpoint.verify
  if not checked:
    checkpoint.checksums = lambda tree: {}
    checkpoint.verify = lambda step_dir, restored, prefix="": []
  try:
    with checkpoint.Checkpoints(directory, keep=1) as ckpts:
      t0 = time.perf_counter()
      ckpts.save(1, state, {"step": 1})
      t1 = time.perf_counter()
      ckpts.wait()
      t2 = time.perf_counter()
      restored, _ = ckpts.restore(1, state)
      jax.block_until_ready(restored)
      t3 = time.perf_counter()
  finally:
    checkpoint.checksums, checkpoint.verify = saved_checksums, saved_verify
  return t1 - t0, t2 - t0, t3 - t2


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes_mb", default="4,64,256")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  print("| state MB | save blocks s (with / without) | save to commit s (with / without) | "
        "ratio | restore s (with / without) | ratio |")
  print("|---:|---:|---:|---:|---:|---:|")
  for size in [int(s) for s in args.sizes_mb.split(",")]:
    state = _state(size)
    times = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
      _one(Path(tmp) / "warmup", state, True)
      for r in range(args.rounds):
        for checked in ((True, False) if r % 2 == 0 else (False, True)):
          times[checked].append(_one(Path(tmp) / f"{r}-{checked}", state, checked))
    med = {c: [statistics.median(t[i] for t in times[c]) for i in range(3)] for c in times}
    w, wo = med[True], med[False]
    print(f"| {size} | {w[0]:.3f} / {wo[0]:.3f} | {w[1]:.3f} / {wo[1]:.3f} | {w[1] / wo[1]:.3f} | "
          f"{w[2]:.3f} / {wo[2]:.3f} | {w[2] / wo[2]:.3f} |")


if __name__ == "__main__":
  main()
