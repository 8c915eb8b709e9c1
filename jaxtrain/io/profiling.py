"""A `jax.profiler` trace of a few train steps (`config.profile`), viewable in
TensorBoard's profile plugin or Perfetto (the trace is a .xplane.pb and a
.trace.json.gz under WORKDIR/profile/plugins/profile/RUN/)."""

from __future__ import annotations


import jax

from jaxtrain import errors
from jaxtrain import paths
from jaxtrain.paths import Path


def check_config(profile_config) -> None:
  """Raises `UserError` for a negative `profile.start_step` or `profile.num_steps`."""
  if profile_config.start_step < 0 or profile_config.num_steps < 0:
    raise errors.UserError(
        f"profile.start_step={profile_config.start_step} and profile.num_steps="
        f"{profile_config.num_steps} must be >= 0 (num_steps = 0 turns profiling off)")


class Profiler:
  """Traces steps [start_step, start_step + num_steps); inactive when num_steps == 0."""

  def __init__(self, workdir: Path, start_step: int, num_steps: int):
    self.directory = paths.of(workdir) / "profile"
    self.start, self.end = start_step, start_step + num_steps
    self.enabled = num_steps > 0
    self.active = False

  def before_call(self, step: int) -> None:
    """Called before dispatching the call that begins after `step` steps."""
    if self.enabled and not self.active and self.start <= step < self.end:
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after_call(self, step: int, state) -> None:
    """Called after the call that ends at `step`; stops once the last traced step is done."""
    if self.active and step >= self.end:
      self.stop(state)

  def stop(self, state) -> None:
    if self.active:
      jax.block_until_ready(state)  # The trace holds the steps' device work, not just dispatch.
      jax.profiler.stop_trace()
      self.active, self.enabled = False, False
