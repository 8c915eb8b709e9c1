"""How many queued executions of an SPMD program XLA's CPU client survives.

  python scripts/cpu_collectives_depth.py                 # depths 1 2 4 8 16 24 32, 2 fake devices
  NDEV=8 python scripts/cpu_collectives_depth.py 1 4 32   # chosen depths, 8 fake devices

Each depth runs in a child process (jax only, no jaxtrain): a tiny train step whose
gradient is all-reduced over a sharded batch axis, 20000 steps, waiting for an
execution only once `depth` newer ones are queued. A depth that deadlocks is killed
(SIGKILL: jax catches SIGTERM) after 60 s and reported as "hang". This is the
measurement behind `jaxtrain.parallel.sharding.bounded_dispatch`.
"""
import os
import subprocess
import sys
import time

CHILD = r'''
import os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + os.environ.get("NDEV", "2")
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
depth, steps = int(sys.argv[1]), int(sys.argv[2])
n = jax.device_count()
mesh = Mesh(jax.devices(), ("d",))
x = jax.device_put(jnp.ones((n, 64, 64)), NamedSharding(mesh, P("d")))
w = jax.device_put(jnp.ones((64, 64)) * 1e-3, NamedSharding(mesh, P()))
f = jax.jit(lambda w, x: w - 1e-3 * jnp.mean(jnp.tanh(x @ w), axis=0).sum(0)[None, :])
queued, t = [], time.perf_counter()
for _ in range(steps):
  w = f(w, x)
  queued.append(w)
  if len(queued) > depth:
    jax.block_until_ready(queued.pop(0))
jax.block_until_ready(w)
print(f"{steps / (time.perf_counter() - t):.0f}")
'''


def main() -> None:
  depths = [int(a) for a in sys.argv[1:]] or [1, 2, 4, 8, 16, 24, 32]
  steps = 20000
  print(f"{os.environ.get('NDEV', '2')} fake CPU devices, {steps} steps, jax-only SPMD all-reduce")
  print("depth  result")
  for depth in depths:
    t = time.perf_counter()
    try:
      out = subprocess.run([sys.executable, "-c", CHILD, str(depth), str(steps)],
                           capture_output=True, text=True, timeout=60)
      result = (f"completed, {out.stdout.strip()} steps/s" if out.returncode == 0
                else f"exit {out.returncode}")
    except subprocess.TimeoutExpired:  # subprocess.run kills the child (SIGKILL).
      result = f"hang (killed after {time.perf_counter() - t:.0f} s)"
    print(f"{depth:5d}  {result}", flush=True)


if __name__ == "__main__":
  main()
