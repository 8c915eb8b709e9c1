"""A tuning run over 2 processes (jax.distributed, gloo CPU collectives, 2 fake
devices each) against the same search in 1 process on 4 devices: the same
lineage, scores, best member, exported parameters and test score; and a search
whose process is killed (SIGKILL) mid-run resumes, after a restart of both, to
exactly the uninterrupted result.

The member axis spans the processes: each holds 2 of the 4 members; exploit /
explore copies a member's whole state across processes inside one program.
Slow: every run starts JAX processes (~20-40 s each here). Every wait is bounded;
a hang is killed (SIGKILL: jax catches SIGTERM) and fails the test.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = ["--config=configs/digits_pbt.py", "--config.model.hidden_sizes=(32,)",
        "--config.tune.population_size=4", "--config.train.num_steps=400",
        "--config.checkpoint.every_steps=100"]
HALVING = ["--config.tune.strategy=halving", "--config.tune.halving.min_steps=100",
           "--config.tune.halving.eta=2"]

pytestmark = pytest.mark.slow


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _one_process(args, workdir: Path) -> None:
  out = subprocess.run([sys.executable, "-m", "jaxtrain.main", *args,
                        "--config.mesh.num_devices=0", f"--workdir={workdir}"],
                       cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]


def _start_two(args, workdir: Path) -> list[subprocess.Popen]:
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, "-m", "jaxtrain.main", *args, f"--workdir={workdir}",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _wait(procs, timeout: float = 300) -> None:
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail("a process of the 2-process search hung")
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]


def _outcome(workdir: Path) -> dict:
  result = json.loads((workdir / "tune" / "result.json").read_text())
  return {
      "best": (result["best_member"], result["best_score"], result["best_settings"]),
      "test": result["best_test"],
      "members": [(m["id"], m["score"], m["settings"], m["eval"]) for m in result["members"]],
      "lineage": [json.loads(l) for l in
                  (workdir / "tune" / "lineage.jsonl").read_text().splitlines()],
      "exported": json.loads((workdir / "best" / "final.json").read_text())["params_sha256"],
  }


@pytest.mark.parametrize("strategy", [[], HALVING], ids=["pbt", "halving"])
def test_two_process_search_equals_one_process_search(tmp_path, strategy):
  args = BASE + strategy
  _one_process(args, tmp_path / "one")
  _wait(_start_two(args, tmp_path / "two"))
  one, two = _outcome(tmp_path / "one"), _outcome(tmp_path / "two")
  assert two == one
  if not strategy:  # PBT copied states between members of different processes.
    assert any(e["event"] == "exploit" for e in two["lineage"])


def test_killed_two_process_search_resumes_exactly(tmp_path):
  _wait(_start_two(BASE, tmp_path / "whole"))
  procs = _start_two(BASE, tmp_path / "killed")
  checkpoints = tmp_path / "killed" / "tune" / "checkpoints"
  deadline = time.monotonic() + 240
  while not (checkpoints / "200").is_dir():  # Killed after its second checkpoint.
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.2)
  procs[1].kill()  # kill -9 of one process; the other cannot go on alone.
  try:
    procs[0].wait(timeout=30)
  except subprocess.TimeoutExpired:
    procs[0].kill()
  for p in procs:
    p.communicate()
  _wait(_start_two(BASE, tmp_path / "killed"))  # A restart of both resumes.
  assert _outcome(tmp_path / "killed") == _outcome(tmp_path / "whole")


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_resumes_exactly(tmp_path):
  """A maintenance event reaches one host: every process stops at the same evaluation,
  saves it and exits 75; restarting both continues to the uninterrupted result."""
  args = BASE + ["--config.train.num_steps=1200"]  # Long enough to stop inside.
  _wait(_start_two(args, tmp_path / "whole"))
  procs = _start_two(args, tmp_path / "stopped")
  checkpoints = tmp_path / "stopped" / "tune" / "checkpoints"
  deadline = time.monotonic() + 240
  while not (checkpoints / "100").is_dir():  # Training has started: signal one process.
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail("a process did not stop after SIGTERM reached one of them")
  assert [p.returncode for p in procs] == [75, 75], [e[-2000:] for _, e in outs]
  result = json.loads((tmp_path / "stopped" / "tune" / "result.json").read_text())
  assert result["status"] == "preempted"
  saved = sorted(int(d.name) for d in checkpoints.iterdir() if d.name.isdigit())
  assert saved and saved[-1] < 1200  # Stopped before the end, at a saved evaluation.
  _wait(_start_two(args, tmp_path / "stopped"))
  assert _outcome(tmp_path / "stopped") == _outcome(tmp_path / "whole")
