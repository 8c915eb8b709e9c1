"""Adversarial cases for a workdir: damaged files, two writers, signals at awkward moments.

  python scripts/chaos.py --mode=cases --seed=0 --out=chaos_cases.json
  (or: python scripts/chaos_cases.py --seed=0 --out=chaos_cases.json)

The kill-and-resume modes of scripts/chaos.py check that crashes lose nothing; these
cases check what a user relies on when something else goes wrong. Each case starts
from a copy of a run stopped part-way (a single run at step 30 of 40, a PBT search at
step 100 of 200, a Bayesian search after its first round; made once), does what a
hostile user or a bad day does, runs `python -m jaxtrain.main` as a user would, and
checks:

- the exit code is one the docs give for that situation;
- stderr holds nothing but progress lines and one final line, and a refusal is one
  `error:` line holding the words that name what is wrong;
- a refusal leaves every file that was there byte-identical (lock files aside);
- where the run is meant to go on (the rerun after a signal, the one of two writers
  that got the workdir), it completes with the parameters of an uninterrupted run.

Prints one line per case and how many held; writes the details as JSON with --out;
exits 1 if any case did not hold. `--seed` picks the damaged file, the signal times.
"""

from __future__ import annotations

import argparse
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
SINGLE = ["--config=configs/digits_mlp.py", "--config.train.num_steps=40",
          "--config.train.eval_every_steps=10", "--config.checkpoint.every_steps=10",
          "--config.train.log_every_steps=10", "--config.mesh.num_devices=1"]
SEARCH = ["--config=configs/digits_pbt.py", "--config.train.num_steps=200",
          "--config.tune.population_size=4", "--config.checkpoint.every_steps=100"]
BAYES = ["--config=configs/digits_bayes.py", "--config.train.num_steps=100",
         "--config.train.eval_every_steps=100", "--config.checkpoint.every_steps=100",
         "--config.tune.population_size=2", "--config.tune.bayes.rounds=2"]
ARGS = {"single": SINGLE, "search": SEARCH, "bayes": BAYES}
STOP = {"single": 30, "search": 100, "bayes": 100}
LOCKS = (".jaxtrain.lock", ".jaxtrain.lock.json")
# Exit codes after Ctrl-C: completed before it; saved and stopped (75); stopped before
# the loop (130); or, pressed after the run printed its result and main returned,
# Python's own exit by SIGINT (-2).
CTRL_C = (0, 75, 130, -signal.SIGINT)


def jaxtrain(args: list[str], timeout: float = 600, signals=()) -> dict:
  """Runs the CLI; `signals`: (seconds after start, signal) to send. Returns rc and output."""
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", "jaxtrain.main", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for at, sig in signals:
    time.sleep(max(0.0, at - (time.perf_counter() - start)))
    if proc.poll() is None:
      proc.send_signal(sig)
  out, err = proc.communicate(timeout=timeout)
  return {"rc": proc.returncode, "out": out, "err": err,
          "seconds": round(time.perf_counter() - start, 2)}


def final_lines(err: str) -> list[str]:
  """stderr without progress lines ('step N/M ...')."""
  return [l for l in err.splitlines() if l.strip() and not l.startswith("step ")]


def tree_bytes(root: Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file() and p.name not in LOCKS}


