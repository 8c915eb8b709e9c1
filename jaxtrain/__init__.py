"""jaxtrain: training and population-based tuning of JAX/Flax models from one config file.

The public Python API, importable from a notebook with no flags:

- `jaxtrain.train.run(config, workdir)`: one run (`jaxtrain/jobs/train.py`);
- `jaxtrain.evaluate.run(workdir)`: evaluate a run's checkpoint (`jaxtrain/jobs/evaluate.py`);
- `jaxtrain.load(workdir, which="latest" | "best" | step, member=, fold=, merged=)`: a
  trained model (a single run's, a tuning run's best or any member, a cross-validation
  fold's, a LoRA run's as trained or merged) with `predict(inputs)`
  (`jaxtrain/inference.py`);
- `jaxtrain.tune.run(config, workdir)` and `jaxtrain.tune.cv.run(config, workdir)`: tuning
  and cross-validation (`jaxtrain/tune/`);
- `jaxtrain.config.base_config()`: every config key with its default;
- `jaxtrain.writers.read_metrics(workdir)`, `jaxtrain.runs.compare(...)`: a run's records.

`train`, `evaluate`, `writers` and `load` are loaded on first use (`from jaxtrain import
train`), so `import jaxtrain.config` in a config file stays cheap. How the package is layered:
docs/ARCHITECTURE.md.
"""

import importlib

# Name -> "module" (the module itself) or "module:attribute" (one of its attributes).
_LAZY = {
    "train": "jaxtrain.jobs.train",
    "evaluate": "jaxtrain.jobs.evaluate",
    "writers": "jaxtrain.io.writers",
    "load": "jaxtrain.inference:load",
    "LoadedRun": "jaxtrain.inference:LoadedRun",
}


def __getattr__(name):
  if name in _LAZY:
    module_name, _, attribute = _LAZY[name].partition(":")
    value = importlib.import_module(module_name)
    if attribute:
      value = getattr(value, attribute)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'jaxtrain' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
