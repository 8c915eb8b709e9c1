"""Workdirs on gs:// (a local GCS emulator) from the command line: a single run, its
resume, --mode=eval, TensorBoard and a tuning run, each compared with the same
command on a local workdir. The whole suite runs this way with
JAXTRAIN_TEST_WORKDIR_SCHEME=gs (tests/conftest.py)."""

import json

import numpy as np
import pytest

from jaxtrain import errors, main, paths
from jaxtrain.io import writers

RUN = ["--config=configs/digits_mlp.py", "--config.train.num_steps=40",
       "--config.model.hidden_sizes=(32,)", "--config.train.log_every_steps=10",
       "--config.train.eval_every_steps=20", "--config.checkpoint.every_steps=20",
       "--config.mesh.num_devices=1", "--quiet"]
TUNE = ["--config=configs/digits_random.py", "--config.tune.population_size=2",
        "--config.train.num_steps=20", "--config.model.hidden_sizes=(16,)",
        "--config.train.log_every_steps=10", "--config.train.eval_every_steps=10",
        "--config.checkpoint.every_steps=10", "--config.tune.halving.min_steps=10", "--quiet"]


def _cli(*args) -> int:
  return main.main(["jaxtrain", *args])


def _final(workdir) -> dict:
  return json.loads((paths.of(workdir) / "final.json").read_text())