def changed_files(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
  """Files changed, deleted or added; jaxtrain.log (library messages) may be added."""
  return sorted(k for k in set(before) | set(after)
                if before.get(k) != after.get(k) and not (k == "jaxtrain.log" and k not in before))


def params_sha(workdir: Path, run: str) -> str | None:
  final = workdir / ("final.json" if run == "single" else "best/final.json")
  try:
    return json.loads(final.read_text())["params_sha256"]
  except (OSError, ValueError, KeyError):
    return None


# --- Damage. ---


def latest_step_dir(workdir: Path, sub: str = "checkpoints") -> Path:
  steps = [p for p in (workdir / sub).iterdir() if p.name.isdigit()]
  return max(steps, key=lambda p: int(p.name))


def array_files(step_dir: Path) -> list[Path]:
  return sorted(p for p in (step_dir / "state").rglob("*")
                if p.is_file() and p.parent.name == "d" and p.stat().st_size > 10_000)


def flip_frames(path: Path) -> None:
  """Flips 8 bytes mid every zstd frame: decodes, without an error, to other values."""
  magic = b"\x28\xb5\x2f\xfd"
  raw = bytearray(path.read_bytes())
  starts = [i for i in range(len(raw)) if raw.startswith(magic, i)]
  for start, end in zip(starts, starts[1:] + [len(raw)]):
    if end - start > 200:
      middle = (start + end) // 2
      raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
  path.write_bytes(bytes(raw))


def edit_json(path: Path, edit) -> None:
  record = json.loads(path.read_text())
  edit(record)
  path.write_text(json.dumps(record))


# --- Cases. Each returns (held, what happened). ---


class Cases:

  def __init__(self, base: Path, rng: random.Random):
    self.base, self.rng = base, rng
    self.stopped, self.reference = base / "stopped", base / "reference"
    self.count = 0

  def prepare(self) -> None:
    for run in ARGS:
      r = jaxtrain([*ARGS[run], f"--workdir={self.stopped / run}",
                    f"--stop_after_steps={STOP[run]}"])
      assert r["rc"] == 0, (run, r["err"][-2000:])
      r = jaxtrain([*ARGS[run], f"--workdir={self.reference / run}"])
      assert r["rc"] == 0, (run, r["err"][-2000:])

  def copy(self, run: str) -> Path:
    self.count += 1
    workdir = self.base / "cases" / f"{self.count:02d}_{run}"
    shutil.copytree(self.stopped / run, workdir)
    return workdir

  def refused(self, run: str, damage, words: list[str], extra=(), config=True):
    """A damaged copy of `run`, resumed (or `extra`): exit 2, one line, nothing changed."""
    workdir = self.copy(run)
    damage(workdir)
    before = tree_bytes(workdir)
    args = [*(ARGS[run] if config else []), f"--workdir={workdir}", *extra]
    r = jaxtrain(args)
    lines = final_lines(r["err"])
    problems = []
    if r["rc"] != 2:
      problems.append(f"exit {r['rc']}, not 2")
    if len(lines) != 1 or not lines[0].startswith("error: "):
      problems.append(f"{len(lines)} lines on stderr: {' | '.join(lines[-3:])[:300]}")
    elif not any(all(w in lines[0] for w in alt.split("|")) for alt in words):
      problems.append(f"the line does not say {words}: {lines[0][:300]}")
    changed = changed_files(before, tree_bytes(workdir))
    if changed:
      problems.append(f"files changed: {changed}")
    return not problems, "; ".join(problems) or lines[0][:200]

  def goes_on(self, run: str, workdir: Path, r: dict, rcs: tuple[int, ...]):
    """After `r` (a run that was interrupted, or refused): the rc is one of `rcs`, one
    final line; then the same command completes like the uninterrupted run."""
    problems = []
    lines = final_lines(r["err"])
    if r["rc"] not in rcs:
      problems.append(f"exit {r['rc']}, not one of {rcs}: {' | '.join(lines[-3:])[:300]}")
    if len(lines) > 1:
      problems.append(f"{len(lines)} lines on stderr: {' | '.join(lines[-3:])[:300]}")
    again = jaxtrain([*ARGS[run], f"--workdir={workdir}"])
    if again["rc"] != 0:
      problems.append(f"the rerun exited {again['rc']}: {again['err'][-300:]}")
    elif params_sha(workdir, run) != params_sha(self.reference / run, run):
      problems.append("the rerun's parameters differ from the uninterrupted run's")
    leftovers = [p.name for p in workdir.rglob("*orbax-checkpoint-tmp*")]
    if leftovers:
      problems.append(f"temporary directories left: {leftovers}")
    return not problems, "; ".join(problems) or f"exit {r['rc']}, rerun identical"

  # Corruption.
  def corruption(self):
    rng = self.rng
    yield "arrays: every chunk of the latest step flipped, resume", self.refused(
        "single", lambda w: [flip_frames(p) for p in array_files(latest_step_dir(w))],
        ["is damaged|checkpoints/30"])
    yield "arrays: every chunk flipped, --mode=eval", self.refused(
        "single", lambda w: [flip_frames(p) for p in array_files(latest_step_dir(w))],
        ["is damaged|--step=20"], extra=["--mode=eval"])
    yield "arrays: one file (seeded pick) flipped, resume", self.refused(
        "single", lambda w: flip_frames(rng.choice(array_files(latest_step_dir(w)))),
        ["is damaged", "cannot be read"])
    yield "arrays: one file cut to half, resume", self.refused(
        "single", lambda w: (lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]))(
            rng.choice(array_files(latest_step_dir(w)))), ["is damaged", "cannot be read"])
    yield "checksums file garbage", self.refused(
        "single", lambda w: (latest_step_dir(w) / "checksums" / "metadata").write_bytes(b"\x00" * 9),
        ["checksums file unreadable|cannot be verified"])
    yield "loop state: a number made a string", self.refused(
        "single", lambda w: edit_json(latest_step_dir(w) / "loop" / "metadata",
                                      lambda l: l.update(elapsed_sec="x")),
        ["damaged loop state|elapsed_sec"])
    yield "config.json: invalid JSON", self.refused(
        "single", lambda w: (w / "config.json").write_text("{not json"), ["config.json is not valid JSON"])
    yield "config.json: empty", self.refused(
        "single", lambda w: (w / "config.json").write_text(""), ["config.json is empty"])
    yield "config.json: a wrongly typed value", self.refused(
        "single", lambda w: edit_json(w / "config.json", lambda c: c["train"].update(num_steps="40")),
        ["train.num_steps='40'"])
    yield "config.json: invalid, --mode=eval without --config", self.refused(
        "single", lambda w: (w / "config.json").write_text("[]"),
        ["config.json holds a JSON list"], extra=["--mode=eval"], config=False)
    yield "metrics.jsonl: invalid UTF-8", self.refused(
        "single", lambda w: (w / "metrics.jsonl").write_bytes(b"\xff\xfe\xfd\n"),
        ["metrics.jsonl line 1 is not UTF-8"])
    yield "metrics.jsonl: a bad line in the middle", self.refused(
        "single", lambda w: (w / "metrics.jsonl").write_text(
            (w / "metrics.jsonl").read_text().replace("\n", "\n{oops\n", 1)),
        ["metrics.jsonl line 2 is not a JSON record"])
    yield "init_from: a damaged source checkpoint", self._init_from_damaged()
    yield "lineage: a bad line", self.refused(
        "search", lambda w: (w / "tune/lineage.jsonl").write_text(
            "{bad\n" + (w / "tune/lineage.jsonl").read_text()),
        ["lineage.jsonl line 1 is not a JSON record"])
    yield "lineage: cut short", self.refused(
        "search", lambda w: (w / "tune/lineage.jsonl").write_text(
            "".join((w / "tune/lineage.jsonl").read_text().splitlines(True)[:1])),
        ["lineage.jsonl holds 1 events"])
    yield "lineage: deleted", self.refused(
        "search", lambda w: (w / "tune/lineage.jsonl").unlink(), ["lineage.jsonl is missing"])
    yield "tuner loop state: a number made a string", self.refused(
        "search", lambda w: edit_json(latest_step_dir(w, "tune/checkpoints") / "loop" / "metadata",
                                      lambda l: l.update(lineage_count="5")),
        ["damaged loop state|lineage_count"])
    yield "optuna.db: deleted after a round", self.refused(
        "bayes", lambda w: (w / "tune/optuna.db").unlink(), ["optuna.db is missing"])
    yield "optuna.db: garbage", self.refused(
        "bayes", lambda w: (w / "tune/optuna.db").write_bytes(os.urandom(4096)),
        ["optuna.db cannot be read"])

  def _init_from_damaged(self):
    source = self.copy("single")
    for p in array_files(latest_step_dir(source)):
      flip_frames(p)
    before = tree_bytes(source)
    new = self.base / "cases" / f"{self.count:02d}_init_from_target"
    r = jaxtrain(["--config=configs/digits_mlp.py", f"--workdir={new}",
                  f"--config.init_from.workdir={source}", "--config.init_from.step=30",
                  "--config.train.num_steps=10", "--config.mesh.num_devices=1"])
    lines = final_lines(r["err"])
    ok = (r["rc"] == 2 and len(lines) == 1 and "is damaged" in lines[0]
          and not changed_files(before, tree_bytes(source)))
    return ok, f"exit {r['rc']}: {' | '.join(lines[-2:])[:250]}"

  # Concurrency.
  def concurrency(self):
    yield "two single runs started together on a new workdir", self._two_writers(
        ["single", "single"])
    yield "a search and a single run together on a new workdir", self._two_writers(
        ["search", "single"])
    yield "--mode=eval while the run resumes", self._eval_during_resume()
    yield "a stale lock record of a dead process", self._stale_lock()

  def _two_writers(self, runs: list[str]):
    self.count += 1
    workdir = self.base / "cases" / f"{self.count:02d}_two_writers"
    procs = [subprocess.Popen([sys.executable, "-m", "jaxtrain.main", *ARGS[run],
                               f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for run in runs]
    starts = time.perf_counter()
    results = []
    for proc in procs:
      out, err = proc.communicate(timeout=900)
      results.append({"rc": proc.returncode, "err": err,
                      "seconds": time.perf_counter() - starts})
    winners = [i for i, r in enumerate(results) if r["rc"] == 0]
    losers = [i for i, r in enumerate(results) if r["rc"] == 2]
    problems = []
    if len(winners) != 1 or len(losers) != 1:
      problems.append(f"exit codes {[r['rc'] for r in results]}, not one 0 and one 2")
    else:
      lines = final_lines(results[losers[0]]["err"])
      if len(lines) != 1 or not ("another jaxtrain run" in lines[0] or "holds a" in lines[0]):
        problems.append(f"the refused one said: {' | '.join(lines[-3:])[:300]}")
      run = runs[winners[0]]
      if params_sha(workdir, run) != params_sha(self.reference / run, run):
        problems.append("the run that went on differs from an uninterrupted one")
      ref_metrics = (self.reference / run / "metrics.jsonl").read_text().count("\n")
      if (workdir / "metrics.jsonl").read_text().count("\n") != ref_metrics:
        problems.append("metrics.jsonl lost records")
    return not problems, "; ".join(problems) or "one ran, one refused with one line"

  def _eval_during_resume(self):
    workdir = self.copy("single")
    proc = subprocess.Popen([sys.executable, "-m", "jaxtrain.main", *SINGLE,
                             f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    r = jaxtrain([f"--workdir={workdir}", "--mode=eval"])
    proc.communicate(timeout=600)
    problems = []
    lines = final_lines(r["err"])
    if r["rc"] not in (0, 2) or len(lines) > 1:
      problems.append(f"eval: exit {r['rc']}, {' | '.join(lines[-3:])[:300]}")
    if proc.returncode != 0 or params_sha(workdir, "single") != params_sha(
        self.reference / "single", "single"):
      problems.append(f"the resumed run: exit {proc.returncode}, or other parameters")
    return not problems, "; ".join(problems) or f"eval exit {r['rc']}, the run unaffected"

  def _stale_lock(self):
    workdir = self.copy("single")
    (workdir / ".jaxtrain.lock").write_text("")
    (workdir / ".jaxtrain.lock.json").write_text(json.dumps(
        {"pid": 999999, "host": "gone", "start_time": "2026-01-01T00:00:00"}))
    r = jaxtrain([*SINGLE, f"--workdir={workdir}"])
    ok = r["rc"] == 0 and params_sha(workdir, "single") == params_sha(
        self.reference / "single", "single")
    return ok, f"exit {r['rc']}" + ("" if ok else f": {r['err'][-300:]}")

  # Signals.
  def signals(self):
    rng = self.rng
    for at in sorted(rng.uniform(0.2, 4.0) for _ in range(3)):
      workdir = self.base / "cases" / f"sigint_{at:.2f}"
      r = jaxtrain([*SINGLE, f"--workdir={workdir}"], signals=[(at, signal.SIGINT)])
      yield f"Ctrl-C at {at:.2f} s of a new run", self.goes_on("single", workdir, r, CTRL_C)
    workdir = self.copy("single")
    at = rng.uniform(1.0, 4.0)
    r = jaxtrain([*SINGLE, f"--workdir={workdir}"],
                 signals=[(at, signal.SIGTERM), (at + 0.03, signal.SIGTERM)])
    yield f"two SIGTERMs 30 ms apart at {at:.2f} s of a resume", self.goes_on(
        "single", workdir, r, (0, 75, -signal.SIGTERM))
    workdir = self.base / "cases" / "sigterm_setup"
    r = jaxtrain([*SINGLE, f"--workdir={workdir}"], signals=[(0.5, signal.SIGTERM)])
    yield "SIGTERM during start-up", self.goes_on("single", workdir, r,
                                                  (0, 75, -signal.SIGTERM))
    workdir = self.copy("search")
    at = rng.uniform(3.0, 8.0)
    r = jaxtrain([*SEARCH, f"--workdir={workdir}"], signals=[(at, signal.SIGINT)])
    yield f"Ctrl-C at {at:.2f} s of a search's resume", self.goes_on("search", workdir, r, CTRL_C)


def run_cases(seed: int, workdir: str | None, out: str | None) -> int:
  base = Path(workdir or tempfile.mkdtemp(prefix="chaos_cases_")).absolute()
  base.mkdir(parents=True, exist_ok=True)
  os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))
  cases = Cases(base, random.Random(seed))
  t0 = time.perf_counter()
  print(f"preparing stopped and reference runs in {base}", file=sys.stderr, flush=True)
  cases.prepare()
  report = {"seed": seed, "workdirs": str(base), "cases": []}
  for group in ("corruption", "concurrency", "signals"):
    for name, (held, what) in getattr(cases, group)():
      report["cases"].append({"group": group, "case": name, "held": held, "detail": what})
      print(f"{'held  ' if held else 'FAILED'} {group:12s} {name}: {what}", flush=True)
  tried, held = len(report["cases"]), sum(c["held"] for c in report["cases"])
  report.update(tried=tried, held=held, seconds=round(time.perf_counter() - t0, 1))
  print(f"{held} of {tried} cases held ({report['seconds']:.0f} s)", flush=True)
  if out:
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
  if held == tried:
    shutil.rmtree(base, ignore_errors=True)
  return 0 if held == tried else 1


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", help="where the workdirs go (default: a new temp dir)")
  p.add_argument("--out", help="also write the report as JSON here")
  args = p.parse_args(argv)
  return run_cases(args.seed, args.workdir, args.out)


if __name__ == "__main__":
  sys.exit(main())
