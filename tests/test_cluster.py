"""Cluster launches without flags (jaxtrain/parallel/distributed.py): found as
`jax.distributed.initialize()` finds them, or refused with one line; never N
independent runs into one workdir. Environment variables only: no process starts
and `jax.distributed.initialize` is replaced by a recorder.
"""

import importlib.machinery
import os
import sys
import types

import jax
import pytest

from jaxtrain import errors, main
from jaxtrain.parallel import distributed

CONFIG = "--config=configs/digits_mlp.py"
# What the launchers JAX knows (jax/_src/clusters) and the ones it does not set.
LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "TPU_", "JAX_COORDINATOR",
                     "KUBERNETES_", "JOB_COMPLETION_INDEX")
SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]",
              "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2",
              "SLURM_LOCALID": "0"}


@pytest.fixture
def launch(monkeypatch):
  """Clears every launcher variable, records `jax.distributed.initialize` calls, and
  returns a function that sets the given variables."""
  for name in list(os.environ):
    if name.startswith(LAUNCHER_PREFIXES):
      monkeypatch.delenv(name)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *a: None)  # The gloo switch: not here.

  def set_env(**variables):
    for name, value in variables.items():
      monkeypatch.setenv(name, value)
    return calls
  return set_env


def test_a_laptop_run_is_one_process(launch):
  calls = launch()
  assert distributed.detect() is None and not distributed.wanted(None, None, None)
  assert distributed.initialize() is False and calls == []


def test_an_srun_step_of_several_tasks_initializes_through_jax(launch):
  calls = launch(**SLURM_STEP)
  assert distributed.detect() == distributed.Launch("SLURM", 4, 2, True)
  assert distributed.initialize() is True
  # No arguments: JAX's own SLURM detection fills them (and one GPU per task).
  assert calls == [{"coordinator_address": None, "num_processes": None, "process_id": None}]


@pytest.mark.parametrize("variables", [
    {**SLURM_STEP, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"},
    # The batch script of `sbatch --ntasks=4` itself: one process until it calls srun.
    {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
     "SLURM_JOB_NODELIST": "node[001-002]"},
], ids=["single_task", "sbatch_script"])
def test_a_single_slurm_task_is_one_process(launch, variables):
  calls = launch(**variables)
  assert distributed.detect() is None
  assert distributed.initialize() is False and calls == []


def test_open_mpi_that_jax_detects(launch):
  calls = launch(OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.96.0.1:34911",
                 OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="1",
                 OMPI_COMM_WORLD_LOCAL_RANK="1")
  assert distributed.detect() == distributed.Launch("Open MPI", 2, 1, True)
  assert distributed.initialize() is True and len(calls) == 1
  launch(OMPI_COMM_WORLD_SIZE="1", OMPI_COMM_WORLD_RANK="0")
  assert distributed.detect() is None  # mpirun -n 1.


@pytest.mark.parametrize("variables, where", [
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, "Open MPI launch detected"),
    ({"PMI_SIZE": "4", "PMI_RANK": "3"}, "MPI launch detected"),  # MPICH, Intel MPI.
    ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3"}, "SLURM launch detected"),
], ids=["open_mpi_5", "mpich", "srun_without_nodelist"])
def test_launchers_jax_cannot_join_are_refused(launch, variables, where):
  calls = launch(**variables)
  assert distributed.wanted(None, None, None)
  with pytest.raises(errors.UserError) as e:
    distributed.initialize()
  message = str(e.value)
  assert message.startswith(where) and "\n" not in message
  assert "--num_processes=4 --process_id=3" in message and "--coordinator_address=" in message
  assert calls == []


def test_kubernetes_indexed_job(launch, monkeypatch):
  calls = launch(KUBERNETES_SERVICE_HOST="10.0.0.1")
  assert distributed.detect() is None  # A plain pod (a notebook): not a Job's pod.
  launch(JOB_COMPLETION_INDEX="1")
  monkeypatch.delitem(sys.modules, "kubernetes", raising=False)
  if distributed.detect().jax_detects:
    pytest.skip("the kubernetes package is installed here")
  with pytest.raises(errors.UserError, match="kubernetes package.*--process_id=1"):
    distributed.initialize()
  # With the package JAX reads the pod count from the Job: initialize through JAX.
  fake = types.ModuleType("kubernetes")
  fake.__spec__ = importlib.machinery.ModuleSpec("kubernetes", None)
  monkeypatch.setitem(sys.modules, "kubernetes", fake)
  assert distributed.detect() == distributed.Launch("Kubernetes indexed Job", None, 1, True)
  assert distributed.initialize() is True and len(calls) == 1


@pytest.mark.parametrize("hosts, multi", [("w0,w1,w2,w3", True), ("w0", False)])
def test_tpu_pod_slices_as_before(launch, hosts, multi):
  launch(TPU_WORKER_HOSTNAMES=hosts, TPU_WORKER_ID="0",
         KUBERNETES_SERVICE_HOST="10.0.0.1", JOB_COMPLETION_INDEX="0")  # GKE: a JobSet pod.
  assert distributed.wanted(None, None, None) is multi


def test_explicit_flags_win_over_the_environment(launch):
  calls = launch(PMI_SIZE="4", PMI_RANK="3")  # Refused without flags (above).
  assert distributed.initialize("host0:1234", 2, 1) is True
  assert calls == [{"coordinator_address": "host0:1234", "num_processes": 2, "process_id": 1}]
  with pytest.raises(errors.UserError, match="go together"):
    distributed.initialize(None, 2, None)


def test_a_refused_launch_is_one_error_line(launch, tmp_path, capsys):
  launch(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
  code = main.main(["jaxtrain", CONFIG, f"--workdir={tmp_path / 'run'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: Open MPI launch detected")
  assert not (tmp_path / "run" / "config.json").exists()
