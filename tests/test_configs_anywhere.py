"""The shipped configs (the package jaxtrain.configs) run from any folder, by path or by
bare name, and a user's config in its own folder can build on one.

Each command runs in a fresh folder, with only the `jaxtrain` package importable (a
folder linking it, as an install would hold it): neither the repository root nor a
top-level `configs` is on the path, so a config that imported `configs.X` fails here.
Those folders and the user's config files are local (`local_tmp_path`: Python imports
them); the workdirs are `tmp_path` (gs:// under JAXTRAIN_TEST_WORKDIR_SCHEME=gs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def site(tmp_path, local_tmp_path) -> dict[str, str]:
  """The environment of a command: `jaxtrain` importable, nothing else of the repo."""
  del tmp_path  # Requested first: on gs:// it starts the emulator, whose address env holds.
  packages = local_tmp_path / "site-packages"
  packages.mkdir()
  (packages / "jaxtrain").symlink_to(REPO / "jaxtrain", target_is_directory=True)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One CPU device.
  env["PYTHONPATH"] = str(packages)
  return env


def _main(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
  cwd.mkdir(parents=True, exist_ok=True)
  return subprocess.run([sys.executable, "-m", "jaxtrain.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", [
    "digits_mlp",
    "digits_bayes",  # Imports its sibling digits_pbt.
    "digits_cnn_scratch_5to9",  # Imports a sibling that imports another.
])
def test_a_shipped_config_runs_by_absolute_path_from_another_folder(name, tmp_path, site,
                                                                   local_tmp_path):
  # --mode=compile loads, validates and builds the config (the data too) without training.
  proc = _main([f"--config={REPO / 'configs' / f'{name}.py'}", f"--workdir={tmp_path / 'run'}",
                "--mode=compile"], local_tmp_path / "elsewhere", site)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_shipped_config_runs_by_bare_name(tmp_path, site, local_tmp_path):
  proc = _main(["--config=digits_mlp.py", f"--workdir={tmp_path / 'run'}", "--mode=compile"],
               local_tmp_path / "elsewhere", site)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_file_of_that_name_in_the_folder_comes_first(tmp_path, site, local_tmp_path):
  here = local_tmp_path / "here"
  here.mkdir()
  (here / "digits_mlp.py").write_text("def get_config():\n  return None\n")
  proc = _main(["--config=digits_mlp.py", f"--workdir={tmp_path / 'run'}"], here, site)
  assert proc.returncode == 2
  assert "get_config() returned None" in proc.stderr, proc.stderr


def test_an_unknown_bare_name_is_one_error_line(tmp_path, site, local_tmp_path):
  proc = _main(["--config=digits_mpl.py", f"--workdir={tmp_path / 'run'}"],
               local_tmp_path / "elsewhere", site)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: --config file 'digits_mpl.py' not found")
  assert "did you mean 'digits_mlp.py'" in lines[0] and "--config=digits_mlp.py" in lines[0]
  assert not (tmp_path / "run").exists()


def test_a_user_config_in_its_own_folder_extends_a_shipped_one(tmp_path, site,
                                                               local_tmp_path):
  project = local_tmp_path / "myproject"
  project.mkdir()
  (project / "my_config.py").write_text(
      "from jaxtrain.configs import digits_mlp\n\n\n"
      "def get_config():\n"
      "  config = digits_mlp.get_config()\n"
      "  config.model.hidden_sizes = (32,)\n"
      "  return config\n")
  workdir = tmp_path / "run"
  proc = _main([f"--config={project / 'my_config.py'}", f"--workdir={workdir}",
                "--config.train.num_steps=2", "--config.train.eval_every_steps=2"],
               local_tmp_path / "elsewhere", site)
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["hidden_sizes"] == [32]  # Changed by the user's file...
  assert config["optim"]["name"] == "adam"  # ...on top of digits_mlp's settings.
  assert config["data"]["name"] == "digits"
