"""A run's directory: preparing it, its config snapshot and provenance, its final
record, and writing a trained state out as a single-run workdir.

    WORKDIR/config.json       the resolved config (resume and --mode=eval read it)
    WORKDIR/provenance.json   command line, commit, versions, devices
    WORKDIR/final.json        the result of a single run
    WORKDIR/checkpoints/      {train_state, metric_sums, guard} + the loop state

Used by single runs, the tuner, cross-validation and the exports (a tuning
run's best member, a LoRA run merged into its base).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import socket
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors, paths, records, redact
from jaxtrain.core import lora, metrics, state as state_lib, step
from jaxtrain.io import checkpoint, provenance, writers
from jaxtrain.jobs import cadence, setup
from jaxtrain.parallel import distributed
from jaxtrain.paths import Path


def prepare(workdir: str | Path, config: ml_collections.ConfigDict | None = None, *,
            allow_config_change: bool = False) -> Path:
  """Creates `workdir` if needed; raises `UserError` if it cannot be written, or (with
  `config`) if it holds another kind of run or a run with another config: before this
  run writes anything there (see `check_config`)."""
  path = paths.of(workdir, "workdir")  # The command line refused a bad URL already.
  if path.exists() and not path.is_dir():
    raise errors.UserError(f"--workdir {path} is a file, not a directory; "
                           "pass a directory path (it is created if missing)")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".jaxtrain_write_test.{os.getpid()}"  # Processes of one run share it.
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise errors.UserError(f"--workdir {path} is not writable ({e.strerror}); "
                           "choose a directory you can write to") from None
  if config is not None:
    check_config(config, path, allow_config_change=allow_config_change)
  return path


def move_aside(workdir: str | Path) -> Path | None:
  """--start_over: renames a used `workdir` to WORKDIR.old-YYYYmmdd-HHMMSS beside it (so a
  new run starts empty and nothing of the old one is lost); returns the new name, or
  None when there was nothing to move. Refused while another process writes there.
  """
  path = paths.of(workdir, "workdir")
  if not path.is_dir() or not any(path.iterdir()):
    return None
  if paths.is_url(path):  # Object storage has no folders to rename: it would copy all.
    raise errors.UserError(f"{errors.option('start_over')} moves a local workdir only; "
                           f"{path} is on cloud storage: use {errors.new_workdir()}")
  if jax.process_count() > 1:
    raise errors.UserError(f"{errors.option('start_over')} moves the workdir of a single "
                           "process only; move "
                           f"{path} aside by hand, then start every process")
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  target = path.with_name(f"{path.name}.old-{stamp}")
  with lock(path):  # Not under a running process's feet.
    try:
      path.rename(target)
    except OSError as e:
      raise errors.UserError(f"{errors.option('start_over')} cannot move {path} to {target} "
                             f"({e.strerror}); "
                             "move it aside by hand") from None
  return target


def move_aside_and_say(workdir: str | Path) -> None:
  """`start_over=True` / --start_over: the used `workdir` moved aside (`move_aside`),
  saying where to on stderr."""
  moved = move_aside(workdir)
  if moved is not None:
    print(f"moved the old contents of {workdir} to {moved}", file=sys.stderr)


def with_objects(config: ml_collections.ConfigDict, workdir: str | Path, model=None,
                 data=None, allow_config_change: bool = False,
                 start_over: bool = False) -> ml_collections.ConfigDict:
  """The config of a run whose model or data are Python objects (a notebook's), named
  so that the workdir records them: model.name = the object's reference
  ('__main__:MyMLP'), data.name = 'npz:WORKDIR/data.npz' (the arrays written there).
  The workdir is checked against that config before data.npz is written; with
  `start_over`, a used workdir is first moved aside (after the config's checks, so a
  refused run moves nothing).
  """
  if start_over:
    if model is None and data is None:  # (Objects are checked once they are named.)
      from jaxtrain.jobs import checks  # pylint: disable=g-import-not-at-top
      checks.validate(config)
    move_aside_and_say(workdir)
  if model is None and data is None:
    return config
  from jaxtrain.data import arrays  # pylint: disable=g-import-not-at-top
  from jaxtrain.models import reference  # pylint: disable=g-import-not-at-top
  config = copy.deepcopy(config)
  path = paths.absolute(workdir, "workdir") / "data.npz"
  with config.unlocked():
    if model is not None:
      config.model.name = reference.name_of(model)
    if data is not None:
      config.data.name = arrays.PREFIX + str(path)
  # Another run's workdir is refused before anything is written.
  prepare(workdir, config, allow_config_change=allow_config_change)
  if data is not None:
    arrays.save_splits(data, path)
  return config


def config_json(config: ml_collections.ConfigDict) -> str:
  """The config snapshot's text: every key, sorted, as WORKDIR/config.json holds it."""
  # Credentials never reach the record (jaxtrain/redact.py); a resume compares redacted
  # with redacted and takes the secret from its command line again.
  return json.dumps(redact.tree(json.loads(config.to_json())), indent=2, sort_keys=True) + "\n"


def kind_of(config: dict) -> str:
  """'single run', 'tuning run' or 'cross-validation run', from a config's JSON dict."""
  if config.get("tune", {}).get("strategy", "none") != "none":
    return "tuning run"
  cv = config.get("eval", {}).get("cross_validation", {})
  if cv.get("folds") or cv.get("holdout_fraction"):
    return "cross-validation run"
  return "single run"


def check_config(config: ml_collections.ConfigDict, workdir: Path, *,
                 allow_config_change: bool = False) -> None:
  """Refuses a workdir that holds another kind of run, or a run with another config
  (unless `allow_config_change`, single runs only): checked whether or not a
  checkpoint exists, so a record is never replaced by a different run's."""
  path = workdir / "config.json"
  if path.exists():
    fix = "it records the config this workdir was run with: restore it, or use a new --workdir"
    old, new = records.read_object(path, fix), redact.tree(json.loads(config.to_json()))
    config_lib.from_snapshot(old, path, fix)  # Every value of the schema's type.
    if kind_of(old) != kind_of(new):
      raise errors.UserError(
          f"{workdir} holds a {kind_of(old)} (its config.json); this is a {kind_of(new)}: "
          f"use {errors.new_workdir()}, or pass {errors.option('start_over')} to move that "
          "one aside")
    diff = config_lib.differences(old, new)
    if diff and not allow_config_change:
      raise errors.UserError(
          f"{workdir} holds a run with a different config (keys: {', '.join(diff)}); "
          f"use {errors.new_workdir()}, pass {errors.option('start_over')} to move that one "
          f"aside, or (a single run) pass {errors.option('allow_config_change')} to resume "
          "with the new values (e.g. train.num_steps raised: it trains on from its last "
          "checkpoint)")


def snapshot_config(config: ml_collections.ConfigDict, workdir: Path, *, resuming: bool,
                    allow_config_change: bool = False) -> None:
  """Writes WORKDIR/config.json (after `check_config`)."""
  del resuming  # The recorded config is checked whenever there is one.
  check_config(config, workdir, allow_config_change=allow_config_change)
  path = workdir / "config.json"
  # Rewritten on every (re)start: a crash mid-write must not leave it empty.
  if distributed.is_main():
    writers.write_text_atomic(path, config_json(config))


@contextlib.contextmanager
def lock(workdir: Path):
  """Holds WORKDIR/.jaxtrain.lock while a run writes there: a second process on the
  same workdir is refused with one line naming the holder, instead of both writing
  the same records. An OS lock (filelock: fcntl on POSIX), released by the OS when
  its process exits however it exits, so a dead process leaves no stale lock; the
  holder's pid, host and start time are in WORKDIR/.jaxtrain.lock.json. Process 0
  holds it for a multi-process run.

  A workdir on cloud storage (gs://) is not locked: an object store has no lock that
  its holder's death releases (a lock object would outlive a preempted VM and refuse
  the resume), so two runs started on one gs:// workdir at once are not refused."""
  if not distributed.is_main() or paths.is_url(workdir):
    yield
    return
  import filelock  # pylint: disable=g-import-not-at-top
  held = filelock.FileLock(str(workdir / ".jaxtrain.lock"), timeout=0)
  info = workdir / ".jaxtrain.lock.json"
  try:
    held.acquire()
  except filelock.Timeout:
    try:
      holder = json.loads(info.read_text())
      who = (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}")
    except (OSError, ValueError, KeyError):
      who = "a process that has not yet said who it is"
    raise errors.UserError(
        f"{workdir} is being written by another jaxtrain run ({who}); wait for it to "
        "finish, or use another --workdir") from None
  try:
    info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "started": datetime.datetime.now().isoformat(
                                    timespec="seconds")}) + "\n")
    yield
  finally:
    held.release()


