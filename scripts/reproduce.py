"""The numbers the docs quote, measured and written to docs/results.json.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/reproduce.py            # every run
  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/reproduce.py --only=digits_mlp,mnist1d_mlp
  python scripts/reproduce.py --list                                      # runs and ids

Each RUN below is one `python -m jaxtrain.main` command (a shipped config by name,
from a scratch directory, so it runs as a user runs it); what it measured is read
from its workdir (final.json) and recorded under ids `RUN.accuracy` (or
`RUN.bits_per_char`), `RUN.train_sec` and `RUN.wall_sec`, each with its command,
the commit, date, machine, load, the seeds and, for runs repeated over seeds, the
spread (min, max) over them; the value is seed 0's, the run as shipped.

README.md, docs/ and the configs' docstrings quote these values as
`0.997<!-- r:digits_mlp.accuracy -->` (a docstring: `0.997 [r:digits_mlp.accuracy]`;
`ID:min` / `ID:max`: the spread over seeds); tests/test_results.py checks that every
such number equals the recorded value to the digits shown, so a change that moves a
number fails until this script has recorded it again. `--quote` then rewrites every
quoted number from the record, keeping the digits shown:

  python scripts/reproduce.py --only=mnist1d_mlp && python scripts/reproduce.py --quote Accuracies are deterministic on one
machine (same seed, same parameters); times are not, and are checked only against
the record, never re-measured by the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results.json"
# A quoted number and its record's id: `0.753<!-- r:mnist1d_mlp.accuracy -->`, `12.9 s<!--
# r:mnist1d_mlp.train_sec -->` (one line), `75%`, `**0.753**`, `0.753 [r:...]` in a docstring.
MARKER = re.compile(
    r"(\d[\d,]*(?:\.\d+)?)(%?)(?:\*\*)?(?: ?(?:s|bits/char))?(?:\*\*)?\s*"
    r"(?:<!-- r:([\w.:]+) -->|\[r:([\w.:]+)\])")


def quoted_value(results: dict, key: str, percent: bool) -> float | None:
  """The recorded value a marker names (None: no such record)."""
  key, _, bound = key.partition(":")  # 'ID:min' / 'ID:max': the spread over seeds.
  record = results.get(key)
  if record is None or (bound and "spread" not in record):
    return None
  value = record["spread"][bound == "max"] if bound else record["value"]
  return value * (100 if percent else 1)


def sources() -> list[Path]:
  """The files whose numbers quote the records."""
  return sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md"),
                 *(REPO / "jaxtrain" / "configs").glob("*.py")])


def quote(results: dict) -> list[str]:
  """Rewrites every quoted number from its record (same digits); returns what changed."""
  changed = []
  for path in sources():
    text = path.read_text(encoding="utf-8")

    def fresh(match):
      value = quoted_value(results, match.group(3) or match.group(4), bool(match.group(2)))
      if value is None:
        raise SystemExit(f"{path}: {match.group(0)!r} names no record in {RESULTS}")
      shown = match.group(1)
      decimals = len(shown.partition(".")[2])
      new = f"{value:,.{decimals}f}" if "," in shown else f"{value:.{decimals}f}"
      if new != shown:
        changed.append(f"{path.relative_to(REPO)}: {shown} -> {new}")
      return new + match.group(0)[len(shown):]

    new_text = MARKER.sub(fresh, text)
    if new_text != text:
      path.write_text(new_text, encoding="utf-8")
  return changed


@dataclasses.dataclass(frozen=True)
class Run:
  config: str  # A shipped config's file name (jaxtrain/configs/).
  overrides: tuple[str, ...] = ()
  seeds: tuple[int, ...] = (0,)  # More than one: the spread over seeds is recorded.
  after: str | None = None  # A run whose workdir this one reads (init_from).
  cheap: bool = False  # Re-run by the slow tests (tests/test_results.py): under a minute.
  tolerance: float = 0.002  # How far a re-run's accuracy may move on another machine.


RUNS = {
    "digits_mlp": Run("digits_mlp.py", cheap=True),
    "digits_cnn": Run("digits_cnn.py", cheap=True),
    "digits_resnet": Run("digits_resnet.py"),
    # The ViT is sensitive to float rounding: measured over three seeds.
    "digits_vit": Run("digits_vit.py", seeds=(0, 1, 2)),
    "mnist1d_mlp": Run("mnist1d_mlp.py", cheap=True),
    "mnist1d_cnn": Run("mnist1d_cnn.py", cheap=True),
    "mnist1d_gru": Run("mnist1d_gru.py"),
    "charlm_transformer": Run("charlm_transformer.py"),
    # Transfer: pretrain on classes 0-4, then 5-9 from 100 examples, and from scratch.
    "mnist1d_cnn_pretrain_0to4": Run("mnist1d_cnn_pretrain_0to4.py", cheap=True),
    "mnist1d_cnn_finetune_5to9": Run("mnist1d_cnn_finetune_5to9.py",
                                     after="mnist1d_cnn_pretrain_0to4", cheap=True),
    "mnist1d_cnn_scratch_5to9": Run("mnist1d_cnn_scratch_5to9.py", cheap=True),
    "digits_vit_pretrain_0to4": Run("digits_vit_pretrain_0to4.py"),
    "digits_vit_finetune_5to9": Run("digits_vit_finetune_5to9.py",
                                    after="digits_vit_pretrain_0to4"),
    "digits_vit_scratch_5to9": Run("digits_vit_scratch_5to9.py"),
}


def command(name: str, seed: int) -> list[str]:
  run = RUNS[name]
  return ["python", "-m", "jaxtrain.main", f"--config={run.config}",
          f"--workdir=runs/{name}" + (f"_seed{seed}" if seed else ""), *run.overrides,
          *([f"--config.seed={seed}"] if seed else [])]


def _commit() -> str:
  try:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                         capture_output=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "jaxtrain"], cwd=REPO,
                           text=True, capture_output=True, check=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _machine() -> str:
  return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


def measure(name: str, scratch: Path, env: dict) -> dict:
  """Runs `name` once per seed in `scratch`; returns {id: record}."""
  run, values = RUNS[name], []
  for seed in run.seeds:
    argv = command(name, seed)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=scratch, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
      raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    workdir = scratch / argv[4].split("=", 1)[1]
    final = json.loads((workdir / "final.json").read_text())
    values.append({"final": final["final"], "train_sec": final["train_time_sec"],
                   "wall_sec": wall, "load": round((load_before + os.getloadavg()[0]) / 2, 1),
                   "command": " ".join(argv)})
  first, out = values[0], {}
  stamp = {"commit": _commit(), "date": datetime.date.today().isoformat(),
           "machine": _machine(), "load": first["load"], "seeds": list(run.seeds),
           "command": first["command"]}
  metric = "bits_per_char" if "eval/bits_per_char" in first["final"] else "accuracy"
  series = [v["final"][f"eval/{metric}"] for v in values]
  out[f"{name}.{metric}"] = {"value": series[0], **stamp, "cheap": run.cheap,
                             "tolerance": run.tolerance,
                             **({"spread": [min(series), max(series)], "per_seed": series}
                                if len(series) > 1 else {})}
  for key in ("train_sec", "wall_sec"):
    out[f"{name}.{key}"] = {"value": first[key], **stamp}
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
  parser.add_argument("--list", action="store_true", help="print the runs and exit")
  parser.add_argument("--quote", action="store_true",
                      help="rewrite the numbers the docs quote from docs/results.json, run nothing")
  parser.add_argument("--out", default=str(RESULTS))
  parser.add_argument("--scratch", default="", help="directory for the runs (default: temp)")
  args = parser.parse_args(argv)
  if args.quote:
    for line in quote(json.loads(Path(args.out).read_text())) or ["every quoted number is current"]:
      print(line)
    return 0
  if args.list:
    for name in RUNS:
      print(f"{name}: {' '.join(command(name, 0))}")
    return 0
  names = [n for n in args.only.split(",") if n] or list(RUNS)
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    parser.error(f"unknown runs {unknown}; --list shows them")
  for name in list(names):  # A run reads its `after` run's workdir: run that first.
    after = RUNS[name].after
    if after and after not in names:
      names.insert(names.index(name), after)
  scratch = Path(args.scratch or tempfile.mkdtemp(prefix="jaxtrain_reproduce_"))
  scratch.mkdir(parents=True, exist_ok=True)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
  env.pop("XLA_FLAGS", None)  # As a user runs them: one CPU device.
  out = Path(args.out)
  results = json.loads(out.read_text()) if out.exists() else {}
  for name in names:
    measured = measure(name, scratch, env)
    results.update(measured)
    out.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")
    print(name, {k: round(v["value"], 4) for k, v in measured.items()}, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
