"""Crash-consistency harness: SIGKILL a run at random moments, restart it, compare.

  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/chaos.py --out=chaos_train.json
  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/chaos.py --mode=tune --kills=8 --out=chaos_tune.json
  # Synchronous saves, every kill right after a commit:
  python scripts/chaos.py --kills=8 --save_fraction=0 --commit_fraction=1 \
    --override=--config.checkpoint.async_save=False
  # Damaged files, two writers, signals at awkward moments (scripts/chaos_cases.py):
  JAXTRAIN_DATA_DIR=/tmp/tfdsdata python scripts/chaos.py --mode=cases --out=chaos_cases.json

Runs a small job (`python -m jaxtrain.main ...`, see MODES) once uninterrupted
as the reference, then again in a fresh workdir, SIGKILLing it `--kills` times
and rerunning the same command after each kill until it completes. Then
compares the interrupted run with the reference:

  train  final.json (params_sha256, status, step, final and best metrics),
         every record of metrics.jsonl, and the checkpoint steps kept on disk;
  tune   best/final.json (params_sha256 ...), tune/lineage.jsonl line by line,
         metrics.jsonl, tune/result.json, best/test.json, and the steps kept
         in tune/checkpoints and best/checkpoints.

Timing fields (steps_per_sec, ..._time_sec) and per-process counts (compiles)
are left out; everything else must be identical. Steps kept must include all
of the reference's (latest N plus the best); an extra older one is reported as
a leftover, not a failure (Orbax deletes old steps only after a later commit).

Kill moments (seeded by `--seed`; the shares are exact, the order random; each
kill is sized so that the kills spread over the whole run):

  save    while an Orbax save is in flight: the harness lists the checkpoint
          directories every millisecond and kills when a new
          `<step>.orbax-checkpoint-tmp` directory (Orbax 0.12.8's in-progress
          save) appears, at once or up to 100 ms later;
  commit  right after a new step directory appears (the save's atomic rename),
          while the loop's other files may still lag behind the checkpoint;
  time    at a random time, in start-up (imports, restore, compile) or some
          time after the process's first save.

A kill "landed mid-save" when, after the process is gone, a temporary Orbax
directory that this process created is left on disk. A "restore failure" is a
restart that exits non-zero, hangs, or does not resume from the latest
committed checkpoint (its first new save is not past it). Expected on a
correct jaxtrain: 0 restore failures and everything identical (exit 0; exit 1
and the workdirs kept otherwise). On 2 CPU cores the train mode with 20 kills
takes 5-10 minutes and `--mode=tune --kills=8` 3-5 (start-up is 4-30 s per
restart depending on machine load). Results: docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TMP_MARK = "orbax-checkpoint-tmp"  # Orbax 0.12.8 writes <step>.orbax-checkpoint-tmp
POLL_SEC = 0.001
# Fields that measure time and so differ between any two runs.
TIMING_KEYS = {"steps_per_sec", "member_steps_per_sec", "examples_per_sec", "mfu",
               "train_time_sec", "wall_time_sec", "wall_time"}
# Fields that count per process (one compile per restart) or list the steps on
# disk (compared separately, as "steps kept") rather than describe the result.
HISTORY_KEYS = {"train_step_compiles", "checkpoint_steps"}

MODES = {
    "train": {
        "config": "configs/digits_mlp.py",
        "overrides": ["--config.train.num_steps=3000", "--config.checkpoint.every_steps=50",
                      "--config.train.log_every_steps=25", "--config.train.eval_every_steps=250"],
        "watch": ["checkpoints"],
        "done": ["final.json"],
    },
    "tune": {
        "config": "configs/digits_pbt.py",
        "overrides": ["--config.train.num_steps=1000", "--config.checkpoint.every_steps=100",
                      "--config.tune.population_size=8"],
        "watch": ["tune/checkpoints", "best/checkpoints"],
        "done": ["tune/result.json", "best/final.json"],
    },
}


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


# --- Watching the checkpoint directories. ---


def scan(workdir: Path, watch: list[str]) -> tuple[dict, dict]:
  """(temporary dirs, committed step dirs) under the watched directories, each
  {(watched dir, name): ctime_ns}."""
  tmp, committed = {}, {}
  for sub in watch:
    try:
      with os.scandir(workdir / sub) as entries:
        for e in entries:
          if TMP_MARK in e.name or e.name.isdigit():
            try:
              ctime = e.stat(follow_symlinks=False).st_ctime_ns
            except FileNotFoundError:
              continue  # Renamed or deleted between listing and stat.
            (tmp if TMP_MARK in e.name else committed)[(sub, e.name)] = ctime
    except (FileNotFoundError, NotADirectoryError):
      pass
  return tmp, committed


def new_entries(now: dict, base: dict) -> set:
  """Keys of `now` not in `base` or with another ctime: Orbax deletes and
  re-creates a temporary directory left by a killed process under the same
  name, often with the same inode, but a new ctime."""
  return {k for k, ctime in now.items() if base.get(k) != ctime}


def latest_committed(workdir: Path, sub: str) -> int | None:
  steps = [int(name) for _, name in scan(workdir, [sub])[1]]
  return max(steps) if steps else None


def incomplete_steps(workdir: Path, sub: str) -> list[int]:
  """Committed (renamed) step dirs that lack Orbax's commit markers."""
  bad = []
  for _, name in scan(workdir, [sub])[1]:
    d = workdir / sub / name
    items = [p for p in d.iterdir() if p.is_dir()] if d.is_dir() else []
    markers = [d / "_CHECKPOINT_METADATA", d / "commit_success.txt"]
    markers += [p / "commit_success.txt" for p in items]
    if not items or not all(m.exists() for m in markers):
      bad.append(int(name))
  return sorted(bad)


