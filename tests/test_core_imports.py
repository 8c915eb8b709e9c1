"""The pure core imports no I/O libraries (checked in a fresh interpreter)."""

import subprocess
import sys


def test_core_modules_import_no_io_libraries():
  code = (
      "import sys\n"
      "import jaxtrain.state, jaxtrain.step, jaxtrain.optim, jaxtrain.losses\n"
      "import jaxtrain.metrics, jaxtrain.models, jaxtrain.tune.population\n"
      "import jaxtrain.ema, jaxtrain.lora, jaxtrain.param_groups\n"
      "bad = [m for m in ('orbax.checkpoint', 'tensorboardX', 'ml_collections',\n"
      "                   'tensorflow_datasets', 'grain', 'optuna') if m in sys.modules]\n"
      "print(','.join(bad))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "", f"the core imported {out.stdout.strip()}"
