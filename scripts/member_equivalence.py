"""How far member i of a population is from a solo run started as member i (tune.member).

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python scripts/member_equivalence.py

Trains a random search of 4 digits-MLP members (learning rates sampled, 40 steps of
batch 32) under tune.execution = map, vmap, and vmap sharded over 2 devices, then each
member alone as a single run (`jaxtrain.train.run` of its exported-style config with
tune.member=i), and prints the largest absolute and relative parameter difference
over the members: the numbers behind the tolerance docs/guide/tuning.md states.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np

import jaxtrain
from jaxtrain import config as config_lib
from jaxtrain.jobs import train
from jaxtrain.tune import loop as tune_loop
from jaxtrain.tune import phase as phase_lib


def _config(execution: str, shard: bool, steps: int):
  c = config_lib.base_config()
  c.data.batch_size, c.model.hidden_sizes = 32, (64,)
  c.train.num_steps, c.train.eval_every_steps = steps, steps // 2
  c.checkpoint.every_steps = steps // 2
  c.mesh.num_devices = 2 if shard else 1
  c.mesh.pop = 2 if shard else 1
  c.tune.strategy, c.tune.population_size, c.tune.execution = "random", 4, execution
  c.tune.space.optim = dict(learning_rate="loguniform(1e-3, 3e-2)")
  return c


def _leaves(run):
  return [np.asarray(x) for x in jax.tree.leaves(run.variables["params"])]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=40)
  args = parser.parse_args()
  root = Path(tempfile.mkdtemp(prefix="member_equivalence_"))
  modes = [("map", False), ("vmap", False)]
  if jax.device_count() >= 2:
    modes.append(("vmap", True))
  print(f"{'execution':<14} {'max |diff|':>12} {'max rel diff':>13}")
  for execution, shard in modes:
    c = _config(execution, shard, args.steps)
    name = f"{execution}{'_sharded' if shard else ''}"
    result = tune_loop.run(c, root / name)
    worst_abs = worst_rel = 0.0
    for row in result["members"]:
      single = phase_lib.member_config(c, row["settings"])
      single.tune.member = row["id"]
      single.mesh.num_devices, single.mesh.pop = 1, 1
      train.run(single, root / name / f"solo{row['id']}")
      member = _leaves(jaxtrain.load(root / name, member=row["id"]))
      solo = _leaves(jaxtrain.load(root / name / f"solo{row['id']}"))
      for a, b in zip(member, solo):
        diff = np.abs(a - b)
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(b), 1e-3)).max()))
    print(f"{name:<14} {worst_abs:>12.3g} {worst_rel:>13.3g}", flush=True)


if __name__ == "__main__":
  main()
