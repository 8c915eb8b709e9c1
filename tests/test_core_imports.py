"""The pure core imports no I/O libraries (checked in a fresh interpreter)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_core_modules_import_no_io_libraries():
  core = sorted(f"jaxtrain.core.{p.stem}" for p in (ROOT / "jaxtrain" / "core").glob("*.py")
                if p.stem != "__init__")
  modules = core + ["jaxtrain.models", "jaxtrain.tune.population"]
  code = (
      "import sys\n"
      f"import {', '.join(modules)}\n"
      "bad = [m for m in ('orbax.checkpoint', 'tensorboardX', 'ml_collections',\n"
      "                   'tensorflow_datasets', 'grain', 'optuna') if m in sys.modules]\n"
      "print(','.join(bad))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert len(core) >= 9, core
  assert out.stdout.strip() == "", f"the core imported {out.stdout.strip()}"
