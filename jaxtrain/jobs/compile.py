"""Compilation: the persistent cache, and `--mode=compile` (ahead-of-time report).

`--mode=compile` builds everything a run builds (data, model, state shapes) and
compiles the train step for the real shapes, without allocating the state,
training or writing a checkpoint. It prints the memory one device needs
(`compiled.memory_analysis()`) and the FLOPs of one step
(`compiled.cost_analysis()`), and fails with one line when the program does not
fit in the device's memory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import jax

from jaxtrain import errors
from jaxtrain.io import throughput

CACHE_MAX_BYTES = 4 * 2**30  # Least recently used entries are evicted beyond this.


def enable_cache(cache_dir: str) -> str | None:
  """Points JAX's persistent compilation cache at `cache_dir` ("" = off); returns the path used.

  Must run before the first compile of the process to take effect for it; it
  may run again (e.g. several runs in one process) and then resets JAX's cache
  object so the new directory is used. JAX writes entries without a lock unless
  the cache has a size limit, so a limit is set: reads and writes then take a
  file lock, and concurrent runs (or test processes) can share the directory.
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  path = str(Path(os.path.expanduser(cache_dir)).absolute()) if cache_dir else None
  current = jax.config.jax_compilation_cache_dir
  if path == current and bool(path) == jax.config.jax_enable_compilation_cache:
    return path
  if path:
    try:
      Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
      path = None  # An unwritable cache must not stop a run: compile without it.
  jax.config.update("jax_compilation_cache_dir", path)
  if jax.config.jax_compilation_cache_max_size == -1:  # -1: JAX's default (no limit, no lock).
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
  jax.config.update("jax_enable_compilation_cache", bool(path))
  compilation_cache.reset_cache()
  return path


def memory_bytes(compiled) -> dict[str, int] | None:
  """Per-device bytes of a compiled program: arguments, outputs, temporaries, code, total."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # Not implemented on every backend.
    return None
  if stats is None:
    return None
  out = {
      "arguments": int(stats.argument_size_in_bytes),
      "outputs": int(stats.output_size_in_bytes),
      "aliased": int(stats.alias_size_in_bytes),  # Donated inputs reused as outputs.
      "temporaries": int(stats.temp_size_in_bytes),
      "code": int(stats.generated_code_size_in_bytes),
  }
  out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                  + out["code"])
  return out


def device_memory_bytes(device, override_gb: float) -> int | None:
  """Memory of one device: the override (GB) if > 0, else `device.memory_stats()['bytes_limit']`."""
  if override_gb > 0:
    return int(override_gb * 1e9)
  try:
    stats = device.memory_stats()
  except Exception:  # CPU and some backends report nothing.
    return None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def report(config, programs: dict[str, tuple[Any, tuple]]) -> dict[str, Any]:
  """Compiles each `name -> (jitted fn, args)` and returns the memory and FLOPs report.

  `programs["train_step"]` is the one-step program (its FLOPs are per step);
  others (the K-step scan) add to the memory check only.

  Raises:
    UserError: a program needs more memory per device than the device has.
  """
  result: dict[str, Any] = {"programs": {}}
  device = None
  for name, (fn, args) in programs.items():
    compiled = fn.lower(*throughput.abstract(args)).compile()
    leaves = [x for x in jax.tree.leaves(args) if getattr(x, "sharding", None) is not None]
    device = next(iter(leaves[0].sharding.device_set)) if leaves else jax.devices()[0]
    result["programs"][name] = {"memory_bytes": memory_bytes(compiled),
                                "flops": throughput.cost_flops(compiled),
                                "devices": throughput.num_devices(args)}
  step = result["programs"]["train_step"]
  result["flops_per_step_per_device"] = step["flops"]
  result["flops_per_step"] = step["flops"] and step["flops"] * step["devices"]
  result["device_kind"] = device.device_kind
  needed = max((p["memory_bytes"] or {}).get("total", 0) for p in result["programs"].values())
  result["memory_per_device_bytes"] = needed
  limit = device_memory_bytes(device, config.compile.device_memory_gb)
  result["device_memory_bytes"] = limit
  if limit is not None and needed > limit:
    worst = max(result["programs"], key=lambda n: (result["programs"][n]["memory_bytes"] or {})
                .get("total", 0))
    raise errors.UserError(
        f"the compiled {worst} needs {needed / 1e9:.3g} GB per device but {device.device_kind} "
        f"has {limit / 1e9:.3g} GB (compile.device_memory_gb={config.compile.device_memory_gb}); "
        "lower data.batch_size, set model.remat=True or precision='bf16', or shard over more "
        "devices")
  return result


def format_report(result: dict[str, Any]) -> str:
  """Human-readable lines of a `report`."""
  def gb(n):
    return "unknown" if n is None else f"{n / 1e9:.4g} GB"
  lines = []
  for name, p in result["programs"].items():
    m = p["memory_bytes"] or {}
    lines.append(f"{name}: memory per device {gb(m.get('total'))} (arguments "
                 f"{gb(m.get('arguments'))}, outputs {gb(m.get('outputs'))}, aliased "
                 f"{gb(m.get('aliased'))}, temporaries {gb(m.get('temporaries'))}); "
                 f"{p['devices']} device(s)")
  flops = result["flops_per_step"]
  lines.append(f"FLOPs per step: {'unknown' if flops is None else f'{flops:.4g}'} "
               f"({result['device_kind']})")
  limit = result["device_memory_bytes"]
  lines.append(f"fits: needs {gb(result['memory_per_device_bytes'])} of "
               + (f"{gb(limit)} per device" if limit is not None else
                  "unknown device memory (set compile.device_memory_gb to check)"))
  return "\n".join(lines)


def run(config, workdir) -> dict[str, Any]:
  """`--mode=compile`: the report for `config`; writes nothing under `workdir`.

  `train.run` builds and compiles as a real run would; it is pointed at a
  scratch directory so that no config snapshot, log or checkpoint is written.
  """
  del workdir  # Accepted for symmetry with the other modes; nothing is written there.
  from jaxtrain.jobs import train  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="jaxtrain_compile_") as scratch:
    return train.run(config, scratch, compile_only=True)
