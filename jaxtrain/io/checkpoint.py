"""Orbax checkpoints of {train state, data iterator, loop state}.

One `CheckpointManager` keeps the `keep` latest steps plus the best one by a
finite score (NaN and Inf never count as best). Saves are asynchronous; the
loop is blocked only while device arrays are copied out. Orbax writes each
step into a temporary directory and renames it when complete, so a step that
is listed is a committed one.

Restores go only into the structure the current config expects (arrays via
tensorstore, the loop state as JSON; nothing is unpickled), and a checkpoint
that does not match is refused with every mismatching path listed.

Every save also writes a CRC-32 of each array's bytes (item `checksums`); every
restore recomputes them and refuses a step whose arrays changed on disk, so
damaged weights are never trained on or evaluated. Orbax and tensorstore check
their own files' framing, not the array values: flipped bytes inside a chunk
restored silently before.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import math
import os
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxtrain import errors, paths, records
from jaxtrain.paths import Path


class CheckpointError(errors.WriteError):
  """A checkpoint could not be written; the last committed one is intact."""


class Checkpoints:
  """Saves and restores one run's checkpoints under `directory`."""

  def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True,
               clean_up: bool = False):
    """`clean_up`: the caller is the workdir's one writer (it holds its lock), so the
    temporary directories of saves that a killed process left are removed now (a
    second SIGTERM during the save of the first left one that nothing removed)."""
    import grain  # pylint: disable=g-import-not-at-top
    self.directory = paths.absolute(directory)  # Orbax wants absolute paths (or gs://).
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["score"], reverse=False, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes Orbax write each save's metrics into its step directory
    # (the preservation policy alone keeps them only in memory), so the best
    # step is still known, and kept, after a restart.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=lambda m: m["score"], best_mode="max",
        enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=clean_up)
    # Handlers are named so that metadata (shapes, dtypes) can be read before
    # a restore, to compare against what this run expects.
    handlers = {"state": ocp.StandardCheckpointHandler(), "loop": ocp.JsonCheckpointHandler(),
                CHECKSUMS: ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self.async_save = async_save
    self._closed = False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, loop_state: dict[str, Any], data_iterator=None,
           score: float | None = None, force: bool = True) -> None:
    """Starts an async save; `score` (higher is better) ranks it for 'best'.

    Raises:
      CheckpointError: this save, or the previous asynchronous one, failed.
    """
    import grain  # pylint: disable=g-import-not-at-top
    # A copy of the loop state as it is now: the JSON is written after `save` returns,
    # while the loop goes on changing its dict (a checkpoint held a later step's loop
    # state next to this step's arrays, and the resume trained from the mismatch).
    loop_state = copy.deepcopy(loop_state)
    items = {"state": ocp.args.StandardSave(state), "loop": ocp.args.JsonSave(loop_state),
             CHECKSUMS: ocp.args.JsonSave(checksums(state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = {"score": score} if score is not None and math.isfinite(score) else None
    try:
      # Muted: Orbax warns at every save that carries no score (only new bests carry one).
      with errors.absl_warnings_muted():
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)
    except Exception as e:  # Orbax re-raises a failed async save at the next call.
      raise self._save_error(step, e) from None

  def _save_error(self, step: int, e: Exception) -> CheckpointError:
    committed = self.manager.latest_step()
    text = " ".join(str(e).split())[:300]
    return CheckpointError(
        f"checkpoint save near step {step} in {self.directory} failed "
        f"({type(e).__name__}: {text}); the last committed checkpoint "
        f"({'step ' + str(committed) if committed is not None else 'none'}) is intact and is "
        "what a rerun resumes from; free disk space or fix permissions, then rerun")

  def check_structure(self, step: int, target_state) -> None:
    """Raises `UserError` listing every path where checkpoint `step` differs from
    `target_state` (missing, extra, shape or dtype); nothing is restored."""
    try:
      metadata = self.manager.item_metadata(step)["state"]
    except Exception as e:  # Unreadable metadata: truncated or corrupted files.
      raise self._corrupt_error(step, e) from None
    if metadata is None:
      raise self._corrupt_error(step, ValueError("no state metadata"))
    saved = _by_path(metadata, lambda m: (tuple(m.shape), np.dtype(m.dtype).name))
    wanted = _by_path(target_state, lambda x: (tuple(np.shape(x)), np.dtype(x.dtype).name))
    problems = []
    for path in sorted(set(saved) | set(wanted)):
      if path not in saved:
        problems.append(f"{path} missing from the checkpoint")
      elif path not in wanted:
        problems.append(f"{path} in the checkpoint is not in this model")
      elif saved[path] != wanted[path]:
        (s_shape, s_dtype), (w_shape, w_dtype) = saved[path], wanted[path]
        problems.append(f"{path} is {s_dtype}{list(s_shape)} in the checkpoint, "
                        f"{w_dtype}{list(w_shape)} here")
    if problems:
      raise errors.UserError(
          f"checkpoint {self.directory / str(step)} does not match this config "
          f"({len(problems)} problems: {'; '.join(problems)}); use a new --workdir, or the "
          "config it was saved with")

  def _corrupt_error(self, step: int, e: Exception | None = None,
                     reason: str = "") -> errors.UserError:
    if e is not None:
      reason = (f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                "it may be truncated or corrupted")
    others = [s for s in self.all_steps() if s != step]
    return errors.UserError(
        f"checkpoint {self.directory / str(step)} {reason}: move that directory away, and a "
        "rerun resumes "
        f"from {'step ' + str(max(others)) if others else 'scratch'}"
        f"{' (or evaluate it with --step=' + str(max(others)) + ')' if others else ''}")

  def restore(self, step: int, target_state, data_iterator=None,
              loop_like: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores into the structure of `target_state` (and `data_iterator`, in place).

    `loop_like`: a loop state of the kind saved (e.g. a fresh one); the restored one
    must have its keys, with values of the same JSON types.

    Raises:
      UserError: the checkpoint does not match the current model/optimizer, or
        its files cannot be read, or its arrays or loop state are damaged.
    """
    import grain  # pylint: disable=g-import-not-at-top
    self.check_structure(step, target_state)
    items = {"state": ocp.args.StandardRestore(target_state), "loop": ocp.args.JsonRestore()}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises several types for unreadable files.
      raise self._corrupt_error(step, e) from None
    damaged = verify(self.directory / str(step), restored["state"])
    if damaged:
      raise self._corrupt_error(step, reason=damaged_text(damaged))
    return restored["state"], self._checked_loop(step, restored["loop"], loop_like)

  def restore_loop(self, step: int, loop_like: dict[str, Any] | None = None) -> dict[str, Any]:
    """Only the loop state (JSON) of a checkpoint (checked against `loop_like`)."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
    except Exception as e:
      raise self._corrupt_error(step, e) from None
    return self._checked_loop(step, restored["loop"], loop_like)

  def _checked_loop(self, step: int, loop, loop_like) -> dict[str, Any]:
    loop = dict(loop) if isinstance(loop, dict) else {}
    problems = records.check_like(loop, loop_like or {})
    if problems:
      raise self._corrupt_error(step, reason=(
          f"has a damaged loop state (loop/metadata: {'; '.join(problems[:5])})"))
    return loop

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(self.latest_step() or 0, e) from None

  def close(self) -> None:
    """Waits for the pending save and closes the manager (again: nothing happens)."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      self.manager.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    # Every exit closes the manager: one left open with a save in flight (after an
    # exception in a notebook, say) kept later managers' async saves from committing.
    if exc_type is None:
      self.close()
      return
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass  # The original exception is the one to report.


CHECKSUMS = "checksums"


def _crc(array) -> str | None:
  """CRC-32 of an array's bytes, with dtype and shape; None for an array this process
  cannot read whole (sharded across hosts: those are left to tensorstore)."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    return None
  host = np.ascontiguousarray(np.asarray(array))
  # zlib's CRC-32 (C, releases the GIL) over the raw bytes: a checksum, not a
  # cryptographic hash, is what catches damaged files, and it is the fastest one
  # the standard library has (1.3 GB/s here; sha256 0.9 GB/s).
  crc = zlib.crc32(host.reshape(-1).view(np.uint8))
  return f"{host.dtype.name}{list(host.shape)}:{crc:08x}"


def _crcs(tree) -> dict[str, str | None]:
  # One array per thread: zlib releases the GIL, so the checksums of a state take
  # about 1/cores of the time of one loop (this runs in the blocking part of a save).
  leaves = _by_path(tree, lambda leaf: leaf)
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return dict(zip(leaves, pool.map(_crc, leaves.values())))


def checksums(tree) -> dict[str, str]:
  """{'train_state/params/Dense_0/kernel': 'float32[64, 256]:1a2b3c4d', ...}."""
  return {path: crc for path, crc in _crcs(tree).items() if crc is not None}


def saved_checksums(step_dir: Path) -> dict[str, str] | None:
  """The checksums written with a step, or None for a step saved before they were."""
  path = paths.of(step_dir) / CHECKSUMS / "metadata"
  if not path.exists():
    return None
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    return {"": f"unreadable ({type(e).__name__})"}
  return saved if isinstance(saved, dict) else {"": "not a JSON object"}


def verify(step_dir: Path, restored, prefix: str = "") -> list[str]:
  """Paths of `restored` (a subtree of the saved state under `prefix`) whose bytes
  differ from what was saved; [] when all match or the step has no checksums."""
  saved = saved_checksums(step_dir)
  if saved is None:
    return []
  if "" in saved:
    return [f"{CHECKSUMS} file {saved['']}"]
  now = {prefix + path: crc for path, crc in _crcs(restored).items()}
  damaged = [path for path, crc in now.items()
             if crc is not None and path in saved and saved[path] != crc]
  return sorted(damaged, key=lambda path: ("/params/" not in path, path))  # Weights first.


def damaged_text(paths: list[str]) -> str:
  if paths and paths[0].startswith(f"{CHECKSUMS} file "):
    return (f"is damaged: its {paths[0]}, so its arrays cannot be verified")
  shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
  return f"is damaged: array bytes differ from the checksums written at save time ({shown})"


def _by_path(tree, describe) -> dict[str, Any]:
  """{'params/Dense_0/kernel': describe(leaf)} for every leaf of `tree`."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[jax.tree_util.keystr(path, simple=True, separator="/")] = describe(leaf)
  return out
