"""Multi-host runs: JAX's multi-controller runtime.

Every process runs the same program on its own devices; `jax.devices()` then
lists the devices of all processes and one mesh spans them. Call
`initialize()` before anything touches a device (jaxtrain.main does it first).

A process finds the others from explicit flags or from its launcher's
environment, as `jax.distributed.initialize()` does (`detect`): a TPU pod
slice, SLURM (`srun`), Open MPI (`mpirun`) or a Kubernetes indexed Job. A
launch that starts several copies of this program where JAX cannot find the
others on its own is refused: unjoined, every copy would train alone into the
same workdir.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

from jaxtrain import errors


class Launch(NamedTuple):
  """A multi-process launch found in the environment of this process."""
  launcher: str  # For messages: "SLURM", "Open MPI", ...
  num_processes: int | None  # None: only JAX can ask (a Kubernetes Job's parallelism).
  process_id: int | None
  jax_detects: bool  # `jax.distributed.initialize()` finds the rest on its own.


# Launchers that start N copies of a program and say so, but which JAX does not detect
# (Open MPI 5 dropped the OMPI_MCA_orte_hnp_uri JAX reads; MPICH and Intel MPI set PMI_*;
# an srun step whose variables JAX's SlurmCluster misses): (name, size variable, rank variable).
_RANKED_LAUNCHERS = (("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
                     ("SLURM", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),
                     ("MPI", "PMI_SIZE", "PMI_RANK"))


def _int_env(name: str) -> int | None:
  try:
    return int(os.environ[name])
  except (KeyError, ValueError):
    return None


def _jax_env_clusters() -> list:
  """JAX's cluster environments that are detected from environment variables alone,
  in JAX's order (`jax._src.clusters`). The TPU ones ask a metadata server and the
  Kubernetes one the API server, so `detect` reads their variables itself."""
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
  except ImportError:  # A JAX that moved them: the ranked launchers below still refuse.
    return []
  return [c for c in (getattr(clusters, "OmpiCluster", None),
                      getattr(clusters, "SlurmCluster", None)) if c is not None]


def detect() -> Launch | None:
  """The multi-process launch this process belongs to, from its environment; None
  when it runs alone (a laptop, a one-task SLURM allocation, an sbatch script itself).

  Follows `jax.distributed.initialize()`'s auto-detection (`jax/_src/clusters`): its
  SLURM and Open MPI environments as JAX reads them, then a TPU pod slice's worker
  list, then a Kubernetes indexed Job; last, launchers that say this is one of N
  ranks where JAX would not find the others (`jax_detects=False`).
  """
  for cluster in _jax_env_clusters():
    if cluster.is_env_present():  # JAX takes the first present one: so does this.
      n = cluster.get_process_count()
      name = {"slurm": "SLURM", "ompi": "Open MPI"}.get(cluster.name, cluster.name)
      return Launch(name, n, cluster.get_process_id(), True) if n > 1 else None
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES", os.environ.get("TPU_WORKER_HOSTNAMES"))
  if hosts is not None:  # A TPU VM (also inside Kubernetes): one entry per worker.
    n = len([h for h in hosts.split(",") if h.strip()])
    return Launch("TPU pod slice", n, _int_env("TPU_WORKER_ID"), True) if n > 1 else None
  if "KUBERNETES_SERVICE_HOST" in os.environ and "JOB_COMPLETION_INDEX" in os.environ:
    # One pod of an indexed Job (a JobSet's too): the pod count is in the Job's spec,
    # which JAX reads through the API server with the `kubernetes` package.
    return Launch("Kubernetes indexed Job", None, _int_env("JOB_COMPLETION_INDEX"),
                  importlib.util.find_spec("kubernetes") is not None)
  for name, size, rank in _RANKED_LAUNCHERS:
    n = _int_env(size)
    if n is not None and n > 1:
      return Launch(name, n, _int_env(rank), False)
  return None


def wanted(coordinator_address: str | None, num_processes: int | None,
           process_id: int | None) -> bool:
  """Whether this process is part of a multi-process run.

  Explicit flags say so, or the environment of a cluster launch (`detect`).
  """
  if coordinator_address or num_processes or process_id is not None:
    return True
  return detect() is not None


def _refusal(launch: Launch) -> str:
  """The one-line error for a launch JAX cannot join on its own."""
  n = launch.num_processes if launch.num_processes is not None else "N"
  i = launch.process_id if launch.process_id is not None else "I"
  if launch.launcher.startswith("Kubernetes"):
    why = ("JAX finds the other pods only with the kubernetes package (pip install "
           "'jax[k8s]', and a service account that may read pods and jobs): install it, or ")
  else:
    why = f"this process is one of {n}, but JAX cannot find the others from this launcher: "
  return (f"{launch.launcher} launch detected: {why}pass --coordinator_address=HOST:PORT "
          f"(process 0's host, the same on every process) --num_processes={n} --process_id={i}; "
          "unjoined, every process would train alone into the same workdir")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when `wanted(...)`; returns whether it did.

  Raises:
    UserError: incomplete flags (a coordinator needs the process count and id), or a
      cluster launch of several processes that JAX cannot join on its own.
  """
  if not wanted(coordinator_address, num_processes, process_id):
    return False
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise errors.UserError(
        "--coordinator_address, --num_processes and --process_id go together; pass all three "
        "(e.g. --coordinator_address=host0:1234 --num_processes=2 --process_id=0), or none on a "
        "TPU pod or under a launcher JAX detects (SLURM, Open MPI)")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise errors.UserError(f"--process_id={process_id} must be in [0, {num_processes}) "
                           f"for --num_processes={num_processes}")
  if num_processes is None:  # No flags: the launcher's environment (detect() found one).
    launch = detect()
    if launch is not None and not launch.jax_detects:
      raise errors.UserError(_refusal(launch))
  import jax  # pylint: disable=g-import-not-at-top
  # CPU devices of different processes talk through gloo (no effect on GPU/TPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # Unset arguments: JAX detects the cluster the same way detect() did.
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
