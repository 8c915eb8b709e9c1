"""The transfer demo of docs/guide/finetune.md: pretrain on classes 0-4, then
fine-tune on 5-9 from 20 examples per class, beside training from scratch.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/finetune_demo.py --prefix=mnist1d_cnn
  python scripts/finetune_demo.py --prefix=digits_cnn --seeds=0,1,2
  python scripts/finetune_demo.py --prefix=mnist1d_cnn \
      --grid optim.learning_rate=1e-3,3e-3 --grid train.num_steps=150,300,600
  python scripts/finetune_demo.py --prefix=digits_cnn \
      --finetune_set "optim.freeze=('Conv_','BatchNorm_')" --no_scratch

Runs configs/PREFIX_pretrain_0to4.py once (WORKDIR/pretrain; reused when its
final.json exists, --fresh to retrain), then for every seed and every point of
the grid configs/PREFIX_finetune_5to9.py (with init_from = that pretraining run)
and configs/PREFIX_scratch_5to9.py, with the same seed, so the same 100
examples and the same fresh head. Every run goes through `jaxtrain.main` in this
process, exactly as on the command line. Prints a markdown table of
`final.eval/accuracy` per seed with the means and how many seeds fine-tuning
won, and writes all numbers to --out (JSON).

--set KEY=VALUE applies to fine-tuning and scratch runs, --finetune_set and
--scratch_set to one side only; --grid KEY=V1,V2,... runs every combination.
Setting train.num_steps also sets train.eval_every_steps and
checkpoint.every_steps to it and scales optim.schedule.warmup_steps with it
(the same fraction of the steps as in the config file), unless those are given
too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--prefix", default="mnist1d_cnn",
                      help="configs/PREFIX_{pretrain_0to4,finetune_5to9,scratch_5to9}.py")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--workdir", default="runs/finetune_demo")
  parser.add_argument("--out", default="", help="JSON with every run's numbers")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--finetune_set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--scratch_set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--pretrain_set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
  parser.add_argument("--no_scratch", action="store_true", help="fine-tuning runs only")
  parser.add_argument("--fresh", action="store_true", help="retrain the pretraining run")
  args = parser.parse_args(argv)
  for item in args.set + args.finetune_set + args.scratch_set + args.pretrain_set + args.grid:
    if "=" not in item:
      parser.error(f"{item!r} is not KEY=VALUE")
  for name in ("pretrain_0to4", "finetune_5to9", "scratch_5to9"):
    if not (REPO / "configs" / f"{args.prefix}_{name}.py").exists():
      parser.error(f"configs/{args.prefix}_{name}.py does not exist; --prefix names a config "
                   "family with pretrain_0to4, finetune_5to9 and scratch_5to9 files")
  return args


def with_step_keys(overrides: dict[str, str], config) -> dict[str, str]:
  """Derived keys for a changed train.num_steps (see the module docstring)."""
  out = dict(overrides)
  if "train.num_steps" in out:
    steps = int(out["train.num_steps"])
    out.setdefault("train.eval_every_steps", str(steps))
    out.setdefault("checkpoint.every_steps", str(steps))
    warmup = config.optim.schedule.warmup_steps * steps // config.train.num_steps
    out.setdefault("optim.schedule.warmup_steps", str(warmup))
  return out


def run(prefix: str, name: str, workdir: Path, overrides: dict[str, str]) -> dict:
  """One `python -m jaxtrain.main` run in this process; returns final.json's `final`."""
  from jaxtrain import main as jaxtrain_main  # pylint: disable=g-import-not-at-top
  if workdir.exists():
    shutil.rmtree(workdir)
  argv = ["jaxtrain.main", f"--config=configs/{prefix}_{name}.py", f"--workdir={workdir}"]
  argv += [f"--config.{k}={v}" for k, v in overrides.items()]
  output = io.StringIO()
  with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
    code = jaxtrain_main.main(argv)
  if code != 0:
    sys.exit(f"error: {' '.join(argv[1:])} exited with {code}:\n{output.getvalue()[-3000:]}")
  return json.loads((workdir / "final.json").read_text())["final"]


def table(rows: list[dict], seeds: list[int]) -> str:
  lines = ["| setting | run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | fine-tuning wins |",
           "|---|---|" + "---|" * len(seeds) + "---|---|"]
  for row in rows:
    for side in ("finetune", "scratch"):
      if side not in row:
        continue
      accs = row[side]
      wins = ""
      if side == "finetune" and "scratch" in row:
        wins = f"{sum(a > b for a, b in zip(row['finetune'], row['scratch']))} of {len(seeds)}"
      lines.append(f"| {row['setting'] or 'config as is'} | {side} | "
                   + " | ".join(f"{a:.3f}" for a in accs)
                   + f" | {statistics.mean(accs):.4f} | {wins} |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  args = parse_args(argv)
  os.chdir(REPO)  # --workdir and the config paths are repo-relative.
  sys.path.insert(0, str(REPO))  # jaxtrain from this clone, installed or not.
  seeds = [int(s) for s in args.seeds.split(",")]
  root = Path(args.workdir).absolute()
  pretrain_dir = root / "pretrain"
  pairs = lambda items: dict(item.split("=", 1) for item in items)
  if args.fresh or not (pretrain_dir / "final.json").exists():
    pretrained = run(args.prefix, "pretrain_0to4", pretrain_dir, pairs(args.pretrain_set))
  else:
    pretrained = json.loads((pretrain_dir / "final.json").read_text())["final"]
  print(f"pretrained on 0-4: eval/accuracy {pretrained['eval/accuracy']:.4f} ({pretrain_dir})",
        flush=True)

  import importlib  # pylint: disable=g-import-not-at-top
  configs = {name: importlib.import_module(f"jaxtrain.configs.{args.prefix}_{name}").get_config()
             for name in ("finetune_5to9", "scratch_5to9")}
  grid = [(key, values.split(",")) for key, values in (g.split("=", 1) for g in args.grid)]
  rows = []
  for point in itertools.product(*[values for _, values in grid]):
    setting = dict(zip([key for key, _ in grid], point))
    label = " ".join(f"{k}={v}" for k, v in setting.items())
    common = {**pairs(args.set), **setting}
    row = {"setting": label, "finetune": []}
    if not args.no_scratch:
      row["scratch"] = []
    for seed in seeds:
      tag = "_".join(f"{k.split('.')[-1]}{v}" for k, v in setting.items()) or "config"
      row["finetune"].append(run(
          args.prefix, "finetune_5to9", root / tag / f"finetune_{seed}",
          with_step_keys({**common, **pairs(args.finetune_set), "seed": str(seed),
                          "init_from.workdir": str(pretrain_dir)},
                         configs["finetune_5to9"]))["eval/accuracy"])
      if not args.no_scratch:
        row["scratch"].append(run(
            args.prefix, "scratch_5to9", root / tag / f"scratch_{seed}",
            with_step_keys({**common, **pairs(args.scratch_set), "seed": str(seed)},
                           configs["scratch_5to9"]))
            ["eval/accuracy"])
      print(f"{label or 'config as is'} seed {seed}: fine-tuned {row['finetune'][-1]:.4f}"
            + (f", scratch {row['scratch'][-1]:.4f}" if "scratch" in row else ""), flush=True)
    rows.append(row)
  print(table(rows, seeds))
  result = {"prefix": args.prefix, "seeds": seeds, "pretrain_accuracy": pretrained["eval/accuracy"],
            "settings": vars(args), "rows": rows}
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
