"""MLP on scikit-learn's handwritten digits (embedded; runs offline).

  python -m jaxtrain.main --config=configs/digits_mlp.py --workdir=runs/digits_mlp

Expected: eval/accuracy about 0.97-0.98 on the 360 test digits after 500 steps
(measured: see the README results table; a few seconds on 2 CPU cores).
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.data.name = "digits"
  config.model.name = "mlp"
  config.model.hidden_sizes = (256, 256)
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-3
  config.train.num_steps = 500
  return config
