"""Credentials never reach a record: config.json, provenance.json, TensorBoard, logs,
error lines (jaxtrain/redact.py is the one rule every writer applies)."""

import json

import pytest

from jaxtrain import main, paths, redact
from tests.conftest import files_under

SECRET = "S3cr3tPW"


@pytest.mark.parametrize("given, written", [
    ("postgresql://user:S3cr3tPW@db.example.com:5432/optuna",
     "postgresql://user:***@db.example.com:5432/optuna"),
    ("mysql+pymysql://me:S3cr3tPW@host/db?charset=utf8", "mysql+pymysql://me:***@host/db?charset=utf8"),
    ("see https://u:S3cr3tPW@h/x and ftp://a:b@c", "see https://u:***@h/x and ftp://a:***@c"),
    ("https://host/path?a=1", "https://host/path?a=1"),  # No userinfo: unchanged.
    ("https://user@host/path", "https://user@host/path"),  # A user name alone is no secret.
    ("user:S3cr3tPW@host", "user:S3cr3tPW@host"),  # Not a URL (no scheme): left as is.
])
def test_url_passwords_are_masked(given, written):
  assert redact.text(given) == written


@pytest.mark.parametrize("key, is_credential", [
    ("tune.storage_password", True), ("password", True), ("x.passwd", True),
    ("wandb.api_key", True), ("hub.apikey", True), ("hub.TOKEN", True), ("auth_token", True),
    ("gcs.credentials", True), ("aws.secret_access_key", True), ("x.secret", True),
    ("data.max_tokens", False), ("model.tokenizer", False), ("optim.learning_rate", False),
    ("data.data_dir", False),
])
def test_credential_keys(key, is_credential):
  assert redact.is_credential_key(key) == is_credential
  assert (redact.value(key, SECRET) == "***") == is_credential


def test_trees_and_command_lines():
  config = {"tune": {"storage": f"postgresql://u:{SECRET}@h/db", "api_key": SECRET,
                     "space": {"optim.learning_rate": "loguniform(1e-4, 1e-1)"}},
            "seed": 3, "hub": {"token": None}}
  out = redact.tree(config)
  assert SECRET not in json.dumps(out)
  assert out["tune"]["storage"] == "postgresql://u:***@h/db" and out["tune"]["api_key"] == "***"
  assert out["seed"] == 3 and out["hub"]["token"] is None  # Nothing to hide: left as is.
  assert out["tune"]["space"] == config["tune"]["space"]
  args = ["prog", f"--config.hub.token={SECRET}", "--config.hub.api_key", SECRET,
          f"--workdir=https://u:{SECRET}@h/w", "--config.seed=3"]
  assert redact.argv(args) == ["prog", "--config.hub.token=***", "--config.hub.api_key", "***",
                               "--workdir=https://u:***@h/w", "--config.seed=3"]


