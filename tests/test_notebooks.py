"""The notebooks in notebooks/: stored without outputs, one install cell that works, and
run top to bottom (twice) as a user runs them: from an empty folder, against jaxtrain
installed from a wheel, with neither the repository nor its notebooks/ folder in sight.
Also the accelerator extras that their install cell and the README name.
"""

import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _code_cells(path):
  notebook = json.loads(path.read_text(encoding="utf-8"))
  return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _install_cell(path) -> str:
  cells = [c for c in _code_cells(path) if re.search(r"^JAXTRAIN_SOURCE = ", c, re.M)]
  assert len(cells) == 1, f"{path.name}: want one install cell (JAXTRAIN_SOURCE = ...)"
  return cells[0]


def test_there_are_notebooks():
  assert NOTEBOOKS, f"no notebooks in {REPO / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
  notebook = json.loads(path.read_text(encoding="utf-8"))
  for i, cell in enumerate(notebook["cells"]):
    if cell["cell_type"] != "code":
      continue
    assert not cell.get("outputs") and cell.get("execution_count") is None, (
        f"{path.name} cell {i} has stored outputs or an execution count; clear them "
        f"(jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)})")


def test_every_notebook_has_the_same_install_cell_first():
  cells = {path.name: _install_cell(path) for path in NOTEBOOKS}
  assert len(set(cells.values())) == 1, f"the install cells differ: {sorted(cells)}"
  for path in NOTEBOOKS:
    assert _code_cells(path)[0] == cells[path.name], f"{path.name}: install cell is not first"
    assert 'JAXTRAIN_SOURCE = ""' in cells[path.name], "ships with a source set"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_go_under_the_working_directory(path):
  """Not /tmp (Colab's file pane does not show it, a reset loses it): ./runs."""
  code = "\n".join(_code_cells(path))
  assert "tempfile" not in code and "/tmp" not in code, path.name
  assert 'RUNS = pathlib.Path("runs")' in code, path.name


def test_install_cell_without_jaxtrain_or_a_source_stops_with_one_line(local_tmp_path):
  tmp_path = local_tmp_path  # A current folder (local under either scheme).
  # -S: no site-packages, so jaxtrain is not importable whatever this machine has
  # installed; the cell must stop before it imports anything else (jax) or runs pip.
  proc = subprocess.run([sys.executable, "-S", "-c", _install_cell(NOTEBOOKS[0])],
                        cwd=tmp_path, capture_output=True, text=True, timeout=60,
                        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert proc.returncode == 1, proc.stderr
  assert not proc.stdout, proc.stdout
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("RuntimeError: jaxtrain is not installed: set JAXTRAIN_SOURCE"), (
      proc.stderr)
  assert "During handling" not in proc.stderr, proc.stderr  # One error, not a chain.


def test_accelerator_extras_are_jax_s_own_at_the_jax_floor():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  floor, = [d.removeprefix("jax>=") for d in project["dependencies"] if d.startswith("jax>=")]
  extras = project["optional-dependencies"]
  assert extras["cuda12"] == [f"jax[cuda12]>={floor}"]
  assert extras["tpu"] == [f"jax[tpu]>={floor}"]
  assert {"cuda12", "tpu"} <= set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))


@pytest.fixture(scope="session")
def wheel_site(tmp_path_factory) -> pathlib.Path:
  """jaxtrain as a user installs it: a wheel built from this checkout, installed into a
  folder of its own (without dependencies: this environment has them)."""
  tmp = tmp_path_factory.mktemp("wheel")
  # Built from a copy: an in-tree build would write build/ and *.egg-info into the checkout.
  source = tmp / "source"
  shutil.copytree(REPO / "jaxtrain", source / "jaxtrain",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy2(REPO / name, source / name)
  site = tmp / "site"
  _pip("wheel", "--no-deps", "-w", str(tmp / "dist"), str(source))
  wheel, = (tmp / "dist").glob("jaxtrain-*.whl")
  _pip("install", "--no-deps", "--target", str(site), str(wheel))
  assert (site / "jaxtrain" / "configs" / "digits_mlp.py").is_file()
  metadata, = site.glob("jaxtrain-*.dist-info/METADATA")
  assert {"Provides-Extra: cuda12", "Provides-Extra: tpu"} <= set(
      metadata.read_text().splitlines())
  return site


def _pip(*args: str) -> None:
  command = [sys.executable, "-m", "pip", *args[:1], "-q", *args[1:]]
  proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
  if proc.returncode:
    pytest.fail(f"{' '.join(command)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}",
                pytrace=False)


def _kernel_env(site: pathlib.Path) -> dict[str, str]:
  """The test process's environment, with jaxtrain importable from `site` only."""
  env = dict(os.environ)
  env["PYTHONPATH"] = str(site)  # Not the repository.
  # conftest.py fakes 8 CPU devices for the sharding tests; a notebook gets the real ones.
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = flags.strip()
  return env  # JAXTRAIN_DATA_DIR: the session's data dir, set by conftest.py.


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_twice_from_an_empty_folder_on_a_wheel_install(path, local_tmp_path,
                                                                     wheel_site):
  """Runs every cell, then every cell again in the same kernel (Colab's "Run all" a
  second time: the runs of the first pass exist and are resumed). Local under either
  scheme: the kernel's current folder, with the notebook's runs in ./runs."""
  tmp_path = local_tmp_path
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  folder = tmp_path / "content"  # Empty, as Colab's working directory.
  folder.mkdir()
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                   resources={"metadata": {"path": str(folder)}})
  with client.setup_kernel(env=_kernel_env(wheel_site)):
    for attempt in ("first run", "re-run"):
      for index, cell in enumerate(notebook.cells):
        try:
          client.execute_cell(cell, index)
        except nbclient.exceptions.CellExecutionError as e:
          pytest.fail(f"{path.name} failed ({attempt}):\n{e}", pytrace=False)
      _check_outputs(path, notebook, wheel_site, attempt)
      # Kept beside the run (pytest --basetemp=DIR keeps it) to read what each pass printed.
      nbformat.write(notebook, tmp_path / f"{path.stem}.{attempt.replace(' ', '_')}.ipynb")
  # Everything the notebook wrote is under ./runs (the dataset: $JAXTRAIN_DATA_DIR).
  assert sorted(p.name for p in folder.iterdir()) == ["runs"]


def _check_outputs(path, notebook, site, attempt):
  install = next(c for c in notebook.cells
                 if c.cell_type == "code" and "JAXTRAIN_SOURCE = " in c.source)
  text = "".join(o.get("text", "") for o in install.outputs)
  assert f"from {site / 'jaxtrain'}\n" in text, f"{path.name} ({attempt}): {text}"
  assert re.search(r"backend \w+, \d+ device", text), text
  for i, cell in enumerate(notebook.cells):
    outputs = cell.get("outputs", [])
    # A figure that is drawn but not shown (e.g. a backend switched to Agg) fails here.
    if cell.cell_type == "code" and re.search(r"plt\.show\(\)|display\(Image", cell.source):
      assert any("image/png" in o.get("data", {}) for o in outputs), (
          f"{path.name} cell {i} ({attempt}) shows a figure but displayed none")
