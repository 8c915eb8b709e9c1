"""Small CNN on scikit-learn's 8x8 handwritten digits (embedded; runs offline).

  python -m jaxtrain.main --config=configs/digits_cnn.py --workdir=runs/digits_cnn

Expected: see the README results table (measured on 2 CPU cores).
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.data.name = "digits"
  config.model.name = "cnn"
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.dense_size = 128
  config.optim.name = "adam"
  config.optim.learning_rate = 2e-3
  config.train.num_steps = 600
  config.checkpoint.every_steps = 300
  return config
