"""XLA compilation on this machine: the persistent compilation cache, and what a
compiled program needs of a device (`compile.*` config keys)."""

from __future__ import annotations

from typing import Any

import jax

from jaxtrain import errors, paths, redact

CACHE_MAX_BYTES = 4 * 2**30  # Least recently used entries are evicted beyond this.


def check_config(compile_config) -> None:
  """Raises `UserError` for a negative (or NaN) `compile.device_memory_gb`."""
  value = compile_config.device_memory_gb
  if not value >= 0:
    raise errors.UserError(f"compile.device_memory_gb={value!r} must be >= 0 "
                           "(0 = ask the device)")


def enable_cache(cache_dir: str) -> str | None:
  """Points JAX's persistent compilation cache at `cache_dir` ("" = off); returns the path used.

  Must run before the first compile of the process to take effect for it; it
  may run again (e.g. several runs in one process) and then resets JAX's cache
  object so the new directory is used. JAX writes entries without a lock unless
  the cache has a size limit, so a limit is set: reads and writes then take a
  file lock, and concurrent runs (or test processes) can share the directory.
  A gs:// cache (e.g. one for every host of a pod) is passed to JAX as the URL, without
  a size limit: JAX's lock is a local file, and an object is replaced whole anyway.
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  cache_dir = redact.resolve("compile.cache_dir", cache_dir)
  # paths.absolute: Path(URL).absolute() was a local folder named 'gs:'.
  path = str(paths.absolute(cache_dir, "compile.cache_dir")) if cache_dir else None
  current = jax.config.jax_compilation_cache_dir
  if path == current and bool(path) == jax.config.jax_enable_compilation_cache:
    return path
  if path:
    try:
      paths.of(path).mkdir(parents=True, exist_ok=True)
    except OSError:
      path = None  # An unwritable cache must not stop a run: compile without it.
  jax.config.update("jax_compilation_cache_dir", path)
  if path and paths.is_url(path):
    jax.config.update("jax_compilation_cache_max_size", -1)  # -1: no limit, no lock.
  elif jax.config.jax_compilation_cache_max_size == -1:  # JAX's default (no limit, no lock).
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


def run_once_options() -> dict[str, Any] | None:
  """XLA options for programs that run once or rarely (initialisation, PBT's exploit):
  no backend optimisation on CPU, where LLVM's passes made a small MLP population's
  init take 3.6 s to compile against 0.5 s without them (the values differ from an
  optimised build only in the last bits). None elsewhere: accelerator compiles are
  fast, and their programs run as they are."""
  if jax.default_backend() != "cpu":
    return None
  return {"xla_backend_optimization_level": 0}
