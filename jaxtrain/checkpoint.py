"""Orbax checkpoints of {train state, data iterator, loop state}.

One `CheckpointManager` keeps the `keep` latest steps plus the best one by a
finite score (NaN and Inf never count as best). Saves are asynchronous; the
loop is blocked only while device arrays are copied out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxtrain import errors


class Checkpoints:
  """Saves and restores one run's checkpoints under `directory`."""

  def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
    self.directory = Path(directory).absolute()
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["score"], reverse=False, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, loop_state: dict[str, Any], data_iterator=None,
           score: float | None = None, force: bool = True) -> None:
    """Starts an async save; `score` (higher is better) ranks it for 'best'."""
    import grain  # pylint: disable=g-import-not-at-top
    items = {"state": ocp.args.StandardSave(state), "loop": ocp.args.JsonSave(loop_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = {"score": score} if score is not None and math.isfinite(score) else None
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)

  def restore(self, step: int, target_state, data_iterator=None) -> tuple[Any, dict[str, Any]]:
    """Restores into the structure of `target_state` (and `data_iterator`, in place).

    Raises:
      UserError: the checkpoint does not match the current model/optimizer.
    """
    import grain  # pylint: disable=g-import-not-at-top
    items = {"state": ocp.args.StandardRestore(target_state), "loop": ocp.args.JsonRestore()}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises several types for a mismatching tree.
      text = " ".join(str(e).split())
      raise errors.UserError(
          f"checkpoint {self.directory}/{step} does not match this config "
          f"({type(e).__name__}: {text[:400]}); use a new --workdir or the config it was "
          "saved with") from None
    return restored["state"], dict(restored["loop"])

  def restore_loop(self, step: int) -> dict[str, Any]:
    """Only the loop state (JSON) of a checkpoint."""
    restored = self.manager.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
    return dict(restored["loop"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