def step_of(name: str) -> int:
  return int(name.split(".")[0])


# --- One process: run it, optionally kill it on a trigger. ---


def run_life(cmd: list[str], workdir: Path, watch: list[str], log_path: Path,
             trigger: dict | None, timeout: float) -> dict:
  """Runs `cmd` until it exits or `trigger` fires (then SIGKILLs its process group).

  trigger: None (run to the end), {"kind": "time", "at": seconds since launch},
    {"kind": "time", "after_first_save": seconds}, {"kind": "save", "nth": k,
    "delay": seconds} or {"kind": "commit", "nth": k}.
  Returns what happened: rc, killed, seconds, the saves and commits it was seen
  to start (dir, step, seconds since launch), and whether the kill was mid-save.
  """
  base_tmp, base_committed = scan(workdir, watch)
  saves, commits = [], []
  info = {"trigger": trigger, "killed": False, "rc": None, "hung": False}
  t0 = time.monotonic()
  with open(log_path, "wb") as out:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      seen_tmp, seen_committed = set(), set()
      kill_at = trigger.get("at") if trigger else None
      while True:
        now = time.monotonic() - t0
        rc = proc.poll()
        if rc is not None:
          info["rc"] = rc
          break
        tmp, committed = scan(workdir, watch)
        for entry in sorted(new_entries(tmp, base_tmp) - seen_tmp):
          seen_tmp.add(entry)
          saves.append({"dir": entry[0], "step": step_of(entry[1]), "t": round(now, 3)})
          if trigger and trigger["kind"] == "save" and len(saves) == trigger["nth"]:
            kill_at = now + trigger["delay"]
          if trigger and "after_first_save" in trigger and len(saves) == 1:
            kill_at = now + trigger["after_first_save"]
        # A committed directory's ctime changes while Orbax deletes it, so these
        # count as new by name: one that vanished (deleted) and came back is new.
        base_committed = {k: v for k, v in base_committed.items() if k in committed}
        for entry in sorted(set(committed) - set(base_committed) - seen_committed):
          seen_committed.add(entry)
          commits.append({"dir": entry[0], "step": step_of(entry[1]), "t": round(now, 3)})
          if trigger and trigger["kind"] == "commit" and len(commits) == trigger["nth"]:
            kill_at = now
        if kill_at is not None and now >= kill_at:
          os.killpg(proc.pid, signal.SIGKILL)  # Our own child's process group.
          info["rc"], info["killed"] = proc.wait(), True
          break
        if now > timeout:
          os.killpg(proc.pid, signal.SIGKILL)
          info["rc"], info["hung"] = proc.wait(), True
          break
        time.sleep(POLL_SEC)
    finally:  # The harness itself stopped (Ctrl-C, SIGTERM): take the child with it.
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  info["seconds"] = round(time.monotonic() - t0, 3)
  left_tmp = new_entries(scan(workdir, watch)[0], base_tmp)
  info["mid_save"] = info["killed"] and bool(left_tmp)
  info["left_tmp"] = sorted(f"{s}/{n}" for s, n in left_tmp)
  info["saves"], info["commits"] = saves, commits
  return info


