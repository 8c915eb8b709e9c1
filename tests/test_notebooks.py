"""The notebooks in notebooks/: stored without outputs, and run top to bottom."""

import json
import os
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


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


def _kernel_env(tmp_path) -> dict[str, str]:
  """The test process's environment for the kernel, as a user would have it."""
  env = dict(os.environ)
  # jaxtrain importable from this checkout (the install cell is then a no-op).
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  # conftest.py fakes 8 CPU devices for the sharding tests; a notebook gets the real ones.
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = flags.strip()
  env["TMPDIR"] = str(tmp_path)  # The notebooks' workdirs, removed with tmp_path.
  return env  # JAXTRAIN_DATA_DIR: the session's data dir, set by conftest.py.


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      notebook, kernel_name="python3", timeout=600,
      resources={"metadata": {"path": str(path.parent)}})
  try:
    client.execute(env=_kernel_env(tmp_path))
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
  for i, cell in enumerate(notebook.cells):
    outputs = cell.get("outputs", [])
    # A figure that is drawn but not shown (e.g. a backend switched to Agg) fails here.
    if cell.cell_type == "code" and re.search(r"plt\.show\(\)|display\(Image", cell.source):
      assert any("image/png" in o.get("data", {}) for o in outputs), (
          f"{path.name} cell {i} shows a figure but displayed none")
