"""Preemption of a 2-process run (JAX CPU collectives over gloo, 2 fake devices each):
a signal to ONE process stops both after the same step, both save it and exit 75,
and rerunning both commands ends bitwise equal to an uninterrupted 2-process run.
The first tests check PreemptionGuard's agreement modes in this process (cheap).

SIGTERM reaches JAX's preemption service (its handler stays installed), which tells
every process through the coordination service; Ctrl-C on one process is turned into
the same notice (jaxtrain/io/preemption.py). Every wait is bounded: a hung collective
ignores SIGTERM, so a process still running at its deadline is killed (SIGKILL).
The process test is slow (seven 2-process runs of about 15-40 s each here).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jax.experimental import multihost_utils
import numpy as np
import pytest

from jaxtrain.io import preemption
from tests.test_multihost import REPO, _env, _free_port, _records

NUM_STEPS = 600
ARGS = ["--config=configs/digits_mlp.py", f"--config.train.num_steps={NUM_STEPS}",
        "--config.model.hidden_sizes=(32,)", "--config.train.log_every_steps=10",
        "--config.train.eval_every_steps=200", "--config.checkpoint.every_steps=200"]
TIMEOUT = 240  # Seconds for one 2-process run (about 40 s here on 2 busy cores).
EXIT_PREEMPTED = 75  # jaxtrain.errors.EXIT_PREEMPTED (main.py's exit for a saved stop).


def test_one_process_stops_on_its_own_signal_as_before():
  assert preemption._agreement() == "local"  # No jax.distributed here.
  before = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # Handled at once, in this (the main) thread.
    assert guard.requested == "SIGTERM"
    assert guard.should_stop(2) and guard.stop_step == 2
  assert signal.getsignal(signal.SIGTERM) is before


def test_with_jax_preemption_service_sigterm_stays_jax_and_flags_are_gathered_at_syncs(
    monkeypatch):
  """JAX's SIGTERM handler is never replaced (here a Python stand-in for its C one); a
  process's flag -- its Ctrl-C, or JAX's notice of a SIGTERM anywhere -- is all-gathered
  at sync iterations only, and every process stops when any flag is set."""
  monkeypatch.setattr(preemption, "_agreement", lambda: "service")
  notice = [False]
  monkeypatch.setattr(preemption, "_jax_notice", lambda: notice[0])
  sent = []
  others = [0]  # The other process's flag.
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: sent.append(int(x)) or np.asarray([int(x), others[0]]))
  jax_handler = lambda signum, frame: None
  previous = signal.signal(signal.SIGTERM, jax_handler)
  try:
    with preemption.PreemptionGuard() as guard:
      assert signal.getsignal(signal.SIGTERM) is jax_handler
      assert not guard.should_stop(10) and sent == [0]
      os.kill(os.getpid(), signal.SIGINT)  # This process's Ctrl-C: a flag, not a stop.
      assert guard.requested is None
      assert not guard.should_stop(20, sync=False) and sent == [0]  # No collective.
      assert guard.should_stop(30) and guard.stop_step == 30 and sent == [0, 1]
      assert guard.requested == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) is jax_handler
    with preemption.PreemptionGuard() as guard:  # JAX's notice of a SIGTERM somewhere.
      notice[0] = True
      assert guard.should_stop(40) and guard.requested == "SIGTERM" and sent[-1] == 1
    notice[0], others[0] = False, 1
    with preemption.PreemptionGuard() as guard:  # Another process's flag alone.
      assert guard.should_stop(50) and sent[-1] == 0
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("flags, stop", [([0, 0], False), ([0, 1], True)])
def test_without_the_service_the_flags_are_all_gathered(monkeypatch, flags, stop):
  monkeypatch.setattr(preemption, "_agreement", lambda: "gather")
  sent = []
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: sent.append(int(x)) or np.asarray(flags))
  with preemption.PreemptionGuard() as guard:
    assert guard.should_stop(5) is stop and sent == [0]  # No signal here.
    assert guard.requested == ("SIGTERM" if stop else None)  # Another process's signal.


def _start(workdir: Path, logs: Path, env=None) -> list[subprocess.Popen]:
  """Both processes of a 2-process run; stdout and stderr go to files in `logs`."""
  logs.mkdir(parents=True, exist_ok=True)
  port = _free_port()
  env = {**_env(2), "PYTHONUNBUFFERED": "1", **(env or {})}
  procs = []
  for i in range(2):
    with open(logs / f"{i}.out", "w") as out, open(logs / f"{i}.err", "w") as err:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "jaxtrain.main", *ARGS, f"--workdir={workdir}",
           f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
          cwd=REPO, env=env, stdout=out, stderr=err))
  return procs


def _wait(procs, logs: Path, timeout: float = TIMEOUT) -> list[tuple[int, str]]:
  """(exit code, stderr) of each process; kills whatever is still running at the deadline."""
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      for q in procs:
        q.wait(timeout=30)
      pytest.fail(f"a process hung (killed); stderr of process 0:\n"
                  f"{(logs / '0.err').read_text()[-3000:]}")
  return [(p.returncode, (logs / f"{i}.err").read_text()) for i, p in enumerate(procs)]


def _run(workdir: Path, logs: Path) -> list[tuple[int, str]]:
  return _wait(_start(workdir, logs), logs)


def _final(workdir: Path) -> dict:
  return json.loads((workdir / "final.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
  """The final.json and records of an uninterrupted 2-process run."""
  # Prepared here first: two processes preparing the embedded dataset into one empty
  # data dir at once race (one failed, and the other waited 2 minutes for it).
  from jaxtrain.data import catalog  # pylint: disable=g-import-not-at-top
  catalog.open_split("digits", "train", data_dir)
  root = tmp_path_factory.mktemp("uninterrupted")
  for code, err in _run(root / "run", root / "logs"):
    assert code == 0, err[-3000:]
  return _final(root / "run"), _records(root / "run")


@pytest.mark.slow
@pytest.mark.parametrize("sig, target, env", [
    (signal.SIGTERM, 1, {}),
    (signal.SIGINT, 0, {}),
    # The fallback: each iteration all-gathers the processes' flags.
    (signal.SIGTERM, 1, {"JAX_ENABLE_PREEMPTION_SERVICE": "false"}),
], ids=["sigterm_to_process_1", "ctrl_c_to_process_0", "sigterm_without_jax_service"])
def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path, local_tmp_path,
                                                             uninterrupted, sig,
                                                             target, env):
  # The processes write their output to open local files; the workdir is tmp_path.
  workdir, logs = tmp_path / "run", local_tmp_path / "logs"
  procs = _start(workdir, logs, env)
  deadline = time.time() + TIMEOUT
  # Process 0 prints the progress lines (stdout): the loop has started once one appears.
  while not any(l.startswith("step ") for l in (logs / "0.out").read_text().splitlines()):
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      pytest.fail("no training step before the deadline:\n"
                  + (logs / "0.err").read_text()[-3000:])
    time.sleep(0.05)
  procs[target].send_signal(sig)
  results = _wait(procs, logs, max(deadline - time.time(), 60))
  stopped = []
  for code, err in results:
    assert code == EXIT_PREEMPTED, (code, err[-3000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("preempted at step"), err[-3000:]
    stopped.append(int(last.split()[3].rstrip(":")))
  assert stopped[0] == stopped[1], stopped  # Both saved the same step...
  assert 0 < stopped[0] < NUM_STEPS
  final = _final(workdir)
  assert (final["status"], final["step"]) == ("preempted", stopped[0])
  assert stopped[0] in final["checkpoint_steps"]  # ...and that checkpoint committed.
  assert (workdir / "checkpoints" / str(stopped[0])).is_dir()
  assert not [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]

  # Rerunning both commands finishes bitwise equal to the uninterrupted run.
  for code, err in _run(workdir, local_tmp_path / "logs_resumed"):
    assert code == 0, err[-3000:]
  want, want_records = uninterrupted
  got = _final(workdir)
  assert (got["status"], got["step"]) == ("completed", NUM_STEPS)
  assert got["params_sha256"] == want["params_sha256"]
  assert ([(r["step"], r["train/loss"]) for r in _records(workdir)]
          == [(r["step"], r["train/loss"]) for r in want_records])
