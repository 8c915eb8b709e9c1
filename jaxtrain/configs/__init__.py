"""The config files shipped with jaxtrain, one module per file (`digits_mlp.py`, ...).

Each module's `get_config()` returns a fresh ConfigDict. Being part of the package, they
are importable from any folder and after a plain `pip install` (no clone needed); the
repository's `configs/` is a link to this folder. Run one from anywhere by path or by
name (`--config=digits_mlp.py` finds the shipped file when the folder holds none).

A config of your own, in your own folder, extends one by importing it:

  from jaxtrain.configs import digits_mlp

  def get_config():
    c = digits_mlp.get_config()
    c.optim.learning_rate = 3e-3
    return c

No module is imported here: a config imports only the configs it builds on.
"""
