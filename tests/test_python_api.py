"""The Python API speaks Python: errors name keywords, not flags; a finished run is
extended by an explicit call; Ctrl-C (a notebook's Stop button) raises in the caller
after the checkpoint is saved, and calling again resumes to the uninterrupted result."""

import json
import os
import queue
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import tiny_config
from jaxtrain import errors, main
from jaxtrain.jobs import train

REPO = Path(__file__).resolve().parents[1]


def test_a_changed_config_is_refused_naming_the_keyword_from_python_and_the_flag_from_the_cli(
    tmp_path, capsys):
  train.run(tiny_config(), tmp_path)
  with pytest.raises(errors.UserError) as e:
    train.run(tiny_config(**{"optim.learning_rate": 3e-3}), tmp_path)
  message = str(e.value)
  assert "allow_config_change=True" in message and "start_over=True" in message
  assert "--" not in message and "a new workdir" in message
  # The same refusal on the command line names the flags.
  assert main.main(["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert "--allow_config_change" in err and "--start_over" in err and "a new --workdir" in err


def test_a_finished_run_trains_on_to_a_raised_num_steps_and_equals_the_longer_run(tmp_path):
  """allow_config_change=True with train.num_steps raised: the explicit way to extend
  a finished run. With a constant learning rate it equals the run trained to the end."""
  first = train.run(tiny_config(), tmp_path / "extended")
  assert first["status"] == "completed" and first["step"] == 60
  extended = train.run(tiny_config(**{"train.num_steps": 100}), tmp_path / "extended",
                       allow_config_change=True)
  whole = train.run(tiny_config(**{"train.num_steps": 100}), tmp_path / "whole")
  assert extended["step"] == 100 and extended["params_sha256"] == whole["params_sha256"]


def test_an_unsupported_storage_workdir_is_refused_before_a_local_folder_is_made(
    local_tmp_path, monkeypatch):
  """s3:// (Orbax writes arrays to gs:// or local paths only) must not become ./s3:/b/run."""
  tmp_path = local_tmp_path  # The current folder: local under either scheme.
  monkeypatch.chdir(tmp_path)
  for call in (lambda: train.run(tiny_config(), "s3://bucket/run"),
               lambda: __import__("jaxtrain").load("az://bucket/run")):
    with pytest.raises(errors.UserError, match=r"workdir=.*://bucket/run: (s3|az):// is not "
                       "supported"):
      call()
  assert list(tmp_path.iterdir()) == []


def test_start_over_moves_the_used_workdir_aside_from_python(local_tmp_path, capsys):
  # Local on purpose: a gs:// workdir cannot be renamed, and start_over is refused there
  # (test_cloud_workdir.py).
  tmp_path = local_tmp_path
  train.run(tiny_config(), tmp_path / "run")
  other = tiny_config(**{"optim.learning_rate": 3e-3})
  result = train.run(other, tmp_path / "run", start_over=True)
  assert result["status"] == "completed"
  moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
  assert len(moved) == 1 and (moved[0] / "final.json").exists()
  assert f"moved the old contents of {tmp_path / 'run'} to {moved[0]}" in capsys.readouterr().err


_CELL = """
import jaxtrain, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
config = tiny_config(**{{"train.num_steps": 3000, "train.log_every_steps": 100,
                        "train.eval_every_steps": 1000, "checkpoint.every_steps": 1000}})
result = jaxtrain.train.run(config, {workdir!r})
print("RESULT", result["status"], result["step"], result["params_sha256"])
"""


def _execute(kc, code, on_output=None, timeout=300):
  """Runs `code` in the kernel; returns (reply content, stdout text)."""
  msg_id = kc.execute(code)
  out, deadline = [], time.time() + timeout
  while True:
    try:
      msg = kc.get_iopub_msg(timeout=max(deadline - time.time(), 0.1))
    except queue.Empty:
      pytest.fail(f"the cell did not finish within {timeout} s:\n{''.join(out)[-2000:]}")
    if msg["parent_header"].get("msg_id") != msg_id:
      continue
    if msg["msg_type"] == "stream":
      out.append(msg["content"]["text"])
      if on_output is not None:
        on_output("".join(out))
    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
      break
  return kc.get_shell_msg(timeout=30)["content"], "".join(out)


@pytest.mark.slow
def test_an_interrupt_in_a_notebook_kernel_raises_after_saving_and_a_rerun_resumes(tmp_path,
                                                                                   data_dir):
  jupyter_client = pytest.importorskip("jupyter_client")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
         "JAXTRAIN_DATA_DIR": data_dir}
  km = jupyter_client.KernelManager(kernel_name="python3")
  km.start_kernel(env=env, cwd=str(tmp_path))
  kc = km.client()
  kc.start_channels()
  try:
    kc.wait_for_ready(timeout=120)
    cell = _CELL.format(tests=str(REPO / "tests"), workdir=str(tmp_path / "run"))
    sent = []

    def interrupt_once_training(text):  # The first progress line: the loop runs.
      if not sent and "step 100/3000" in text:
        km.interrupt_kernel()
        sent.append(time.time())

    reply, out = _execute(kc, cell, interrupt_once_training)
    assert sent, out
    assert reply["status"] == "error" and reply["ename"] == "Interrupted", reply
    assert "checkpoint saved in" in reply["evalue"] and "RESULT" not in out
    steps = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
             if p.name.isdigit()]
    assert steps and max(steps) < 3000  # Stopped mid-run, with a checkpoint.
    reply, out = _execute(kc, cell)  # "Run all" again: resumes.
    assert reply["status"] == "ok", out
    resumed = out.split("RESULT ")[1].split()
    reply, out = _execute(kc, cell.replace(str(tmp_path / "run"), str(tmp_path / "whole")))
    whole = out.split("RESULT ")[1].split()
    assert resumed[:2] == ["completed", "3000"] and resumed == whole
  finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
