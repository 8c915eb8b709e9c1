"""Population-based tuning: many settings trained at once by one compiled step.

`jaxtrain.tune.run(config, workdir)` runs the search that `config.tune`
describes; see `loop.py` for the loop and `population.py` for the engine.
"""

from jaxtrain.tune.loop import run, validate

__all__ = ["run", "validate"]
