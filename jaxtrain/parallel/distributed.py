"""Multi-host runs: JAX's multi-controller runtime.

Every process runs the same program on its own devices; `jax.devices()` then
lists the devices of all processes and one mesh spans them. Call
`initialize()` before anything touches a device (jaxtrain.main does it first).
"""

from __future__ import annotations

import os

from jaxtrain import errors


def wanted(coordinator_address: str | None, num_processes: int | None,
           process_id: int | None) -> bool:
  """Whether this process is part of a multi-process run.

  Explicit flags say so, or the environment of a TPU VM pod slice (one
  hostname per worker in TPU_WORKER_HOSTNAMES), where JAX finds the rest.
  """
  if coordinator_address or num_processes or process_id is not None:
    return True
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return len(hosts) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when `wanted(...)`; returns whether it did.

  Raises:
    UserError: incomplete flags (a coordinator needs the process count and id).
  """
  if not wanted(coordinator_address, num_processes, process_id):
    return False
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise errors.UserError(
        "--coordinator_address, --num_processes and --process_id go together; pass all three "
        "(e.g. --coordinator_address=host0:1234 --num_processes=2 --process_id=0), or none on a "
        "TPU pod")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise errors.UserError(f"--process_id={process_id} must be in [0, {num_processes}) "
                           f"for --num_processes={num_processes}")
  import jax  # pylint: disable=g-import-not-at-top
  # CPU devices of different processes talk through gloo (no effect on GPU/TPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def is_main() -> bool:
  """Process 0 writes the logs and final.json; every process saves checkpoints."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


class NullWriter:
  """Stands in for a writer on processes other than 0: every method does nothing."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: None
