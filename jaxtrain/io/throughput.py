"""Examples/s, FLOPs per step and model FLOP utilisation (MFU) for the log.

FLOPs come from XLA's cost analysis of the compiled one-step program (per
device under SPMD partitioning); MFU is those FLOPs times steps/s over the
device's peak. Peaks are dense bfloat16 figures from the vendors' data sheets
(MFU is conventionally quoted against them, whatever precision a run uses);
`throughput.peak_tflops_per_device` overrides the table, e.g. for a CPU, where
no peak is known and mfu is not reported.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxtrain import errors

# Dense bf16 peak TFLOP/s per chip, by a substring of `device.device_kind`
# (longest match wins: "TPU v5 lite" is a v5e, "TPU v5" alone a v5p).
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,  # v5p reports "TPU v5"
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
    "A100": 312.0,
    "H100": 989.0,  # SXM; a PCIe H100 peaks at 756: set the config key.
    "H200": 989.0,
}


def check_config(throughput_config) -> None:
  """Raises `UserError` for a negative (or NaN) `throughput.peak_tflops_per_device`."""
  value = throughput_config.peak_tflops_per_device
  if not value >= 0:
    raise errors.UserError(f"throughput.peak_tflops_per_device={value!r} must be >= 0 "
                           "(0 = ask the device)")


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float | None:
  """Peak FLOP/s of one device: the override (TFLOP/s) if > 0, else the table, else None."""
  if override_tflops > 0:
    return override_tflops * 1e12
  for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if key.lower() in device_kind.lower():
      return PEAK_TFLOPS[key] * 1e12
  return None


def cost_flops(program) -> float | None:
  """FLOPs of one execution of a lowered or compiled program on one device, or None if
  XLA has no estimate."""
  try:
    cost = program.cost_analysis()
  except Exception:  # Some backends do not implement it.
    return None
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def num_devices(args) -> int:
  """Devices the (sharded) arguments span: the program's device count."""
  counts = [len(x.sharding.device_set) for x in jax.tree.leaves(args)
            if getattr(x, "sharding", None) is not None]
  return max(counts, default=1)


def abstract(args):
  """Shapes, dtypes and shardings of `args` (to lower a function after its inputs are donated)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      args)


class Throughput:
  """Turns steps/s into {examples_per_sec, flops_per_step, mfu} for each log record."""

  def __init__(self, batch_size: int, peak_tflops_override: float = 0.0):
    self.batch_size = batch_size
    self.override = peak_tflops_override
    self._step_fn = None
    self._args = None
    self.flops_per_device: float | None = None
    self.devices = 1
    self.peak: float | None = None

  def set_step(self, jitted_step_fn, args) -> None:
    """Remembers the one-step function and its (abstract) arguments; FLOPs are read lazily."""
    self._step_fn, self._args = jitted_step_fn, abstract(args)
    self.devices = num_devices(args)
    device = jax.tree.leaves(args)[0].sharding.device_set
    kind = next(iter(device)).device_kind if device else jax.devices()[0].device_kind
    self.peak = peak_flops_per_device(kind, self.override)

  def measure(self) -> None:
    """Reads the FLOPs of the step given to `set_step` (once; later calls do nothing)."""
    if self._step_fn is None:
      return
    fn, args = self._step_fn, self._args
    self._step_fn = self._args = None
    # XLA's estimate for the lowered program: no compile (with K steps per call the
    # one-step program is never compiled for training; compiling it here cost a
    # second or more of start-up).
    # The lowered program is the whole (unpartitioned) computation: split it evenly.
    flops = cost_flops(fn.lower(*args))
    self.flops_per_device = flops / self.devices if flops is not None else None

  def values(self, steps_per_sec: float) -> dict[str, Any]:
    self.measure()
    out: dict[str, Any] = {"examples_per_sec": steps_per_sec * self.batch_size}
    if self.flops_per_device is not None:
      out["flops_per_step"] = self.flops_per_device * self.devices
      if self.peak is not None:
        out["mfu"] = self.flops_per_device * steps_per_sec / self.peak
    return out
