"""Listing and comparing runs from their workdirs (no TensorBoard needed).

    python -m jaxtrain.runs list ROOT [--metric=eval/accuracy]
    python -m jaxtrain.runs compare RUN [RUN ...] [--out=DIR] [--metric=...]

`list` prints one row per run found under ROOT: name, kind (train/tune),
status, steps, wall time, final and best value of the metric, and one column
per config key that differs between the runs. `compare` prints the same
facts side by side (one column per run) and, with --out, writes one PNG per
logged metric with every run's learning curve overlaid, plus compare.md.

Everything comes from files in each workdir: config.json, metrics.jsonl,
final.json (single runs), tune/result.json and best/final.json (tuning runs).
A directory with config.json is a run; its subdirectories are not searched.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain import paths as paths_lib
from jaxtrain.paths import Path

CURVE_METRICS = ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy")


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def _records(workdir: Path) -> list[dict[str, Any]]:
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return []
  out = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      out.append(json.loads(line))
    except ValueError:
      continue  # A line cut short by a crash.
  return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def is_run(path: Path) -> bool:
  return (path / "config.json").is_file()


def find_runs(root: str | Path) -> list[Path]:
  """Run directories at or under `root` (not searched below a run), sorted."""
  root = paths_lib.of(root)
  if not root.is_dir():
    raise errors.UserError(f"{root} is not a directory; pass the folder that holds your "
                           "runs' workdirs, e.g. `python -m jaxtrain.runs list runs`")
  if is_run(root):
    return [root]
  found, stack = [], [root]
  while stack:
    folder = stack.pop()
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
      (found if is_run(child) else stack).append(child)
  return sorted(found)


def _better(metric: str):
  return min if "loss" in metric else max


def summarize(workdir: str | Path, metric: str = "eval/accuracy") -> dict[str, Any]:
  """The facts `list` and `compare` show for one run directory.

  Raises:
    UserError: `workdir` is not a run (no config.json).
  """
  workdir = paths_lib.of(workdir)
  if not is_run(workdir):
    hint = (" (it holds runs: list them with `python -m jaxtrain.runs list "
            f"{workdir}`)" if workdir.is_dir() and any(is_run(p) for p in workdir.iterdir()
                                                      if p.is_dir()) else "")
    raise errors.UserError(f"{workdir} is not a jaxtrain run directory: it has no "
                           f"config.json{hint}")
  # Keys a run's config.json lacks (written by an older jaxtrain) count as their
  # defaults, so that a new key does not show up as a difference between runs.
  config = {**_flatten(config_lib.base_config().to_dict()),
            **_flatten(_read_json(workdir / "config.json") or {})}
  records = _records(workdir)
  row: dict[str, Any] = {"path": str(workdir), "config": config,
                         "kind": "train", "status": "incomplete", "steps": None,
                         "wall_time_sec": None, "final": None, "best": None,
                         "best_step": None}
  if records:
    row["steps"] = records[-1].get("step")
  tune_result = _read_json(workdir / "tune" / "result.json")
  if (workdir / "tune").is_dir():
    row["kind"] = "tune"
    best_final = _read_json(workdir / "best" / "final.json") or {}
    if tune_result:
      row["status"] = tune_result.get("status", "completed")
      row["wall_time_sec"] = tune_result.get("wall_time_sec")
      if tune_result.get("metric") == metric:
        row["best"] = tune_result.get("best_score")
    row["final"] = (best_final.get("final") or {}).get(metric)
    row["best"] = row["best"] if row["best"] is not None else row["final"]
    row["best_member"] = (tune_result or {}).get("best_member")
  else:
    final = _read_json(workdir / "final.json")
    values = [(r["step"], r[metric]) for r in records
              if isinstance(r.get(metric), (int, float))]
    if final:
      row["status"] = final.get("status")
      row["steps"] = final.get("step", row["steps"])
      row["wall_time_sec"] = final.get("wall_time_sec")
      row["final"] = (final.get("final") or {}).get(metric)
      best = final.get("best") or {}
      if metric in best:
        row["best"], row["best_step"] = best[metric], best.get("step")
    elif values:
      row["final"] = values[-1][1]
    if row["best"] is None and values:
      row["best_step"], row["best"] = _better(metric)(values, key=lambda sv: sv[1])
  return row


def curves(workdir: str | Path, summary: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
  """{metric: [(step, value)]} from metrics.jsonl (a tuning run: its best member)."""
  out: dict[str, list[tuple[int, float]]] = {}
  member = summary.get("best_member")
  for r in _records(paths_lib.of(workdir)):
    for metric in CURVE_METRICS:
      value = r.get(metric)
      if isinstance(value, list) and member is not None and member in r.get("member_ids", []):
        value = value[r["member_ids"].index(member)]
      if isinstance(value, (int, float)) and math.isfinite(value):
        out.setdefault(metric, []).append((r["step"], float(value)))
  return out


def differing_keys(summaries: list[dict[str, Any]]) -> list[str]:
  """Config keys whose values are not the same in every run."""
  keys = sorted({k for s in summaries for k in s["config"]})
  missing = object()
  return [k for k in keys
          if len({repr(s["config"].get(k, missing)) for s in summaries}) > 1]


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  if value == "":
    return '""'
  if isinstance(value, tuple):
    return "(" + ", ".join(_cell(v) for v in value) + ")"
  return str(value).replace("|", "\\|")


def _markdown(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def _name(path: Path, root: Path) -> str:
  try:
    name = str(path.relative_to(root))
  except ValueError:
    name = str(path)
  return name if name != "." else path.name


def list_table(root: str | Path, metric: str = "eval/accuracy") -> str:
  """The `list` table: one row per run under `root`."""
  root = paths_lib.of(root)
  runs = find_runs(root)
  if not runs:
    raise errors.UserError(f"no runs under {root} (a run directory holds config.json); "
                           "train one with python -m jaxtrain.main --workdir=...")
  summaries = [summarize(p, metric) for p in runs]
  keys = differing_keys(summaries)
  header = ["run", "kind", "status", "steps", "wall s", f"final {metric}",
            f"best {metric}", "best step", *keys]
  rows = [[_name(paths_lib.of(s["path"]), root), s["kind"], s["status"], s["steps"],
           s["wall_time_sec"], s["final"], s["best"], s["best_step"],
           *[s["config"].get(k) for k in keys]] for s in summaries]
  return _markdown(header, rows)


def compare(paths: list[str | Path], out: str | Path | None = None,
            metric: str = "eval/accuracy",
            names: list[str] | None = None) -> tuple[str, list[Path]]:
  """The `compare` table (one column per run) and, with `out`, the curve PNGs.

  `names` label the columns and curves (default: the paths as given). Returns
  (markdown table, paths of the figures written).
  """
  if not paths:
    raise errors.UserError("compare needs at least one run directory")
  paths = [paths_lib.of(p) for p in paths]
  if names is not None and len(names) != len(paths):
    raise errors.UserError(f"compare got {len(paths)} runs but {len(names)} names; give one "
                           "name per run, or none")
  summaries = [summarize(p, metric) for p in paths]
  names = [str(p) for p in paths] if names is None else [str(n) for n in names]
  rows = [[k, *[s["config"].get(k) for s in summaries]] for k in differing_keys(summaries)]
  for label, field in (("kind", "kind"), ("status", "status"), ("steps", "steps"),
                       ("wall s", "wall_time_sec"), (f"final {metric}", "final"),
                       (f"best {metric}", "best"), ("best step", "best_step")):
    rows.append([label, *[s[field] for s in summaries]])
  table = _markdown(["", *names], rows)
  figures: list[Path] = []
  if out is not None:
    from jaxtrain.analysis import plots  # pylint: disable=g-import-not-at-top
    out = paths_lib.of(out)
    out.mkdir(parents=True, exist_ok=True)
    by_run = {name: curves(p, s) for name, p, s in zip(names, paths, summaries)}
    for curve_metric in CURVE_METRICS:
      if any(curve_metric in c for c in by_run.values()):
        figures.append(plots.learning_curves(by_run, curve_metric,
                                             out / f"{curve_metric.replace('/', '_')}.png"))
    (out / "compare.md").write_text(
        "# Run comparison\n\n" + table + "\n\n"
        + "".join(f"![{f.stem}]({f.name})\n\n" for f in figures), encoding="utf-8")
  return table, figures


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxtrain.runs", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  listing = commands.add_parser("list", help="one row per run under ROOT")
  listing.add_argument("root")
  comparing = commands.add_parser("compare", help="runs side by side, learning curves")
  comparing.add_argument("runs", nargs="+")
  comparing.add_argument("--out", default=None, help="folder for the learning-curve PNGs "
                         "and compare.md")
  for p in (listing, comparing):
    p.add_argument("--metric", default="eval/accuracy", help="the metric whose final and "
                   "best values are shown")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.command == "list":
      print(list_table(args.root, args.metric))
    else:
      table, figures = compare(args.runs, args.out, args.metric)
      print(table)
      for f in figures:
        print(f"wrote {f}", file=sys.stderr)
  except errors.JaxtrainError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  return 0


if __name__ == "__main__":
  sys.exit(main())
