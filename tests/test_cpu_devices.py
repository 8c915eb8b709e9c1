"""Members split over the CPU cores: `mesh.cpu_devices` (auto for tuning populations).

The command line gives a tuning population of a vmapped model one JAX CPU device per
core (`execution.cpu_devices_for`, applied by `sharding.use_cpu_devices` before JAX
starts). Checked here: the rule, that a CLI search really runs on the split devices,
that its numbers are those of the same program on devices made by XLA's own flag
(bitwise) and of one device (to float rounding, before the first exploit), and that a
process which chose its devices, or whose backend is up, is left alone.
"""

import json
import os
import subprocess
import sys

import pytest

from jaxtrain.parallel import sharding
from jaxtrain.tune import execution

from conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pbt(**overrides):
  return tiny_config(**{"mesh.num_devices": 0, "tune.strategy": "pbt",
                        "tune.population_size": 4, **overrides})


@pytest.mark.parametrize("overrides, cores, expected", [
    ({}, 2, 2),  # One device per core...
    ({}, 3, 2),  # ...at most the largest divisor of the population size.
    ({"tune.population_size": 6}, 4, 3),
    ({"tune.population_size": 5}, 2, 1),
    ({}, 1, 1),
    ({"tune.strategy": "none"}, 2, 1),  # Single runs keep one device...
    ({"model.name": "cnn"}, 2, 1),  # ...so do members run one at a time on CPU,
    ({"tune.execution": "map"}, 2, 1),
    ({"tune.shard_population": False}, 2, 1),
    ({"mesh.pop": 2}, 2, 1),  # and meshes the user laid out.
    ({"mesh.num_devices": 1}, 2, 1),
    ({"mesh.cpu_devices": 3}, 2, 3),  # An explicit count is used as given.
    ({"mesh.cpu_devices": 1}, 8, 1),
])
def test_the_rule(overrides, cores, expected):
  assert execution.cpu_devices_for(_pbt(**overrides), cores=cores) == expected


def test_a_process_that_chose_its_devices_is_left_alone():
  # This test process: XLA_FLAGS asks for 8 devices (conftest) and JAX is running.
  assert not sharding.use_cpu_devices(2)
  assert not sharding.use_cpu_devices(1)


ARGS = ["--config=configs/digits_pbt.py", "--config.train.num_steps=40",
        "--config.train.eval_every_steps=20", "--config.checkpoint.every_steps=40",
        "--config.tune.population_size=4", "--config.model.hidden_sizes=(32,)",
        "--config.data.test_split=", "--quiet"]


def _cli(workdir, *extra, xla_flags=None):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-m", "jaxtrain.main", f"--workdir={workdir}", *ARGS,
                        *extra], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  devices = json.loads((workdir / "provenance.json").read_text())["devices"]
  return devices, records


def _numbers(records):
  """The records without their clocks."""
  return [{k: v for k, v in r.items() if "per_sec" not in k and "time" not in k}
          for r in records]


TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")


@TWO_CORES
def test_a_cli_search_splits_its_members_over_the_cores(tmp_path):
  devices, split = _cli(tmp_path / "auto")
  assert devices == ["cpu:0", "cpu:1"]
  # One device (mesh.cpu_devices=1): equal to float rounding until the first exploit
  # (at the first evaluation); afterwards a near tie may rank members differently.
  one_devices, one = _cli(tmp_path / "one", "--config.mesh.cpu_devices=1")
  assert one_devices == ["cpu:0"]
  first_split, first_one = split[0], one[0]
  assert first_split["step"] == first_one["step"] == 20
  for key in ("train/loss", "eval/loss", "eval/accuracy"):
    assert first_split[key] == pytest.approx(first_one[key], rel=1e-5), key


@TWO_CORES
@pytest.mark.slow  # Two more searches from the command line (~20 s).
def test_the_split_is_the_program_xla_flags_make(tmp_path):
  devices, split = _cli(tmp_path / "auto")
  flagged_devices, flagged = _cli(tmp_path / "flag",
                                  xla_flags="--xla_force_host_platform_device_count=2")
  assert flagged_devices == devices and _numbers(flagged) == _numbers(split)


def test_a_negative_count_is_one_line_before_anything_runs():
  from jaxtrain import errors
  with pytest.raises(errors.UserError, match=r"^mesh.cpu_devices=-1 must be >= 0"):
    sharding.check_config(tiny_config(**{"mesh.cpu_devices": -1}).mesh)
