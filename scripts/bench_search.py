"""Search efficiency: PBT with 16 members vs the best point of a 64-point grid.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_search.py --out=bench_search.json
  python scripts/bench_search.py --quick   # smoke run: digits, 4 members x 100 steps, < 1 min

`tune.run` with configs/digits_pbt.py and configs/mnist1d_pbt.py as shipped,
against the same config with tune.strategy='grid' and --grid_points per
dimension over learning rate x weight decay (8 x 8 = 64 points by default;
dropout stays at 0), same model and steps per member. Reports members,
member-steps, the best selection score, the winner's test accuracy, and the
wall and CPU seconds of each search.
"""

from __future__ import annotations

import copy
from pathlib import Path

import bench_common as common  # First: it puts the repository on sys.path.
from bench_common import log


def bench_search(args, root: Path) -> list[dict]:
  rows = []
  for name in ("digits_pbt",) if args.quick else ("digits_pbt", "mnist1d_pbt"):
    base = common.load_config(name)
    if args.quick:
      base.tune.population_size = 4
      base.train.eval_every_steps, base.train.num_steps, base.checkpoint.every_steps = 50, 100, 100
    grid = copy.deepcopy(base)
    grid.tune.strategy = "grid"
    grid.tune.grid_points = args.grid_points
    # The grid searches learning rate x weight decay only (dropout stays at 0).
    grid.tune.space = type(grid.tune.space)({"optim": dict(base.tune.space.optim)})
    for label, config in (("pbt", base), ("grid", grid)):
      log(f"  {name} {label} ...")
      row = {"config": name, "search": label, **common.tune_once(config, root / f"{name}_{label}")}
      rows.append(row)
      log(f"  {name} {label}: {row['members']} members, {row['member_steps']} member-steps, "
          f"test {row['best_test']:.4f}, eval {row['best_eval']:.4f}, "
          f"wall {row['wall_time_sec']:.1f} s")
  return rows


def markdown(results: dict) -> list[str]:
  if not results.get("search"):
    return []
  return common.table(
      ["config", "search", "members", "member-steps", "best eval", "best test", "wall s",
       "CPU s"],
      [[r["config"], r["search"], f"{r['members']}", f"{r['member_steps']:,}",
        f"{r['best_eval']:.4f}", f"{r['best_test']:.4f}", f"{r['wall_time_sec']:.1f}",
        f"{r['cpu_sec']:.1f}"] for r in results["search"]])


def parse_args(argv=None):
  p = common.arg_parser(__doc__, "smoke run: digits only, 4 members x 100 steps, 2 x 2 grid",
                        tuning=True)
  p.add_argument("--grid_points", type=int, default=8, help="grid points per dimension")
  args = p.parse_args(argv)
  if args.quick:
    args.grid_points = 2
  return args


def measure(args, results: dict) -> None:
  common.tuning_part(args, results, "search", bench_search)


if __name__ == "__main__":
  common.main(parse_args, measure, markdown)
