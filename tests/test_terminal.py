"""What a user's terminal shows: progress and results on stdout, nothing from the
libraries (no absl/Orbax WARNING, no TFDS download banner) and nothing else on stderr;
a tuning run says where it is at every evaluation; --quiet keeps the result line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxtrain import main

REPO = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, data_dir):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAXTRAIN_DATA_DIR": str(data_dir)}
  p = subprocess.run([sys.executable, "-m", "jaxtrain.main", *args], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout, p.stderr


def _no_library_noise(out, err):
  for stream in (out, err):
    assert "WARNING" not in stream and "Downloading" not in stream, stream[-2000:]
    assert "Traceback" not in stream
  assert err == "", err[-2000:]  # Diagnostics only; a normal run has none.


def test_a_single_run_on_a_fresh_data_dir_prints_progress_and_its_result_only(local_tmp_path):
  """The first use of an embedded dataset prepares it (in an empty data dir). Local under
  either scheme: the current folder (--workdir=run) and the data dir."""
  tmp_path = local_tmp_path
  out, err = _run([f"--config={REPO / 'configs' / 'digits_mlp.py'}", "--workdir=run",
                   "--config.train.num_steps=60", "--config.train.eval_every_steps=20",
                   "--config.train.log_every_steps=20"], tmp_path, tmp_path / "data")
  _no_library_noise(out, err)
  lines = out.splitlines()
  assert [l.split()[1] for l in lines[:-1]] == ["20/60", "40/60", "60/60"], out
  assert lines[-1].startswith("completed at step 60: ") and "final.json" in lines[-1]


def test_a_tuning_run_prints_a_progress_line_per_evaluation_and_nothing_else(
    local_tmp_path, data_dir):
  # Local under either scheme: the current folder holds --workdir=bayes, a Bayesian
  # search whose study is WORKDIR/tune/optuna.db (SQLite).
  tmp_path = local_tmp_path
  args = [f"--config={REPO / 'configs' / 'digits_bayes.py'}", "--config.train.num_steps=40",
          "--config.train.eval_every_steps=20", "--config.checkpoint.every_steps=40",
          "--config.tune.population_size=4", "--config.tune.bayes.rounds=2"]
  out, err = _run([*args, "--workdir=bayes"], tmp_path, data_dir)
  _no_library_noise(out, err)
  *progress, result = out.splitlines()
  pattern = (r"tune round (\d)/2 step (\d+)/40: best eval/accuracy=[\d.]+ \(member \d+\), "
             r"4/4 finite, [\d,]+ member-steps/s, eta \S+")
  matches = [re.fullmatch(pattern, l) for l in progress]
  assert all(matches), progress
  assert [(m[1], m[2]) for m in matches] == [("1", "20"), ("1", "40"), ("2", "20"), ("2", "40")]
  assert result.startswith("best eval/accuracy=") and "8 members" in result


def test_quiet_prints_the_result_line_only_and_verbose_adds_a_line_per_member(tmp_path,
                                                                            capsys):
  """In-process (main.main): the flags set what the run prints on stdout."""
  args = ["jaxtrain", f"--config={REPO / 'configs' / 'digits_pbt.py'}",
          "--config.train.num_steps=40", "--config.train.eval_every_steps=20",
          "--config.checkpoint.every_steps=40", "--config.tune.population_size=4"]
  assert main.main([*args, f"--workdir={tmp_path / 'quiet'}", "--quiet"]) == 0
  out = capsys.readouterr().out
  assert len(out.splitlines()) == 1 and out.startswith("best eval/accuracy="), out
  assert main.main([*args, f"--workdir={tmp_path / 'verbose'}", "--verbose"]) == 0
  lines = capsys.readouterr().out.splitlines()
  members = [l for l in lines if l.startswith("  member ")]
  assert len(members) == 2 * 4 and "optim.learning_rate=" in members[0], lines
  assert len([l for l in lines if l.startswith("tune phase 1/1 step ")]) == 2
  assert main.main([*args, f"--workdir={tmp_path / 'both'}", "--quiet", "--verbose"]) == 2
  assert "contradict" in capsys.readouterr().err
