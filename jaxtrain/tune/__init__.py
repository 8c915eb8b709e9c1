"""Population-based tuning: many settings trained at once by one compiled step.

`jaxtrain.tune.run(config, workdir)` runs the search that `config.tune`
describes; see `loop.py` for the loop and `population.py` for the engine.
The loop (files, checkpoints, Optuna) is imported only when called, so the
pure engine (`jaxtrain.tune.population`) stays free of I/O imports.
"""


def run(config, workdir, **kwargs):
  """See `jaxtrain.tune.loop.run`."""
  from jaxtrain.tune import loop  # pylint: disable=g-import-not-at-top
  return loop.run(config, workdir, **kwargs)


def validate(config):
  """See `jaxtrain.tune.loop.validate`."""
  from jaxtrain.tune import loop  # pylint: disable=g-import-not-at-top
  return loop.validate(config)


def history(workdir):
  """See `jaxtrain.tune.curves.history`: every member's curves and the lineage. (The
  module is not named `history`: importing it would replace this function.)"""
  from jaxtrain.tune import curves  # pylint: disable=g-import-not-at-top
  return curves.history(workdir)