def checkpoints(directory: Path, c: ml_collections.ConfigDict) -> checkpoint.Checkpoints:
  """The checkpoints a run writes under `directory`, as the config sets them (opened
  inside `lock`: the one writer removes what killed saves left)."""
  return checkpoint.Checkpoints(directory, keep=c.checkpoint.keep,
                                async_save=c.checkpoint.async_save, clean_up=True)


def add_model_paths(workdir: Path) -> None:
  """Puts where a run found its own model (model.name='module:Attr') on sys.path: the
  directory its command ran in and its config file's, from provenance.json; so that
  --mode=eval without --config, from anywhere, imports the module again."""
  try:
    record = json.loads((paths.of(workdir) / "provenance.json").read_text())
    cwd = paths.of(record["cwd"])
    specs = [a.split("=", 1)[1] for a in record["command_line"] if a.startswith("--config=")]
    model_dirs = [paths.of(record["model_file"]).parent] if record.get("model_file") else []
  except (OSError, ValueError, KeyError, TypeError, IndexError):
    return  # No record: the module must be importable as it is.
  for directory in [*model_dirs, cwd, *((cwd / spec.split(":")[0]).parent for spec in specs)]:
    if str(directory) not in sys.path:
      sys.path.append(str(directory))


def write_provenance(workdir: Path, model_name: str = "") -> None:
  """WORKDIR/provenance.json: what ran, where and from which code (process 0); for a
  user's model (model.name='module:Attr'), the file its module came from."""
  if distributed.is_main():
    record = provenance.collect()
    module = sys.modules.get(model_name.partition(":")[0]) if ":" in model_name else None
    if getattr(module, "__file__", None):
      record["model_file"] = str(paths.absolute(module.__file__))
    (workdir / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")


def write_json(path: Path, record: dict[str, Any]) -> None:
  """A record such as final.json, written whole or not at all (process 0)."""
  if distributed.is_main():
    writers.write_text_atomic(path, writers.json_text(record))


def bundle(state, metric_sums, guard) -> dict[str, Any]:
  """What a single run's checkpoint holds besides the loop state."""
  return {"train_state": state, "metric_sums": metric_sums, "guard": guard}


def fresh_bundle(state) -> dict[str, Any]:
  """`bundle` of `state` with empty metric sums and guard (host arrays)."""
  return bundle(state, jax.device_get(metrics.new_sums()), jax.device_get(step.new_guard()))


def export_run(directory: Path, config: ml_collections.ConfigDict, state,
               final: dict[str, Any], extra_files: dict[str, Any] | None = None) -> Path:
  """Writes `state` as a single-run workdir that `--mode=eval`, `init_from` and
  `jaxtrain.train.run` treat like any run: config.json, one checkpoint (fresh
  metric sums and loop state), the `extra_files` (name -> JSON value) and
  final.json. A rerun replaces an earlier export."""
  directory = paths.of(directory)
  directory.mkdir(parents=True, exist_ok=True)
  main = distributed.is_main()  # Every process saves the checkpoint; process 0 the files.
  if main:
    (directory / "config.json").write_text(config_json(config))
    for name, value in (extra_files or {}).items():
      (directory / name).write_text(json.dumps(value, indent=2) + "\n")
  state = jax.device_get(state)
  ckpts = checkpoint.Checkpoints(directory / "checkpoints", keep=1, async_save=False)
  for old in ckpts.all_steps():
    ckpts.manager.delete(old)
  ckpts.save(int(np.asarray(state.step)), fresh_bundle(state), cadence.new_loop_state())
  ckpts.close()
  if main:
    (directory / "final.json").write_text(writers.json_text(final))
  return directory


def merged_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of a LoRA run's model with its adapters merged into the base weights:
  `model.lora_rank = 0`, and no freezing, EMA or init_from (a plain run's)."""
  base = copy.deepcopy(config)
  with base.unlocked():
    base.model.lora_rank = 0
    base.optim.freeze, base.optim.lr_multipliers = (), ()
    base.train.ema_decay = 0.0
    base.eval.use_ema = False
    base.init_from = config_lib.base_config().init_from
  return base


def export_merged(config: ml_collections.ConfigDict, state, directory: Path,
                  final: dict[str, Any]) -> Path:
  """Writes a LoRA run with its adapters merged into the base weights, as a plain
  single-run workdir (`export_run`).

  The exported config has `model.lora_rank = 0` (and no freezing, EMA or
  init_from), so `--mode=eval --workdir=DIR` and `init_from.workdir=DIR` treat it
  like any run; its optimizer state is fresh. With `eval.use_ema` the EMA of the
  adapters (and of the leaves trained whole) is merged instead of their last values;
  final.json says which (`weights`).
  """
  use_ema = bool(config.eval.use_ema) and state.ema_params is not None
  base = merged_config(config)
  params, model_state = lora.merge(state.ema_params if use_ema else state.params,
                                   state.model_state, lora.scale_of(config.model))
  tx, _ = setup.optimizer(base)
  merged = state_lib.TrainState(
      step=state.step, params=params, model_state=model_state, opt_state=tx.init(params),
      hparams={k: v for k, v in state.hparams.items() if k != "ema_decay"}, rng=state.rng)
  merged = jax.device_get(merged)
  directory = paths.of(directory)
  record = {"status": final.get("status"), "step": int(merged.step),
            "merged_from": str(paths.absolute(directory.parent)), "lora_final": final.get("final"),
            "weights": "ema" if use_ema else "raw",
            "params_sha256": state_lib.params_sha256(merged.params),
            "num_params": state_lib.num_params(merged.params)}
  return export_run(directory, base, merged, record)
