"""A real 2-process run on localhost (JAX CPU collectives over gloo) against a
1-process run on the same number of devices: the same losses.

Tolerance: per-step train losses and final eval metrics within rel 1e-5 (the
global batch holds the same examples; only reduction order may differ).
Slow (two JAX processes that connect through a coordinator: ~30-40 s here).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/digits_mlp.py", "--config.train.num_steps=20",
        "--config.train.eval_every_steps=10", "--config.train.log_every_steps=5",
        "--config.checkpoint.every_steps=10", "--config.model.hidden_sizes=(64,)"]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _records(workdir: Path):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["device", "grain"])
def test_two_processes_match_one_process(tmp_path, pipeline):
  args = ARGS + [f"--config.data.pipeline={pipeline}"]
  one = subprocess.run([sys.executable, "-m", "jaxtrain.main", *args,
                        f"--workdir={tmp_path / 'one'}"], cwd=REPO, env=_env(4),
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxtrain.main", *args, f"--workdir={tmp_path / 'two'}",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  a, b = _records(tmp_path / "one"), _records(tmp_path / "two")
  assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10, 15, 20]
  np.testing.assert_allclose([r["train/loss"] for r in b], [r["train/loss"] for r in a],
                             rtol=1e-5)
  fa = json.loads((tmp_path / "one" / "final.json").read_text())
  fb = json.loads((tmp_path / "two" / "final.json").read_text())
  for key, value in fa["final"].items():
    assert fb["final"][key] == pytest.approx(value, rel=1e-5)
  # Every process took part in the checkpoint saves; logs came from process 0 only.
  assert fb["checkpoint_steps"] == [10, 20]
  assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1