def _scalars(workdir) -> dict:
  """TensorBoard scalars of the run's event files, read by TensorBoard's own reader
  (from a local copy: it reads local files without TensorFlow)."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  out = {}
  for event_file in sorted(paths.of(workdir).glob("events.out.tfevents.*")):
    with tempfile.TemporaryDirectory() as local:
      copy = paths.of(local) / "events.out.tfevents.copy"
      copy.write_bytes(event_file.read_bytes())
      acc = event_accumulator.EventAccumulator(str(copy))
      acc.Reload()
      for tag in acc.Tags()["scalars"]:
        out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
  return {tag: sorted(values) for tag, values in out.items()}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
  """The same run, uninterrupted, in a local workdir (the reference)."""
  workdir = tmp_path_factory.mktemp("local")
  assert _cli(*RUN, f"--workdir={workdir}") == 0
  assert _cli(f"--workdir={workdir}", "--mode=eval") == 0
  return workdir


def test_run_resume_and_eval_on_gs_equal_a_local_run(local_run, gcs_path):
  workdir = str(gcs_path)
  assert workdir.startswith("gs://")
  assert _cli(*RUN, f"--workdir={workdir}", "--stop_after_steps=20") == 0
  assert _final(workdir)["status"] == "stopped"
  assert _cli(*RUN, f"--workdir={workdir}") == 0  # Resumes from the gs:// checkpoint.
  ours, reference = _final(workdir), _final(local_run)
  assert ours["status"] == "completed" and ours["step"] == 40
  assert ours["params_sha256"] == reference["params_sha256"]  # Bitwise, as uninterrupted.
  assert ours["final"] == reference["final"]
  assert ([(r["step"], r["train/loss"]) for r in writers.read_metrics(workdir)]
          == [(r["step"], r["train/loss"]) for r in writers.read_metrics(local_run)])
  assert sorted(p.name for p in (gcs_path / "checkpoints").iterdir() if p.name.isdigit()) == \
      sorted(p.name for p in (local_run / "checkpoints").iterdir() if p.name.isdigit())
  assert _cli(f"--workdir={workdir}", "--mode=eval") == 0
  ours = json.loads((gcs_path / "eval.json").read_text())
  reference = json.loads((local_run / "eval.json").read_text())
  assert ours["step"] == 40 and ours == reference
  # TensorBoard's reader finds the same training curve in both (the gs:// run wrote
  # two event files, one per start).
  ours, reference = _scalars(workdir), _scalars(local_run)
  assert ours["train/loss"] == reference["train/loss"] and len(ours["train/loss"]) == 4


def test_a_tuning_run_on_gs_equals_a_local_one(tmp_path_factory, gcs_path):
  local = tmp_path_factory.mktemp("tune_local")
  assert _cli(*TUNE, f"--workdir={local}") == 0
  assert _cli(*TUNE, f"--workdir={gcs_path}") == 0
  ours = json.loads((gcs_path / "tune" / "result.json").read_text())
  reference = json.loads((local / "tune" / "result.json").read_text())
  for key in ("best_member", "best_score", "best_settings", "member_steps"):
    assert ours[key] == reference[key], key
  assert ((gcs_path / "tune" / "lineage.jsonl").read_text()
          == (local / "tune" / "lineage.jsonl").read_text())
  assert _final(gcs_path / "best")["params_sha256"] == _final(local / "best")["params_sha256"]


def test_records_on_gs_are_whole_objects_and_append_by_rewriting(gcs_path):
  path = gcs_path / "log.jsonl"
  paths.write_text_atomic(path, "old\n")
  log = paths.LineLog(path, kept=["a"])  # Keeps "a", drops "old", at the first add.
  log.add("b")
  assert path.read_text() == "a\nb\n"
  # Within UPLOAD_EVERY_SEC of that upload, lines wait for sync() (each upload rewrites the
  # object whole: uploading every line would be quadratic in bytes and block the loop).
  log.add("c")
  assert path.read_text() == "a\nb\n"
  log.sync()
  assert path.read_text() == "a\nb\nc\n"
  log.add("d")
  log.close()
  assert path.read_text() == "a\nb\nc\nd\n"
  assert not (gcs_path / "log.jsonl.tmp").exists()  # No rename on object storage.
  np_path = gcs_path / "arrays.npz"
  from jaxtrain.data import arrays  # pylint: disable=g-import-not-at-top
  x, y = np.zeros((4, 3), np.float32), np.arange(4, dtype=np.int32)
  name = arrays.save_splits({"train": (x, y)}, np_path)
  assert name == arrays.PREFIX + str(np_path)
  with np_path.open("rb") as f, np.load(f) as saved:
    np.testing.assert_array_equal(saved["x_train"], x)


@pytest.mark.parametrize("url, words", [
    ("s3://bucket/run", ["s3:// is not supported", "Orbax"]),
    ("memory://run", ["memory:// is not supported"]),
])
def test_unsupported_url_schemes_are_refused_in_one_line(url, words):
  with pytest.raises(errors.UserError) as e:
    paths.of(url, "workdir")
  assert str(e.value).startswith(f"workdir={url}: ") and "\n" not in str(e.value)
  for word in words:
    assert word in str(e.value)


def test_a_bayes_search_with_its_study_in_a_gs_workdir_is_refused(gcs_path, capsys):
  """SQLite (WORKDIR/tune/optuna.db) cannot live on object storage: one line, no files."""
  code = _cli("--config=configs/digits_bayes.py", f"--workdir={gcs_path}")
  err = capsys.readouterr().err.strip()
  assert code == errors.EXIT_USER_ERROR and "\n" not in err, err
  assert "tune.strategy='bayes'" in err and "set tune.storage" in err
  assert not (gcs_path / "config.json").exists()


def test_a_config_url_and_start_over_on_gs_are_refused_in_one_line(gcs_path, capsys):
  """A config file is imported from a local path; --start_over would rename a folder,
  which a bucket has not: each is one line, and nothing is written or moved."""
  code = _cli(f"--config={gcs_path}/my_config.py", f"--workdir={gcs_path}/run")
  err = capsys.readouterr().err.strip()
  assert code == errors.EXIT_USER_ERROR and "\n" not in err, err
  assert f"--config={gcs_path}/my_config.py: " in err and "copy it to a local file" in err
  workdir = gcs_path / "run"
  assert _cli(*RUN, "--config.train.num_steps=10", f"--workdir={workdir}") == 0
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  capsys.readouterr()
  code = _cli(*RUN, f"--workdir={workdir}", "--start_over")
  err = capsys.readouterr().err.strip()
  assert code == errors.EXIT_USER_ERROR and "\n" not in err, err
  assert "--start_over moves a local workdir only" in err and str(workdir) in err
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before
