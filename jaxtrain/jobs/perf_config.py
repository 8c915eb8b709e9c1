"""Checks of the performance keys: precision, steps per call, compile, throughput, profile.

Called from `config.validate`, so a bad value is a one-line `UserError` before
anything is compiled.
"""

from __future__ import annotations

from jaxtrain import errors

PRECISIONS = ("f32", "bf16")


def validate(config) -> None:
  """Raises `UserError` for a bad precision, steps_per_call, compile, throughput or profile key."""
  if config.precision not in PRECISIONS:
    raise errors.unknown_choice("precision", config.precision, PRECISIONS)
  if config.train.steps_per_call <= 0:
    raise errors.UserError(f"train.steps_per_call={config.train.steps_per_call} must be > 0 "
                           "(1 = one step per dispatch)")
  if config.train.scan_unroll < 0:
    raise errors.UserError(f"train.scan_unroll={config.train.scan_unroll} must be >= 0 "
                           "(0 = auto)")
  for key, value in (("compile.device_memory_gb", config.compile.device_memory_gb),
                     ("throughput.peak_tflops_per_device",
                      config.throughput.peak_tflops_per_device)):
    if not value >= 0:
      raise errors.UserError(f"{key}={value!r} must be >= 0 (0 = ask the device)")
  if config.profile.start_step < 0 or config.profile.num_steps < 0:
    raise errors.UserError(
        f"profile.start_step={config.profile.start_step} and profile.num_steps="
        f"{config.profile.num_steps} must be >= 0 (num_steps = 0 turns profiling off)")
