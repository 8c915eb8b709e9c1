"""The training loop end to end: results, files, resume, compile count."""

import json
import re

import numpy as np
import pytest

from jaxtrain.io import writers
from jaxtrain.jobs import evaluate, train
from tests.conftest import files_under, tiny_config


def _losses(workdir):
  return [(r["step"], r.get("train/loss"), r.get("eval/accuracy"))
          for r in writers.read_metrics(workdir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  return workdir, train.run(tiny_config(), workdir)


def test_writes_the_workdir_record(uninterrupted):
  workdir, final = uninterrupted
  for name in ("config.json", "provenance.json", "metrics.jsonl", "final.json"):
    assert (workdir / name).is_file(), name
  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
  assert json.loads((workdir / "final.json").read_text()) == json.loads(json.dumps(final))
  assert final["status"] == "completed" and final["step"] == 60
  records = writers.read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(10, 61, 10))
  for r in records:
    assert {"train/loss", "train/accuracy", "steps_per_sec", "train/learning_rate"} <= set(r)
  assert {"eval/loss", "eval/accuracy"} <= set(records[1])
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 60
  prov = json.loads((workdir / "provenance.json").read_text())
  assert prov["packages"]["jax"] and prov["devices"]


def test_learns_and_matches_golden_metrics(uninterrupted):
  # Golden values for tiny_config() on CPU. If a deliberate change moves them
  # (model init, data order, optimizer), rerun this test, check that accuracy
  # is still high, and update the numbers in the same commit.
  workdir, final = uninterrupted
  first = writers.read_metrics(workdir)[0]
  assert first["train/loss"] == pytest.approx(GOLDEN_FIRST_LOSS, rel=1e-4)
  assert final["final"]["eval/accuracy"] == pytest.approx(GOLDEN_FINAL_ACCURACY, abs=1e-6)
  assert final["final"]["eval/accuracy"] > 0.9


def test_one_compile_for_the_whole_run(uninterrupted):
  _, final = uninterrupted
  assert final["train_step_compiles"] == 1


def test_keeps_latest_and_best_checkpoints(uninterrupted):
  workdir, final = uninterrupted
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == sorted(final["checkpoint_steps"])
  assert 60 in steps and final["best"]["step"] in steps
  assert len(steps) <= 2 + 1


@pytest.mark.parametrize("pipeline", ["device", pytest.param("grain", marks=pytest.mark.slow)])
def test_resume_is_bitwise_identical(tmp_path, pipeline):
  config = tiny_config(**{"data.pipeline": pipeline})
  full = train.run(config, tmp_path / "full")
  first = train.run(config, tmp_path / "resumed", stop_after_steps=30)
  assert first["status"] == "stopped" and first["step"] == 30
  second = train.run(config, tmp_path / "resumed")
  assert second["status"] == "completed" and second["step"] == 60
  assert second["params_sha256"] == full["params_sha256"]
  assert _losses(tmp_path / "resumed") == _losses(tmp_path / "full")
  assert second["final"] == full["final"]


def test_resume_after_crash_between_checkpoints(tmp_path):
  """Steps after the last checkpoint are redone; their log lines are not duplicated."""
  config = tiny_config()
  full = train.run(config, tmp_path / "full")
  train.run(config, tmp_path / "crashed", stop_after_steps=40)
  # Simulate a crash at step 50: checkpoint 50 never committed, logs got to 50.
  workdir = tmp_path / "crashed"
  train.run(config, tmp_path / "scratch", stop_after_steps=50)
  (workdir / "metrics.jsonl").write_bytes((tmp_path / "scratch" / "metrics.jsonl").read_bytes())
  assert writers.read_metrics(workdir)[-1]["step"] == 50
  resumed = train.run(config, workdir)
  assert resumed["params_sha256"] == full["params_sha256"]
  assert _losses(workdir) == _losses(tmp_path / "full")


def test_rerunning_a_finished_run_changes_nothing(uninterrupted, tmp_path):
  config = tiny_config()
  workdir = tmp_path / "again"
  first = train.run(config, workdir)
  again = train.run(config, workdir)
  assert again["params_sha256"] == first["params_sha256"]
  assert again["step"] == 60 and again["final"] == first["final"]


def test_refuses_to_resume_with_a_different_config(tmp_path):
  from jaxtrain import errors
  train.run(tiny_config(), tmp_path, stop_after_steps=20)
  with pytest.raises(errors.UserError, match="optim.learning_rate"):
    train.run(tiny_config(**{"optim.learning_rate": 0.1}), tmp_path)


def test_early_stopping(tmp_path):
  config = tiny_config(**{"train.num_steps": 400, "train.eval_every_steps": 10,
                          "early_stopping.patience": 2, "early_stopping.min_delta": 0.5,
                          "early_stopping.metric": "eval/loss"})
  final = train.run(config, tmp_path)
  # eval/loss at steps 10..40 is 1.343, 0.772, 0.449, 0.313 (see the golden
  # run): 20 improves on 10 by more than min_delta=0.5, then 30 and 40 do not
  # improve on 0.772 by 0.5, so the second miss stops the run at step 40.
  assert final["status"] == "early_stopped"
  assert final["step"] == 40
  records = writers.read_metrics(tmp_path)
  assert records[-1]["step"] == 40 and "eval/loss" in records[-1]


def test_dropout_batchnorm_label_smoothing_train(tmp_path):
  config = tiny_config(**{"model.dropout_rate": 0.1, "model.batch_norm": True,
                          "loss.label_smoothing": 0.1, "optim.name": "adamw",
                          "optim.weight_decay": 1e-4, "optim.schedule.name": "warmup_cosine",
                          "optim.schedule.warmup_steps": 10, "optim.clip_norm": 1.0,
                          "optim.accumulate_steps": 2})
  final = train.run(config, tmp_path)
  assert final["final"]["eval/accuracy"] > 0.8
  assert np.isfinite(final["final"]["eval/loss"])


GOLDEN_FIRST_LOSS = 1.8803276062011718
GOLDEN_FINAL_ACCURACY = 0.9472222222222222


def _checkpointed_params_finite(workdir):
  """Restores every checkpoint in WORKDIR, checks its parameters are finite, returns the steps."""
  import orbax.checkpoint as ocp
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  for step in steps:
    tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    for leaf in __import__("jax").tree.leaves(tree["train_state"]["params"]):
      assert np.all(np.isfinite(np.asarray(leaf))), step
  return steps


def _diverge_after_20_steps(tmp_path, **overrides):
  """Trains 20 good steps (checkpoints at 10 and 20), then resumes at a learning rate near
  float32's largest, which makes the next update overflow."""
  from jaxtrain.jobs.train import NonFiniteError
  good = {"optim.name": "sgd", "train.num_steps": 200, "checkpoint.every_steps": 10}
  train.run(tiny_config(**good), tmp_path, stop_after_steps=20)
  bad = tiny_config(**{**good, "optim.learning_rate": 1e38, **overrides})
  with pytest.raises(NonFiniteError) as e:
    train.run(bad, tmp_path, allow_config_change=True)
  return str(e.value), json.loads((tmp_path / "final.json").read_text())


def test_nan_policy_stop_keeps_the_last_good_checkpoint(tmp_path):
  message, final = _diverge_after_20_steps(tmp_path)
  # The first update at the new learning rate overflows; the loop stops at the end of that chunk.
  assert re.search(r"non-finite loss or gradient at step 21\b", message), message
  assert final["status"] == "nonfinite" and 20 < final["step"] < 200
  # The good checkpoints stay; none is written from the diverged state.
  assert _checkpointed_params_finite(tmp_path) == [10, 20]


def test_nan_policy_skip_stops_after_consecutive_skips(tmp_path):
  message, final = _diverge_after_20_steps(
      tmp_path, **{"train.nan_policy": "skip", "train.max_consecutive_skips": 3})
  assert "consecutive" in message, message
  assert final["skipped_steps"] >= 3
  steps = _checkpointed_params_finite(tmp_path)
  assert steps[:2] == [10, 20] and len(steps) >= 2


def test_sigterm_saves_a_checkpoint_and_resume_loses_nothing(tmp_path):
  import os
  import signal
  import subprocess
  import sys
  import time
  repo = __import__("pathlib").Path(__file__).resolve().parent.parent
  args = ["--config=configs/digits_mlp.py", "--config.train.num_steps=4000",
          "--config.model.hidden_sizes=(32,)", "--config.train.log_every_steps=10",
          "--config.checkpoint.every_steps=1000", "--config.train.eval_every_steps=1000"]
  cmd = [sys.executable, "-m", "jaxtrain.main", f"--workdir={tmp_path / 'run'}", *args]
  proc = subprocess.Popen(cmd, cwd=repo, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 60
  while time.time() < deadline and not (metrics.exists() and metrics.read_bytes()):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 75, err
  assert err.strip().splitlines()[-1].startswith("preempted at step")
  stopped = int(err.strip().splitlines()[-1].split()[3].rstrip(":"))
  assert 0 < stopped < 4000
  resumed = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
  assert resumed.returncode == 0, resumed.stderr
  full = subprocess.run([sys.executable, "-m", "jaxtrain.main",
                         f"--workdir={tmp_path / 'full'}", *args],
                        cwd=repo, capture_output=True, text=True, timeout=120)
  assert full.returncode == 0, full.stderr
  a = json.loads((tmp_path / "run" / "final.json").read_text())
  b = json.loads((tmp_path / "full" / "final.json").read_text())
  assert a["params_sha256"] == b["params_sha256"]
  assert _losses(tmp_path / "run") == _losses(tmp_path / "full")


def test_retention_holds_across_restarts(tmp_path):
  """Restarts keep the same checkpoints as an uninterrupted run, the best one included."""
  config = tiny_config(**{"train.num_steps": 100, "checkpoint.every_steps": 10,
                          "checkpoint.keep": 2, "train.eval_every_steps": 10,
                          "optim.learning_rate": 3e-2})
  def kept(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  full = train.run(config, tmp_path / "full")
  for stop in (30, 70, None):
    resumed = train.run(config, tmp_path / "resumed", stop_after_steps=stop)
  assert kept(tmp_path / "resumed") == kept(tmp_path / "full")
  assert len(kept(tmp_path / "full")) <= 3 and 100 in kept(tmp_path / "full")
  assert resumed["best"]["step"] == full["best"]["step"]
  assert full["best"]["step"] in kept(tmp_path / "resumed")


def test_checkpoint_of_another_model_lists_every_mismatch(tmp_path):
  from jaxtrain import errors
  train.run(tiny_config(), tmp_path, stop_after_steps=20)
  other = tiny_config(**{"model.hidden_sizes": (48, 16)})
  with pytest.raises(errors.UserError) as e:
    train.run(other, tmp_path, allow_config_change=True)
  message = str(e.value)
  assert "Dense_0/kernel is float32[64, 64] in the checkpoint, float32[64, 48] here" in message
  assert "Dense_2/kernel missing from the checkpoint" in message
  assert "\n" not in message


def test_truncated_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  from jaxtrain import errors
  train.run(tiny_config(), tmp_path, stop_after_steps=20)
  for f in files_under(tmp_path / "checkpoints" / "20" / "state"):
    if len(f.read_bytes()) > 100:
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  with pytest.raises(errors.UserError, match="cannot be read|does not match"):
    train.run(tiny_config(), tmp_path)


@pytest.fixture
def small_disk(local_tmp_path):
  """A 1.5 MB tmpfs (root only); skips where mounting is not allowed."""
  import subprocess
  mount = local_tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_stops_the_run_and_keeps_the_last_committed_checkpoint(local_tmp_path,
                                                                          small_disk):
  tmp_path = local_tmp_path  # Local on purpose: its checkpoints are a link to a small tmpfs.
  from jaxtrain.io import checkpoint as checkpoint_lib
  from jaxtrain import errors
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").symlink_to(small_disk)  # Only checkpoints hit the full disk.
  # ~0.5 MB per checkpoint (MLP 64-256-10 + Adam): the third one does not fit.
  config = tiny_config(**{"model.hidden_sizes": (256,), "train.num_steps": 200,
                          "checkpoint.every_steps": 10, "checkpoint.keep": 5,
                          "train.eval_every_steps": 1000})
  with pytest.raises(errors.WriteError, match="checkpoint save near step .* failed") as e:
    train.run(config, workdir)
  assert "\n" not in str(e.value)
  with checkpoint_lib.Checkpoints(workdir / "checkpoints", keep=5) as ckpts:
    committed = ckpts.all_steps()
  assert committed and max(committed) < 200
  assert f"step {max(committed)}" in str(e.value)
  # Free the disk: the rerun resumes from the last committed step and finishes.
  import shutil
  for p in small_disk.iterdir():
    if p.name.isdigit() and int(p.name) != max(committed):
      shutil.rmtree(p)
  config.checkpoint.keep = 1
  final = train.run(config, workdir, allow_config_change=True)
  assert final["status"] == "completed"



def test_full_disk_on_the_command_line_is_one_error_line(local_tmp_path, small_disk, capsys,
                                                        data_dir):
  tmp_path = local_tmp_path  # Local on purpose: its checkpoints are a link to a small tmpfs.
  # Orbax's failed async save logged the error and printed tracebacks from its
  # threads and asyncio callbacks: ~380 lines of stderr around the error line.
  from jaxtrain import main
  del data_dir
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").symlink_to(small_disk)
  code = main.main(["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={workdir}",
                    "--config.model.hidden_sizes=(256,)", "--config.train.num_steps=200",
                    "--config.checkpoint.every_steps=10", "--config.checkpoint.keep=5",
                    "--config.train.eval_every_steps=1000", "--config.train.log_every_steps=1000",
                    "--config.mesh.num_devices=1"])
  err = capsys.readouterr().err.splitlines()
  assert code == 4
  assert len(err) == 1 and err[0].startswith("error: checkpoint save near step"), err[:5]
  assert "No space left on device" in (workdir / "jaxtrain.log").read_text()

def test_tensorboard_failure_warns_and_never_hangs(tmp_path, capsys):
  import time
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  tb = writers.TensorBoard(blocker / "run", {"a": 1}, ["eval/accuracy"], queue_size=8)
  t0 = time.time()
  for step in range(1000):  # Far more than the queue holds: must not block.
    tb.write(step, {"loss": float(step)})
  tb.close(timeout=5)
  assert time.time() - t0 < 6
  assert tb.failed
  warning = capsys.readouterr().err.strip().splitlines()
  assert len(warning) == 1 and warning[0].startswith("warning: TensorBoard output")


def test_resume_with_allow_config_change_uses_the_new_hyperparameters(tmp_path):
  # Fine-tuning a finished run at a lower learning rate: the resumed steps must
  # use the new config's value, not the one stored in the optimizer state.
  train.run(tiny_config(), tmp_path)
  longer = tiny_config(**{"train.num_steps": 80, "optim.learning_rate": 1e-3})
  train.run(longer, tmp_path, allow_config_change=True)
  rates = {r["step"]: r["train/learning_rate"] for r in writers.read_metrics(tmp_path)
           if "train/learning_rate" in r}
  assert rates[60] == pytest.approx(1e-2) and rates[80] == pytest.approx(1e-3)


def test_step_best_is_the_best_evaluation_when_scores_tie(tmp_path):
  """Every evaluation ties (a learning rate too small to change a prediction) and
  checkpoints come every 15 steps, evaluations every 10: best is the first
  evaluation, that checkpoint is kept, and --step=best evaluates it."""
  config = tiny_config(**{"optim.learning_rate": 1e-9, "train.eval_every_steps": 10,
                          "checkpoint.every_steps": 15, "checkpoint.keep": 1})
  result = train.run(config, tmp_path)
  accuracies = {r["eval/accuracy"] for r in writers.read_metrics(tmp_path)
                if "eval/accuracy" in r}
  assert len(accuracies) == 1  # The premise: all evaluations tie.
  assert result["best"]["step"] == 10 and 10 in result["checkpoint_steps"]
  assert evaluate.run(tmp_path, step="best")["step"] == 10



def test_an_async_checkpoint_keeps_the_loop_state_of_its_step(tmp_path):
  """The loop state is written after `save` returns, while the loop goes on changing
  its dict: the checkpoint must hold the values of its own step."""
  from jaxtrain.io import checkpoint  # pylint: disable=g-import-not-at-top
  loop_state = {"step": 20, "members": [{"score": 0.5}]}
  with checkpoint.Checkpoints(tmp_path / "ckpt", keep=1, async_save=True) as ckpts:
    ckpts.save(20, {"w": np.zeros(3, np.float32)}, loop_state)
    loop_state["step"] = 30  # What the loop does right after.
    loop_state["members"][0]["score"] = 0.9
  with checkpoint.Checkpoints(tmp_path / "ckpt", keep=1) as ckpts:
    assert ckpts.restore_loop(20) == {"step": 20, "members": [{"score": 0.5}]}
