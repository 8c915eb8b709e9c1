"""Baseline for the MNIST-1D fine-tuning demo: the same 1D CNN, data, steps and
learning rate as configs/mnist1d_cnn_finetune_5to9.py, from a fresh
initialization.

  python -m jaxtrain.main --config=configs/mnist1d_cnn_scratch_5to9.py \
    --workdir=runs/mnist1d_cnn_scratch_5to9
"""

from jaxtrain.configs.mnist1d_cnn_finetune_5to9 import get_config as finetune_config


def get_config():
  config = finetune_config()
  config.init_from.workdir = ""
  config.init_from.exclude = ()
  return config