# --- Comparing two workdirs. ---


def strip(value, drop=TIMING_KEYS | HISTORY_KEYS):
  if isinstance(value, dict):
    return {k: strip(v, drop) for k, v in value.items() if k not in drop}
  if isinstance(value, list):
    return [strip(v, drop) for v in value]
  return value


def read_jsonl(path: Path) -> list:
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def diff_values(a, b, path="") -> list[str]:
  """Human-readable differences between two JSON values (exact equality)."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      if k not in a or k not in b:
        out.append(f"{path}{k}: {'missing' if k not in b else 'extra'}")
      else:
        out += diff_values(a[k], b[k], f"{path}{k}.")
    return out
  if a != b and not (a != a and b != b):  # NaN equals NaN here.
    return [f"{path.rstrip('.')}: {a!r} != {b!r}"]
  return []


def compare_metrics(ref: Path, got: Path) -> dict:
  ref_records, got_records = read_jsonl(ref), read_jsonl(got)
  ref_by_step = {r["step"]: strip(r) for r in ref_records}
  got_steps = [r["step"] for r in got_records]
  got_by_step = {r["step"]: strip(r) for r in got_records}
  differing = [s for s in ref_by_step if s in got_by_step and ref_by_step[s] != got_by_step[s]]
  missing = sorted(set(ref_by_step) - set(got_by_step))
  extra = sorted(set(got_by_step) - set(ref_by_step))
  duplicates = sorted({s for s in got_steps if got_steps.count(s) > 1})
  details = [f"{what} steps {steps}" for what, steps in
             (("missing", missing), ("extra", extra), ("duplicated", duplicates)) if steps]
  for s in differing[:5]:
    details += [f"step {s}: {d}" for d in diff_values(ref_by_step[s], got_by_step[s])[:3]]
  values = sum(len(r) - 1 for r in ref_by_step.values())
  return {
      "records": len(ref_records), "values": values,
      "missing_steps": missing, "extra_steps": extra, "duplicate_steps": duplicates,
      "out_of_order": got_steps != sorted(got_steps),
      "differing_steps": differing, "details": details,
  }


def compare_json(ref: Path, got: Path) -> dict:
  if not got.exists():
    return {"identical": False, "details": [f"{got} missing"]}
  a, b = strip(json.loads(ref.read_text())), strip(json.loads(got.read_text()))
  details = diff_values(a, b)
  return {"identical": not details, "details": details[:10]}


def compare(mode: str, ref: Path, got: Path) -> dict:
  out = {}
  final = "final.json" if mode == "train" else "best/final.json"
  ref_sha = json.loads((ref / final).read_text())["params_sha256"]
  got_sha = (json.loads((got / final).read_text()).get("params_sha256")
             if (got / final).exists() else None)
  out["params_sha256"] = {"reference": ref_sha, "chaos": got_sha, "identical": ref_sha == got_sha}
  out[final] = compare_json(ref / final, got / final)
  m = compare_metrics(ref / "metrics.jsonl", got / "metrics.jsonl")
  m["identical"] = not (m["missing_steps"] or m["extra_steps"] or m["duplicate_steps"]
                        or m["out_of_order"] or m["differing_steps"])
  out["metrics.jsonl"] = m
  for sub in MODES[mode]["watch"]:
    # The reference's steps (latest N plus the best) must all be there. Extra
    # older ones are garbage, not damage: Orbax deletes old steps only after a
    # later save commits, so a kill between the last commit and that clean-up
    # leaves one behind.
    steps = [sorted(int(name) for _, name in scan(d, [sub])[1]) for d in (ref, got)]
    missing = sorted(set(steps[0]) - set(steps[1]))
    out[f"{sub}/ (steps kept)"] = {
        "identical": not missing, "reference": steps[0], "chaos": steps[1], "missing": missing,
        "extra": sorted(set(steps[1]) - set(steps[0])),
        "details": [f"reference keeps {steps[0]}, chaos run {steps[1]}"] if missing else []}
  if mode == "tune":
    a, b = read_jsonl(ref / "tune/lineage.jsonl"), read_jsonl(got / "tune/lineage.jsonl")
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    out["tune/lineage.jsonl"] = {
        "identical": a == b, "events": len(a), "chaos_events": len(b),
        "first_difference": first if first is not None or len(a) == len(b) else min(len(a), len(b))}
    out["tune/result.json"] = compare_json(ref / "tune/result.json", got / "tune/result.json")
    out["best/test.json"] = compare_json(ref / "best/test.json", got / "best/test.json")
  return out


# --- The experiment. ---


def source_state(repo: Path) -> dict:
  def git(*args):
    try:
      return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                            check=True).stdout
    except (OSError, subprocess.CalledProcessError):
      return ""
  diff = git("diff", "HEAD", "--", "jaxtrain")
  untracked = git("ls-files", "--others", "--exclude-standard", "jaxtrain").split()
  for path in untracked:
    diff += path + "\n" + (repo / path).read_text(errors="replace")
  return {"commit": git("rev-parse", "HEAD").strip(),
          "jaxtrain_uncommitted": git("status", "--porcelain", "jaxtrain").splitlines(),
          "jaxtrain_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None}


def plan_kinds(rng: random.Random, args) -> list[str]:
  """The kind of each kill, in the shares asked for, in a seeded random order."""
  n_save = round(args.kills * args.save_fraction)
  n_commit = min(args.kills - n_save, round(args.kills * args.commit_fraction))
  kinds = ["save"] * n_save + ["commit"] * n_commit + ["time"] * (args.kills - n_save - n_commit)
  rng.shuffle(kinds)
  return kinds


def plan_trigger(rng: random.Random, kind: str, profile: dict, workdir: Path, main_dir: str,
                 kills_left: int) -> dict:
  """A kill of `kind` for the next process, sized so the kills spread over the run."""
  latest = latest_committed(workdir, main_dir)
  remaining = sum(1 for s in profile["save_steps"] if latest is None or s > latest)
  target = max(1.0, remaining / (kills_left + 1))  # Saves of progress per process.
  nth = rng.randint(1, max(1, round(2 * target)))
  if kind == "save":
    delay = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.1)
    return {"kind": "save", "nth": nth, "delay": round(delay, 4)}
  if kind == "commit":
    return {"kind": "commit", "nth": nth}
  # Start-up (imports, restore, compile) takes a share of the time like that
  # of the reference; later kills are timed from this process's first save,
  # since start-up time varies a lot on a loaded machine.
  running = 2 * target * profile["save_interval_sec"]
  if rng.random() < profile["first_save_sec"] / (profile["first_save_sec"] + running):
    return {"kind": "time", "at": round(rng.uniform(0.0, profile["first_save_sec"]), 3)}
  return {"kind": "time", "after_first_save": round(rng.uniform(0.0, running), 3)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 2)[2])
  p.add_argument("--mode", choices=sorted([*MODES, "cases"]), default="train",
                 help="train or tune: kill and resume; cases: damaged files, two writers "
                      "and signals (scripts/chaos_cases.py)")
  p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default 20)")
  p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
  p.add_argument("--save_fraction", type=float, default=0.6,
                 help="share of kills aimed at an in-flight async save (default 0.6)")
  p.add_argument("--commit_fraction", type=float, default=0.15,
                 help="share of kills right after a save commits (default 0.15); the rest "
                      "are at uniformly random times")
  p.add_argument("--override", action="append", default=[],
                 help="extra --config.KEY=VALUE for both runs (repeatable), e.g. "
                      "--override=--config.checkpoint.async_save=False")
  p.add_argument("--workdir", help="where the two workdirs go (default: a new temp dir)")
  p.add_argument("--keep", action="store_true", help="keep the workdirs (always kept on failure)")
  p.add_argument("--max_failures", type=int, default=3,
                 help="give up after this many restore failures in a row (default 3)")
  p.add_argument("--out", help="also write the report as JSON here")
  args = p.parse_args(argv)
  # SIGTERM unwinds like Ctrl-C, so the running child is killed on the way out.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

  if args.mode == "cases":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import chaos_cases  # pylint: disable=g-import-not-at-top
    return chaos_cases.run_cases(args.seed, args.workdir, args.out)

  mode = MODES[args.mode]
  base = Path(args.workdir or tempfile.mkdtemp(prefix=f"chaos_{args.mode}_")).absolute()
  if base.exists() and any(base.iterdir()):
    p.error(f"--workdir {base} is not empty; pass a new or empty directory")
  base.mkdir(parents=True, exist_ok=True)
  (base / "logs").mkdir()
  rng = random.Random(args.seed)

  def command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "jaxtrain.main", f"--config={REPO / mode['config']}",
            f"--workdir={workdir}", *mode["overrides"], *args.override]

  def done(workdir: Path) -> bool:
    return all((workdir / f).exists() for f in mode["done"])

  env_note = os.environ.get("JAXTRAIN_DATA_DIR")
  os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))

  # --- Reference: one uninterrupted run, also timing its saves for the plan.
  ref = base / "reference"
  ref.mkdir()
  log(f"reference run in {ref}")
  life = run_life(command(ref), ref, mode["watch"], base / "logs/reference.log", None,
                  timeout=1800)
  if life["rc"] != 0 or not done(ref):
    log(f"reference run failed (rc={life['rc']}); see {base / 'logs/reference.log'}")
    return 1
  main_dir = mode["watch"][0]
  save_times = [s["t"] for s in life["saves"]]
  profile = {
      "wall_sec": life["seconds"], "first_save_sec": save_times[0],
      "save_interval_sec": (save_times[-1] - save_times[0]) / max(1, len(save_times) - 1),
      "save_steps": sorted({s["step"] for s in life["saves"] if s["dir"] == main_dir}),
  }
  log(f"reference: {profile['wall_sec']:.1f}s, {len(save_times)} saves")

  # --- Chaos: kill, restart, repeat.
  chaos = base / "chaos"
  chaos.mkdir()
  lives, kills, failures_in_row = [], 0, 0
  kinds = plan_kinds(rng, args)
  t_start = time.monotonic()
  while True:
    latest = latest_committed(chaos, main_dir)
    trigger = (plan_trigger(rng, kinds[kills], profile, chaos, main_dir, args.kills - kills)
               if kills < args.kills else None)
    n = len(lives)
    life = run_life(command(chaos), chaos, mode["watch"], base / f"logs/life_{n:03d}.log",
                    trigger, timeout=max(120.0, 5 * profile["wall_sec"]))
    life["resumed_from"] = latest
    first = next((s["step"] for s in life["saves"] if s["dir"] == main_dir), None)
    life["resumed_ok"] = None if latest is None or first is None else first > latest
    life["incomplete_committed"] = incomplete_steps(chaos, main_dir)
    failed = (not life["killed"] and life["rc"] != 0) or life["hung"] or life["resumed_ok"] is False
    life["restore_failure"] = failed
    if failed:
      tail = (base / f"logs/life_{n:03d}.log").read_text(errors="replace").splitlines()[-15:]
      life["log_tail"] = tail
    lives.append(life)
    kills += life["killed"] and not life["hung"]
    log(f"life {n:3d}: from {latest} {json.dumps(trigger)} -> "
        f"{'KILLED' if life['killed'] else 'rc=' + str(life['rc'])} after {life['seconds']:.2f}s"
        f"{' mid-save ' + ','.join(life['left_tmp']) if life['mid_save'] else ''}"
        f"{' RESTORE FAILURE' if failed else ''}")
    failures_in_row = failures_in_row + 1 if failed else 0
    if not life["killed"] and life["rc"] == 0 and done(chaos):
      break
    if failures_in_row >= args.max_failures:
      log(f"giving up after {failures_in_row} restore failures in a row")
      break
  chaos_sec = time.monotonic() - t_start

  # --- Compare and report.
  completed = done(chaos)
  comparison = compare(args.mode, ref, chaos) if completed else {}
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "mode": args.mode, "seed": args.seed, "kills_requested": args.kills,
      "command": command(Path("W")), "JAXTRAIN_DATA_DIR": env_note,
      "source": source_state(REPO), "workdirs": str(base),
      "reference": profile, "chaos_wall_sec": round(chaos_sec, 1),
      "processes": len(lives),
      "kills": sum(l["killed"] and not l["hung"] for l in lives),
      "kills_by_trigger": {k: sum(1 for l in lives if l["killed"] and l["trigger"]
                                  and l["trigger"]["kind"] == k)
                           for k in ("save", "commit", "time")},
      "kills_mid_save": sum(l["mid_save"] for l in lives),
      "restore_failures": sum(l["restore_failure"] for l in lives),
      "resumes_checked": sum(l["resumed_ok"] is not None for l in lives),
      "incomplete_committed_seen": sorted({s for l in lives for s in l["incomplete_committed"]}),
      "completed": completed,
      "comparison": comparison,
      "lives": lives,
  }
  checks = {k: v["identical"] for k, v in comparison.items()}
  report["all_identical"] = completed and all(checks.values())
  print_summary(report, checks)
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  ok = report["all_identical"] and report["restore_failures"] == 0
  if ok and not args.keep:
    shutil.rmtree(base)
  elif not ok:
    log(f"workdirs kept for inspection: {base}")
  return 0 if ok else 1


def print_summary(report: dict, checks: dict) -> None:
  k = report["kills_by_trigger"]
  rows = [
      ("mode", report["mode"]),
      ("reference wall time", f"{report['reference']['wall_sec']:.1f} s"),
      ("chaos wall time", f"{report['chaos_wall_sec']:.1f} s"),
      ("processes started", report["processes"]),
      ("kills", f"{report['kills']} (save {k['save']}, commit {k['commit']}, time {k['time']})"),
      ("kills that landed mid-save", report["kills_mid_save"]),
      ("restarts checked to resume", report["resumes_checked"]),
      ("restore failures", report["restore_failures"]),
      ("incomplete committed steps", report["incomplete_committed_seen"] or "none"),
      ("run completed", report["completed"]),
  ]
  if report["comparison"]:
    sha = report["comparison"]["params_sha256"]
    rows.append(("params_sha256", f"{sha['chaos'][:16] if sha['chaos'] else None}... "
                 f"{'==' if sha['identical'] else '!='} reference {sha['reference'][:16]}..."))
    m = report["comparison"]["metrics.jsonl"]
    rows.append(("metrics.jsonl", f"{m['records']} records, {m['values']} values: "
                 f"{'identical' if m['identical'] else 'DIFFERENT'}"))
    for name, same in checks.items():
      c = report["comparison"][name]
      if name in ("params_sha256", "metrics.jsonl"):
        continue
      if "missing" in c:  # Steps kept on disk.
        rows.append((name, (f"all {len(c['reference'])} kept" if same else
                            f"MISSING {c['missing']}")
                     + (f", {len(c['extra'])} leftover {c['extra']}" if c["extra"] else "")))
      else:
        rows.append((name, "identical" if same else "DIFFERENT"))
  rows.append(("verdict", "PASS" if report["all_identical"] and not report["restore_failures"]
               else "FAIL"))
  width = max(len(r[0]) for r in rows)
  print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
  for name, c in report["comparison"].items():
    for line in c.get("details", []):
      print(f"  {name}: {line}")


if __name__ == "__main__":
  sys.exit(main())
