"""Population-based tuning: many settings trained at once by one compiled step.

`jaxtrain.tune.run(config, workdir)` runs the search that `config.tune`
describes; see `run.py` for the loop and `population.py` for the engine.
"""

from jaxtrain.tune.run import run, validate

__all__ = ["run", "validate"]
