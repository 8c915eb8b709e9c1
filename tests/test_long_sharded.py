"""Sharded runs as long as users run them, on 8 fake CPU devices, against one device.

A 20-step sharded run passed while a 200-step one deadlocked in XLA's CPU
collectives (too many executions queued; see `sharding.bounded_dispatch`). These
runs go to hundreds of steps with evaluation and checkpoints on, in child
processes that are killed (SIGKILL: jax catches SIGTERM) if they hang, so a hang
or an XLA abort (exit 134) is a failure, never a pass.

Tolerance: as tests/test_sharding.py, train losses and eval metrics within rel
1e-5 of the one-device run for a single run; a sharded population keeps the
same lineage, scores and best member, its losses within rel 1e-2 (600 steps of
PBT at learning rates up to 0.04 amplify reduction-order differences: measured
up to 1.6e-3).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], workdir: Path, devices: int, timeout: int = 300) -> None:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  try:
    out = subprocess.run([sys.executable, "-m", "jaxtrain.main", *args, f"--workdir={workdir}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{devices}-device run hung (killed after {timeout} s): {args}")
  assert out.returncode == 0, (out.returncode, out.stderr[-3000:])


def _records(workdir: Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _single_run(tmp_path: Path, steps: int) -> None:
  args = ["--config=configs/digits_mlp.py", f"--config.train.num_steps={steps}",
          "--config.train.eval_every_steps=100", "--config.checkpoint.every_steps=100",
          "--config.train.log_every_steps=50"]
  _run(args + ["--config.mesh.num_devices=0"], tmp_path / "eight", devices=8)
  _run(args, tmp_path / "one", devices=1)
  a, b = _records(tmp_path / "eight"), _records(tmp_path / "one")
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(50, steps + 1, 50))
  for key in ("train/loss", "eval/loss", "eval/accuracy"):
    got = [r[key] for r in a if key in r]
    want = [r[key] for r in b if key in r]
    assert len(got) == len(want) > 0, key
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)
  final = json.loads((tmp_path / "eight" / "final.json").read_text())
  assert final["status"] == "completed" and final["checkpoint_steps"][-1] == steps


def test_400_step_data_parallel_run_on_8_devices_matches_one_device(tmp_path):
  _single_run(tmp_path, 400)


@pytest.mark.slow
def test_1000_step_data_parallel_run_on_8_devices_matches_one_device(tmp_path):
  _single_run(tmp_path, 1000)


@pytest.mark.slow
def test_600_step_population_sharded_over_pop_matches_one_device(tmp_path):
  args = ["--config=configs/digits_pbt.py", "--config.model.hidden_sizes=(64,)",
          "--config.tune.population_size=8"]
  _run(args + ["--config.mesh.num_devices=0"], tmp_path / "eight", devices=8)
  _run(args, tmp_path / "one", devices=1)
  a, b = (json.loads((tmp_path / w / "tune" / "result.json").read_text()) for w in ("eight", "one"))
  assert (a["best_member"], a["best_score"]) == (b["best_member"], b["best_score"])
  assert [(m["id"], m["score"], m["settings"]) for m in a["members"]] == \
      [(m["id"], m["score"], m["settings"]) for m in b["members"]]
  np.testing.assert_allclose([m["eval"]["eval/loss"] for m in a["members"]],
                             [m["eval"]["eval/loss"] for m in b["members"]], rtol=1e-2)
  lineage = [(tmp_path / w / "tune" / "lineage.jsonl").read_text() for w in ("eight", "one")]
  assert [json.loads(l) for l in lineage[0].splitlines()] == \
      [json.loads(l) for l in lineage[1].splitlines()]
