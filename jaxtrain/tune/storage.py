"""Where a Bayesian search's Optuna study lives: `tune.storage` and `tune.study_name`.

"" (the default) keeps the study in WORKDIR/tune/optuna.db, this run's alone. A storage
that several jaxtrain processes share (one per machine, each with its own --workdir)
makes them one search: each asks its rounds from, and tells them to, the same study,
whose history (every process's told trials) informs every process's sampler.

- "journal:PATH": an Optuna journal file (`JournalStorage` over `JournalFileBackend`),
  for a file system every machine mounts (its lock works on NFS, where SQLite's does not);
- an RDB URL: "sqlite:///PATH", "postgresql://USER:PASSWORD@HOST/DB", "mysql://...";
- either given as "env:NAME" or "file:PATH" (`redact.resolve`), so that the password is
  on no command line and in no record: it is resolved here, where the storage is
  opened, and never leaves this module but to the database driver. Every message that
  names the storage names it as given, with any URL password masked.

A shared study's trials are marked with the workdir that asked them (the trial user
attribute WORKER_ATTR, its value kept in WORKDIR/tune/optuna_worker.json): a process
recovers only its own trials, never another process's that are training.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
import uuid
import zlib
from pathlib import Path

from jaxtrain import errors, paths, records, redact
from jaxtrain.io import writers

WORKER_ATTR = "jaxtrain_worker"  # Trial user attribute: the workdir that asked the trial.
METRIC_ATTR = "jaxtrain_metric"  # Study user attribute: the metric its values are of.
WORKER_FILE = "optuna_worker.json"  # In WORKDIR/tune: this workdir's WORKER_ATTR value.
JOURNAL = "journal:"
_FORMS = ("give an RDB URL (sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB, mysql://...) "
          "or journal:PATH (an Optuna journal file on a shared file system), or a reference "
          "to one (env:NAME, file:PATH)")
_OPEN_TRIES = 3  # Processes starting together race to create a new database's tables.


def shown(c) -> str:
  """tune.storage as messages name it: a reference as given, a URL with its password
  masked (the resolved value itself, also masked, follows a reference)."""
  given = c.tune.storage
  name = f"tune.storage={redact.text(given)!r}"
  if given.startswith(("env:", "file:")) and not given.startswith("file://"):
    try:
      value = redact.resolve("tune.storage", given)
    except errors.UserError:
      return name
    # Only a value that parses as a storage is quoted: a garbled URL may hold its
    # password where neither redact.text nor the parser finds it.
    if value.startswith(JOURNAL) or _parsed(value) is not None:
      return f"{name} ({scrub(value, value)})"
  return name


def scrub(message: str, url: str) -> str:
  """`message` without the secrets of the storage `url` in any of their spellings (a
  driver's error may quote the URL in a form `redact.text` does not recognise): its
  password, and the values of credential-named query parameters (`?password=...`)."""
  message = redact.text(message)
  for secret in _secrets(url):
    for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
      message = message.replace(form, redact.MASK)
  return message


def _parsed(url: str):
  """`url` as SQLAlchemy parses it (None: not a database URL)."""
  if url.startswith(JOURNAL) or "://" not in url:
    return None
  try:
    import sqlalchemy  # pylint: disable=g-import-not-at-top
    return sqlalchemy.engine.make_url(url)
  except Exception:  # pylint: disable=broad-except
    return None


def _secrets(url: str) -> list[str]:
  parsed = _parsed(url)
  if parsed is None:
    return []  # Not a URL: `target` refuses it without quoting the value.
  out = [parsed.password] if parsed.password else []
  for key, values in parsed.query.items():
    if redact.is_credential_key(key):
      out.extend([values] if isinstance(values, str) else values)
  return [s for s in out if s]


def target(c) -> tuple[str, str]:
  """("journal", PATH) or ("rdb", URL) of tune.storage, its reference resolved; checks
  its form, and that its directory (journal, SQLite) or driver (a server) is there.
  Nothing is opened or created.

  Raises:
    UserError: a reference that does not resolve, a value that is no storage, a
      directory that does not exist, a database driver that is not installed.
  """
  value = redact.resolve("tune.storage", c.tune.storage).strip()
  where = shown(c)
  if value.startswith(JOURNAL):
    if not value[len(JOURNAL):].strip():
      raise errors.UserError(f"{where} names no file; give journal:PATH, e.g. "
                             "journal:/shared/optuna/digits_bayes.log")
    return "journal", str(_check_directory(where, value[len(JOURNAL):]))
  try:
    import sqlalchemy  # pylint: disable=g-import-not-at-top
    url = sqlalchemy.engine.make_url(value)
  except Exception:  # pylint: disable=broad-except
    raise errors.UserError(f"{where} is not a storage: {_FORMS}") from None
  try:
    dialect = url.get_dialect()
  except Exception:  # pylint: disable=broad-except
    raise errors.UserError(f"{where} names a database SQLAlchemy does not know "
                           f"({url.drivername!r}): {_FORMS}") from None
  try:
    # SQLAlchemy 2 names it import_dbapi; 1.4 (which Optuna still allows) dbapi.
    (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
  except ImportError as e:
    raise errors.UserError(
        f"{where} needs the Python package {e.name or 'of its database driver'}, which is "
        f"not installed: pip install it, or name a driver you have in the URL (e.g. "
        "postgresql+psycopg2://, mysql+pymysql://), or use a journal:PATH storage") from None
  if url.get_backend_name() == "sqlite":
    if url.database in (None, "", ":memory:"):
      raise errors.UserError(f"{where} is an in-memory database, which no other process "
                             "(and no resumed run) sees; give sqlite:///PATH")
    _check_directory(where, url.database)
  return "rdb", value


def _check_directory(where: str, text: str) -> Path:
  """The file `text` names (a journal, a SQLite database) as a local path, once its
  folder is known to exist."""
  # A URL read as a path was a local folder named 'gs:' ("the directory gs:/BUCKET does
  # not exist"): say what is wrong with it instead.
  if paths.is_url(text):
    raise errors.UserError(
        f"{where}: a journal file or a SQLite database is a file that Optuna locks and "
        f"rewrites in place, which {paths.scheme(text)}:// object storage cannot hold; "
        "give a path on a file system every machine of the search mounts, or a database "
        "server URL (postgresql://..., mysql://...)")
  path = Path(text).expanduser()
  if path.is_dir():
    raise errors.UserError(f"{where}: {path} is a directory; name a file in it")
  if not path.parent.is_dir():
    raise errors.UserError(
        f"{where}: the directory {path.parent} does not exist; create it (on a file system "
        "every machine of the search mounts)")
  return path


def check(c) -> None:
  """tune.storage and tune.study_name, before anything is written or compiled.

  Raises:
    UserError: see `target`; also an empty study name, or a storage given to a
      strategy other than 'bayes' (they search within one process).
  """
  t = c.tune
  if not t.study_name.strip():
    raise errors.UserError("tune.study_name='' must name the Optuna study, e.g. 'jaxtrain'")
  if not t.storage:
    return
  if t.strategy != "bayes":
    raise errors.UserError(
        f"tune.storage={redact.text(t.storage)!r} is read by tune.strategy='bayes' only "
        f"({t.strategy!r} searches within one process); set tune.storage='' or "
        "tune.strategy='bayes'")
  target(c)


def check_workdir(c, workdir) -> None:
  """Refuses a Bayesian search whose study would be WORKDIR/tune/optuna.db on cloud
  storage (gs://): SQLite needs a local file; before anything is written there."""
  if c.tune.strategy == "bayes" and not c.tune.storage and paths.is_url(workdir):
    raise errors.UserError(
        f"tune.strategy='bayes' keeps its Optuna study in WORKDIR/tune/optuna.db (SQLite), "
        f"which cannot live on {workdir}; set tune.storage to a database URL (e.g. "
        "postgresql://...) or journal:PATH on a local or shared file system")


def file_of(kind: str, where: str) -> Path | None:
  """The file a journal or SQLite storage lives in (None: a database server)."""
  if kind == "journal":
    return Path(where)
  import sqlalchemy  # pylint: disable=g-import-not-at-top
  url = sqlalchemy.engine.make_url(where)
  return Path(url.database).expanduser() if url.get_backend_name() == "sqlite" else None


def open_storage(c, kind: str, where: str):
  """The Optuna storage of tune.storage (`target`'s kind and value), opened.

  Raises:
    UserError: it cannot be opened (the message names it without its password).
  """
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.storages import journal  # pylint: disable=g-import-not-at-top
  for attempt in range(_OPEN_TRIES):
    try:
      if kind == "journal":
        return optuna.storages.JournalStorage(journal.JournalFileBackend(where))
      # A server's idle connection may be closed while a round trains: test it first.
      kwargs = {} if where.startswith("sqlite") else {"pool_pre_ping": True}
      return optuna.storages.RDBStorage(where, engine_kwargs=kwargs)
    except Exception as e:  # pylint: disable=broad-except
      # SQLAlchemy, the drivers and Optuna raise many types; a new database's tables
      # created by two processes at once fail one of them once: try again.
      if attempt + 1 < _OPEN_TRIES:
        time.sleep(0.5 * (attempt + 1))
        continue
      raise errors.UserError(scrub(
          f"{shown(c)} cannot be opened as an Optuna storage ({type(e).__name__}: "
          f"{' '.join(str(e).split())[:200]}); check the URL, that the database server is "
          "reachable from this machine and that its user may create tables", where)) from None
  raise AssertionError("unreachable")


def read_worker(tune_dir: Path) -> str | None:
  """This workdir's mark on the trials it asks in a shared study (None: none yet)."""
  path = tune_dir / WORKER_FILE
  if not path.exists():
    return None
  record = records.read_object(path, "it names this workdir's trials in the shared Optuna "
                                     "study: restore it, or start the search over in a new "
                                     "--workdir")
  worker = record.get("worker")
  if not isinstance(worker, str) or not worker:
    raise errors.UserError(f"{path} holds no worker name; restore it, or start the search "
                           "over in a new --workdir")
  return worker


def new_worker(tune_dir: Path) -> str:
  """A new mark for this workdir's trials, written to WORKDIR/tune/optuna_worker.json.

  Host and workdir say whose trials they are; the random suffix keeps two machines
  apart that have the same host name and workdir path (containers). Kept in a file,
  not derived again: a restarted run (on another host, perhaps) must recognise the
  trials it asked before its first checkpoint.
  """
  worker = redact.text(f"{socket.gethostname()}:{paths.absolute(tune_dir.parent)}:"
                       f"{uuid.uuid4().hex[:8]}")
  writers.write_text_atomic(tune_dir / WORKER_FILE, json.dumps({"worker": worker}) + "\n")
  return worker


def salt(worker: str | None) -> tuple[int, ...]:
  """Counters that make a worker's sampler seeds its own: processes of one search run the
  same command with the same seed, and would otherwise ask the same settings."""
  return () if worker is None else (zlib.crc32(worker.encode("utf-8")),)
