"""Many machines, one search: a Bayesian search's Optuna study in a storage that several
jaxtrain processes share (tune.storage), and the storage's password in no record.

The default-run tests drive the pieces in one process (two workdirs' handles on one
study, as two machines have); the slow ones run whole searches as separate processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxtrain import config as config_lib
from jaxtrain import errors, main, redact
from jaxtrain.tune import space as space_lib
from jaxtrain.tune import storage as storage_lib
from jaxtrain.tune import strategies
from tests.conftest import files_under

REPO = Path(__file__).resolve().parents[1]
SECRET = "S3cr3tPW-4711"
VAR = "JAXTRAIN_OPTUNA_STORAGE"


def bayes_config(storage: str, size: int = 3, metric: str = "eval/accuracy"):
  c = config_lib.base_config()
  c.tune.strategy = "bayes"
  c.tune.population_size = size
  c.tune.metric = metric
  c.tune.storage = storage
  c.tune.space.optim = dict(learning_rate="loguniform(1e-4, 1e-1)")
  c.tune.space.model = dict(hidden_sizes="choice((16,), (32,))")
  return c


def dims_of(c):
  return space_lib.parse_space(c.tune.space, config_lib.flatten(config_lib.base_config()))


def open_worker(c, root: Path, name: str, rounds_done: int = 0):
  tune_dir = root / name / "tune"
  tune_dir.mkdir(parents=True, exist_ok=True)
  return strategies.open_study(c, tune_dir, rounds_done)


def tell(study, settings, value_of):
  members = [{"trial": s["__trial__"], "last_eval": {"eval/accuracy": value_of(s)}}
             for s in settings]
  strategies.tell_round(study, members, "eval/accuracy")


def storages(local):
  """The shared study's storages: files on a (local) file system, which Optuna locks
  and rewrites in place; the workdirs are tmp_path (gs:// under the gs scheme)."""
  return {"journal": f"journal:{local / 'study.log'}",
          "sqlite": f"sqlite:///{local / 'study.db'}"}


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study_and_recover_only_their_own_trials(tmp_path, local_tmp_path,
                                                                       kind):
  import optuna
  c = bayes_config(storages(local_tmp_path)[kind])
  dims = dims_of(c)
  a, b = open_worker(c, tmp_path, "a"), open_worker(c, tmp_path, "b")
  assert a.worker != b.worker and a.worker and b.worker
  asked_a = strategies.ask_round(a, dims, c, {"rounds": 0})
  asked_b = strategies.ask_round(b, dims, c, {"rounds": 0})  # A's trials are training.
  numbers = [s["__trial__"] for s in asked_a + asked_b]
  assert sorted(numbers) == list(range(6))
  # One command, one seed: the worker's salt keeps their first rounds apart.
  assert ([s["optim.learning_rate"] for s in asked_a]
          != [s["optim.learning_rate"] for s in asked_b])
  trials = optuna.load_study(study_name="jaxtrain", storage=a.optuna._storage).trials
  assert all(t.state == optuna.trial.TrialState.RUNNING for t in trials)
  marks = {t.number: t.user_attrs[storage_lib.WORKER_ATTR] for t in trials}
  assert {marks[s["__trial__"]] for s in asked_a} == {a.worker}
  tell(a, asked_a, lambda s: s["optim.learning_rate"])
  # B dies before its round's first checkpoint and asks the round again: its own
  # RUNNING trials fail, and A's told ones (and any of A's running ones) stay as they are.
  b_again = open_worker(c, tmp_path, "b")
  assert b_again.worker == b.worker  # Kept in WORKDIR/tune/optuna_worker.json.
  asked_b2 = strategies.ask_round(b_again, dims, c, {"rounds": 0})
  asked_a2 = strategies.ask_round(a, dims, c, {"rounds": 1})  # Informed by the history.
  strategies.ask_round(b_again, dims, c, {"rounds": 0})  # Again: fails asked_b2, not asked_a2.
  study = optuna.load_study(study_name="jaxtrain", storage=a.optuna._storage)
  state = {t.number: t.state for t in study.trials}
  assert sorted(state) == list(range(len(state))) and len(state) == 15
  assert all(state[s["__trial__"]] == optuna.trial.TrialState.FAIL for s in asked_b + asked_b2)
  assert all(state[s["__trial__"]] == optuna.trial.TrialState.COMPLETE for s in asked_a)
  assert all(state[s["__trial__"]] == optuna.trial.TrialState.RUNNING for s in asked_a2)
  # A killed between its checkpoint and telling: the restart tells its finished trials only.
  done = [{"trial": s["__trial__"], "eval": {"eval/accuracy": 0.5}} for s in asked_a2]
  foreign = {"trial": study.trials[-1].number, "eval": {"eval/accuracy": 0.9}}  # B's.
  strategies.reconcile(a, {"done": done + [foreign]}, "eval/accuracy")
  study = optuna.load_study(study_name="jaxtrain", storage=a.optuna._storage)
  assert all(study.trials[s["__trial__"]].value == 0.5 for s in asked_a2)
  assert study.trials[-1].state == optuna.trial.TrialState.RUNNING
  assert study.user_attrs[storage_lib.METRIC_ATTR] == "eval/accuracy"


def test_the_per_workdir_study_is_as_before(local_tmp_path):
  """tune.storage='' keeps WORKDIR/tune/optuna.db, unmarked trials, and recovers all.
  Local on purpose: a SQLite file in a gs:// workdir is refused (test_cloud_workdir.py)."""
  tmp_path = local_tmp_path
  c = bayes_config("")
  study = open_worker(c, tmp_path, "w")
  assert study.worker is None and study.where.endswith("optuna.db")
  strategies.ask_round(study, dims_of(c), c, {"rounds": 0})
  assert not (tmp_path / "w" / "tune" / storage_lib.WORKER_FILE).exists()
  assert all(not t.user_attrs for t in study.optuna.trials)


def test_a_resumed_worker_needs_its_study_and_its_trials(tmp_path, local_tmp_path):
  journal = local_tmp_path / "study.log"
  c = bayes_config(f"journal:{journal}")
  with pytest.raises(errors.UserError, match="optuna_worker.json is missing"):
    open_worker(c, tmp_path, "a", rounds_done=1)
  a = open_worker(c, tmp_path, "a")
  strategies.ask_round(a, dims_of(c), c, {"rounds": 0})
  assert open_worker(c, tmp_path, "a", rounds_done=1).worker == a.worker
  c.tune.study_name = "another"
  with pytest.raises(errors.UserError, match="study 'another' does not exist"):
    open_worker(c, tmp_path, "a", rounds_done=1)
  open_worker(c, tmp_path, "b")  # Creates study 'another', without a trial of A.
  with pytest.raises(errors.UserError, match="holds none of this workdir's trials"):
    open_worker(c, tmp_path, "a", rounds_done=1)
  moved = local_tmp_path / "moved.log"
  journal.rename(moved)
  with pytest.raises(errors.UserError, match=r"study.log is missing.*asked 1 rounds"):
    open_worker(bayes_config(f"journal:{journal}"), tmp_path, "a", rounds_done=1)
  assert not journal.exists()  # Refused before anything was created.
  # Another direction (eval/loss is minimised), or another metric of the same direction.
  c = bayes_config(f"journal:{moved}", metric="eval/loss")
  with pytest.raises(errors.UserError, match="is a study that maximizes.*another tune.study_name"):
    open_worker(c, tmp_path, "c")
  c = bayes_config(f"journal:{moved}", metric="eval/ema_accuracy")
  with pytest.raises(errors.UserError, match="holds values of eval/accuracy"):
    open_worker(c, tmp_path, "c")


@pytest.mark.parametrize("value, message", [
    ("journal:", "names no file"),
    ("journal:{tmp}/missing/study.log", "does not exist; create it"),
    ("journal:gs://bucket/study.log", "gs:// object storage cannot hold"),
    ("sqlite:///gs://bucket/study.db", "gs:// object storage cannot hold"),
    ("redis://localhost", "SQLAlchemy does not know"),
    ("study.log", "is not a storage"),
    ("sqlite://", "in-memory"),
    ("env:JAXTRAIN_TEST_UNSET_STORAGE", "JAXTRAIN_TEST_UNSET_STORAGE is not set"),
])
def test_bad_storages_are_one_line_before_anything_is_written(local_tmp_path, value, message):
  c = bayes_config(value.format(tmp=local_tmp_path))
  with pytest.raises(errors.UserError, match=message) as e:
    strategies.check_storage(c)
  assert "\n" not in str(e.value)
  c = bayes_config(f"journal:{local_tmp_path / 'study.log'}")
  c.tune.strategy = "random"
  with pytest.raises(errors.UserError, match="read by tune.strategy='bayes' only"):
    strategies.check_storage(c)


def test_references_of_an_unread_storage_are_not_resolved():
  """The best member's exported config (tune.strategy='none') keeps the reference; its
  --mode=eval opens no storage and needs no variable."""
  c = bayes_config("env:JAXTRAIN_TEST_UNSET_STORAGE")
  with pytest.raises(errors.UserError, match="JAXTRAIN_TEST_UNSET_STORAGE"):
    config_lib.check_references(c)
  c.tune.strategy = "none"
  config_lib.check_references(c)


def test_passwords_leave_no_trace_in_messages():
  url = f"postgresql://user:{SECRET}@db.example.com/optuna?sslmode=require"
  assert SECRET not in redact.text(url) and SECRET not in redact.text(
      f"mysql://db/optuna?user=me&password={SECRET}")
  # A driver's error may quote the password in its own spelling.
  message = f"could not connect: password {SECRET!r} rejected; url {url.replace(':', '%3A')}"
  assert SECRET not in storage_lib.scrub(message, url)
  assert "p@ss/w:rd" not in storage_lib.scrub(
      "auth p@ss/w:rd failed", "postgresql://u:p%40ss%2Fw%3Ard@h/db")


def test_a_garbled_reference_is_not_quoted(monkeypatch):
  """A value without a scheme is no URL to redact: a message names the reference only."""
  monkeypatch.setenv(VAR, f"optuna:{SECRET}@db.example.com/optuna")
  with pytest.raises(errors.UserError, match="is not a storage") as e:
    strategies.check_storage(bayes_config(f"env:{VAR}"))
  assert SECRET not in str(e.value) and f"tune.storage='env:{VAR}' is not" in str(e.value)


def _scan(root: Path, *texts: str) -> list[str]:
  """The files under `root` (and the texts) holding the secret."""
  hits = [str(p) for p in files_under(root) if SECRET.encode() in p.read_bytes()]
  return hits + [t for t in texts if SECRET in t]


def test_a_storage_password_is_one_error_line_and_in_no_record(tmp_path, capsys, monkeypatch):
  """A PostgreSQL URL whose server (or driver) is not there: the run stops with exit 2
  before compiling, naming the storage without its password, and writes it nowhere."""
  monkeypatch.setenv(VAR, f"postgresql://optuna:{SECRET}@127.0.0.1:9/optuna")
  workdir = tmp_path / "run"
  args = ["jaxtrain", "--config=configs/digits_bayes.py", f"--workdir={workdir}",
          f"--config.tune.storage=env:{VAR}", "--config.tune.population_size=2",
          "--config.train.num_steps=10", "--config.train.eval_every_steps=10",
          "--config.checkpoint.every_steps=10", "--config.model.hidden_sizes=(16,)"]
  for argv in (args, args + ["--mode=compile"]):
    assert main.main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1, err
    assert f"tune.storage='env:{VAR}' (postgresql://optuna:***@127.0.0.1:9/optuna)" in err
    assert not _scan(tmp_path, out, err)
  # Given on the command line itself: redacted in the line too.
  assert main.main(args[:3] + [f"--config.tune.storage=postgresql://optuna:{SECRET}@h/db"]
                   + args[4:]) == 2
  out, err = capsys.readouterr()
  assert "postgresql://optuna:***@h/db" in err and not _scan(tmp_path, out, err)
  monkeypatch.delenv(VAR)
  assert main.main(args) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and f"the environment variable {VAR} is not set" in err[0], err


# --- Whole searches (slow: each process imports jax and compiles).


def _search_args(workdir: Path, storage: str, rounds: int, size: int) -> list[str]:
  return [sys.executable, "-m", "jaxtrain.main", "--config=configs/digits_bayes.py",
          f"--workdir={workdir}", f"--config.tune.storage={storage}",
          f"--config.tune.population_size={size}", f"--config.tune.bayes.rounds={rounds}",
          "--config.train.num_steps=20", "--config.train.eval_every_steps=10",
          "--config.checkpoint.every_steps=20", "--config.model.hidden_sizes=(16,)",
          "--config.data.test_split=", "--config.data.eval_batch_size=500"]


def _env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", VAR)}
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
  return {**env, **extra}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_processes_complete_one_study(tmp_path, local_tmp_path, kind):
  """Two jaxtrain processes, started together with their own workdirs and one storage,
  complete one study: every trial told once, numbered without gaps or repeats, and
  each told value that of the member in its workdir's result.json."""
  import optuna
  rounds, size = 2, 2
  storage = storages(local_tmp_path)[kind]
  workdirs = [tmp_path / f"host{i}" for i in range(2)]
  procs = [subprocess.Popen(_search_args(w, storage, rounds, size), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for w in workdirs]
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  c = bayes_config(storage)
  kind_, target = storage_lib.target(c)
  study = optuna.load_study(study_name="jaxtrain",
                            storage=storage_lib.open_storage(c, kind_, target))
  trials = study.trials
  assert sorted(t.number for t in trials) == list(range(2 * rounds * size))
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  by_number = {t.number: t for t in trials}
  marks = set()
  for w in workdirs:
    result = json.loads((w / "tune" / "result.json").read_text())
    assert result["num_members"] == rounds * size
    worker = storage_lib.read_worker(w / "tune")
    for m in result["members"]:
      trial = by_number[m["trial"]]
      assert trial.value == m["eval"][result["metric"]]
      assert trial.user_attrs[storage_lib.WORKER_ATTR] == worker
    marks.add(worker)
  assert len(marks) == 2


@pytest.mark.slow
def test_a_search_by_reference_resumes_and_records_only_the_reference(tmp_path, local_tmp_path):
  """tune.storage='env:NAME': the resolved value (here a journal path holding the fake
  secret) reaches no record and no output; a resume with the variable set continues the
  study, without it is one error line naming the variable; --mode=eval of the best
  member needs no variable."""
  shared = local_tmp_path / SECRET  # The journal's folder (local), named by the secret.
  shared.mkdir()
  env = _env(**{VAR: f"journal:{shared / 'study.log'}"})
  workdir = tmp_path / "run"
  args = _search_args(workdir, f"env:{VAR}", rounds=2, size=2)
  outputs = []
  for extra in (["--stop_after_steps=20"], []):  # Stopped after round 1, then resumed.
    p = subprocess.run(args + extra, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    outputs += [p.stdout, p.stderr]
  result = json.loads((workdir / "tune" / "result.json").read_text())
  assert result["status"] == "completed" and result["num_members"] == 4
  assert json.loads((workdir / "config.json").read_text())["tune"]["storage"] == f"env:{VAR}"
  bare = {k: v for k, v in env.items() if k != VAR}
  p = subprocess.run(args, cwd=REPO, env=bare, capture_output=True, text=True, timeout=600)
  assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
  assert f"the environment variable {VAR} is not set" in p.stderr
  p = subprocess.run([sys.executable, "-m", "jaxtrain.main", "--mode=eval",
                      f"--workdir={workdir / 'best'}"], cwd=REPO, env=bare,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  outputs += [p.stdout, p.stderr]
  assert not _scan(workdir, *outputs)
  import optuna
  study = optuna.load_study(study_name="jaxtrain", storage=optuna.storages.JournalStorage(
      optuna.storages.journal.JournalFileBackend(str(shared / "study.log"))))
  assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
  assert SECRET not in json.dumps([t.user_attrs for t in study.trials] + [study.user_attrs])
