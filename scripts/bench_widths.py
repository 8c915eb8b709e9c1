"""A search over 4 MLP widths: padded into one program (tune.pad_widths) vs one program per width.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/bench_widths.py --rounds=3 --out=widths.json
  python scripts/bench_widths.py --quick   # smoke run: 1 round, 100 steps, < 2 min

A grid search on digits (configs/digits_mlp.py's MLP, Adam) over
model.hidden_sizes = choice((128, 128), (256, 256), (32, 32), (64, 64)) x two learning
rates (8 members, --num_steps each), run by `tune.run` with tune.pad_widths=True (one
phase: members padded to (256, 256)) and with tune.pad_widths=False (today's execution:
one phase, so one set of compiled programs, per width), alternating in one process, the
compilation cache off. Reports per search: phases, train-step compiles (as tune/result.json
counts them), every XLA compile and the seconds spent compiling (jax.monitoring), the
training and wall seconds, and the best eval accuracy. The padded search computes every
member at the widest width: the table shows what its one compile buys and what that
costs per step.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import bench_common as common  # First: it puts the repository on sys.path.
from bench_common import log

import jax  # noqa: E402

# In the order today's phases sort them (by repr), so that each width gets the same member
# ids -- the same init and data keys -- in both searches: the same members, side by side.
WIDTHS = "choice((128, 128), (256, 256), (32, 32), (64, 64))"


class _Compiles:
  """XLA backend compiles and their seconds while it is entered (jax.monitoring)."""

  def __enter__(self):
    self.count, self.seconds = 0, 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def _listen(self, event, duration_secs, **kwargs):
    del kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1
      self.seconds += duration_secs

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listen)


def search_config(num_steps: int, pad: bool):
  c = common.load_config("digits_mlp")
  c.train.num_steps = num_steps
  c.train.eval_every_steps = num_steps // 4
  c.checkpoint.every_steps = num_steps
  c.compile.cache_dir = ""  # Every search compiles what it runs.
  c.tune.strategy = "grid"
  c.tune.space.model = dict(hidden_sizes=WIDTHS)
  c.tune.space.optim = dict(learning_rate="choice(1e-3, 3e-3)")
  c.tune.pad_widths = pad
  return c


def bench_widths(args, root: Path) -> list[dict]:
  rows = []
  for r in range(args.rounds):
    for pad in (True, False) if r % 2 == 0 else (False, True):  # Alternating order.
      label = "padded, one program" if pad else "one program per width"
      config = search_config(args.num_steps, pad)
      with _Compiles() as compiles:
        workdir = root / f"round{r}_{'pad' if pad else 'phases'}"
        row = common.tune_once(copy.deepcopy(config), workdir)
      row.update(search=label, round=r, phases=len(row["train_step_compiles"]),
                 train_compiles=sum(row["train_step_compiles"].values()),
                 xla_compiles=compiles.count, compile_sec=compiles.seconds)
      rows.append(row)
      log(f"  round {r} {label}: {row['phases']} phases, {row['train_compiles']} train "
          f"compiles, {row['xla_compiles']} XLA compiles ({row['compile_sec']:.1f} s), train "
          f"{row['train_time_sec']:.1f} s, wall {row['wall_time_sec']:.1f} s, best eval "
          f"{row['best_eval']:.4f}")
  return rows


def markdown(results: dict) -> list[str]:
  rows = results.get("widths")
  if not rows:
    return []
  out = []
  for label in ("padded, one program", "one program per width"):
    mine = [r for r in rows if r["search"] == label]
    med = lambda k: statistics.median(r[k] for r in mine)
    out.append([label, f"{mine[0]['phases']}", f"{mine[0]['train_compiles']}",
                f"{med('xla_compiles'):.0f}", f"{med('compile_sec'):.1f}",
                f"{med('train_time_sec'):.1f}", f"{med('wall_time_sec'):.1f}",
                f"{med('best_eval'):.4f}"])
  pad = [r for r in rows if r["search"].startswith("padded")]
  per = [r for r in rows if not r["search"].startswith("padded")]
  ratio = statistics.median(b["wall_time_sec"] / a["wall_time_sec"]
                            for a, b in zip(pad, per))
  return common.table(
      ["search (medians over rounds)", "phases", "train-step compiles", "XLA compiles",
       "compile s", "train s", "wall s", "best eval acc"], out) + [
      "", f"wall time, per-width phases / padded (median of per-round ratios): {ratio:.2f}"]


def parse_args(argv=None):
  p = common.arg_parser(__doc__, "smoke run: 1 round, 100 steps per member", tuning=True)
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
  p.add_argument("--num_steps", type=int, default=400, help="steps per member")
  args = p.parse_args(argv)
  if args.quick:
    args.rounds, args.num_steps = 1, 100
  return args


def measure(args, results: dict) -> None:
  common.tuning_part(args, results, "widths", bench_widths)


if __name__ == "__main__":
  common.main(parse_args, measure, markdown)