def test_every_writer_masks_what_a_config_holds(tmp_path, monkeypatch):
  """No key of today's schema takes a credential in a run that trains offline (TFDS and
  Orbax read a path holding '://' as a URL), so each writer a run uses is called here
  with a config whose data_dir holds one: config.json (and the resume's comparison
  with it), TensorBoard hparams, provenance.json, WORKDIR/jaxtrain.log."""
  from jaxtrain import config as config_lib, errors
  from jaxtrain.io import provenance, writers
  from jaxtrain.jobs import workdir as workdir_lib
  c = config_lib.base_config()
  url = f"gs://reader:{SECRET}@bucket/tfds"
  c.data.data_dir = url
  workdir = tmp_path / "run"
  workdir.mkdir()
  workdir_lib.snapshot_config(c, workdir, resuming=False)
  text = (workdir / "config.json").read_text()
  assert SECRET not in text and json.loads(text)["data"]["data_dir"] == "gs://reader:***@bucket/tfds"
  workdir_lib.check_config(c, workdir)  # The same config resumes (redacted == redacted).
  c.optim.learning_rate = 0.5
  with pytest.raises(errors.UserError, match="optim.learning_rate"):
    workdir_lib.check_config(c, workdir)  # A real difference is still one.
  hparams = writers.hparams_for_tensorboard(config_lib.flatten(c))
  assert hparams["data.data_dir"] == "gs://reader:***@bucket/tfds"
  monkeypatch.setattr("sys.argv", ["jaxtrain", f"--config.data.data_dir={url}"])
  assert SECRET not in json.dumps(provenance.collect())
  log = errors.LibraryLog(workdir, redact.text)
  log.write(f"WARNING opening {url} failed")
  # WORKDIR/jaxtrain.log; a gs:// workdir's is in the temporary folder (no appends there).
  import os, pathlib, tempfile  # pylint: disable=g-import-not-at-top,multiple-imports
  assert log.path == (workdir / "jaxtrain.log" if not paths.is_url(workdir) else
                      pathlib.Path(tempfile.gettempdir()) / f"jaxtrain-{os.getpid()}.log")
  assert SECRET not in log.path.read_text() and "gs://reader:***@bucket" in log.path.read_text()


def test_an_error_line_does_not_quote_a_password(tmp_path, capsys):
  code = main.main(["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={tmp_path}/run",
                    f"--config.init_from.workdir=https://u:{SECRET}@host/run",
                    "--config.mesh.num_devices=1"])
  err = capsys.readouterr().err
  assert code == 2 and len(err.splitlines()) == 1, err
  assert SECRET not in err and "https://u:***@host/run" in err


def test_a_value_given_by_reference_is_read_at_run_time_and_recorded_as_the_reference(
    tmp_path, local_tmp_path, capsys, monkeypatch, data_dir):
  """'env:NAME' / 'file:PATH' keep a secret (here the data directory stands in for a
  storage URL) off the command line and out of every record; resume and --mode=eval
  read it again, and a missing one is one line naming the variable."""
  monkeypatch.setenv("JAXTRAIN_TEST_DATA", data_dir)
  workdir = tmp_path / "run"
  args = ["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={workdir}",
          "--config.data.data_dir=env:JAXTRAIN_TEST_DATA", "--config.train.num_steps=20",
          "--config.train.eval_every_steps=10", "--config.checkpoint.every_steps=10",
          "--config.mesh.num_devices=1"]
  assert main.main(args + ["--stop_after_steps=10"]) == 0
  assert main.main(args) == 0  # Resumes.
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["data_dir"] == "env:JAXTRAIN_TEST_DATA"
  assert main.main(["jaxtrain", f"--workdir={workdir}", "--mode=eval"]) == 0  # Read again.
  before = {p: p.read_bytes() for p in files_under(workdir)}
  capsys.readouterr()
  monkeypatch.delenv("JAXTRAIN_TEST_DATA")
  for argv in (args, ["jaxtrain", f"--workdir={workdir}", "--mode=eval"]):
    assert main.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "data.data_dir='env:JAXTRAIN_TEST_DATA'" in err[0], err
    assert "the environment variable JAXTRAIN_TEST_DATA is not set" in err[0]
  assert {p: p.read_bytes() for p in files_under(workdir)} == before
  # From a file: its text, stripped.
  (local_tmp_path / "data_dir.txt").write_text(data_dir + "\n")  # file: reads a local file.
  other = tmp_path / "other"
  assert main.main(["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={other}",
                    f"--config.data.data_dir=file:{local_tmp_path / 'data_dir.txt'}",
                    "--config.train.num_steps=10", "--config.mesh.num_devices=1"]) == 0
  assert json.loads((other / "config.json").read_text())["data"]["data_dir"].startswith("file:")
  assert main.main(["jaxtrain", "--config=configs/digits_mlp.py", f"--workdir={tmp_path / 'x'}",
                    f"--config.data.data_dir=file:{local_tmp_path / 'missing.txt'}"]) == 2
