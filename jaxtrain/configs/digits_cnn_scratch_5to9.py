"""Baseline for the fine-tuning demo: the same CNN, data and steps as
configs/digits_cnn_finetune_5to9.py, from a fresh initialization.

  python -m jaxtrain.main --config=configs/digits_cnn_scratch_5to9.py \
    --workdir=runs/digits_cnn_scratch_5to9
"""

from jaxtrain.configs.digits_cnn_finetune_5to9 import get_config as finetune_config


def get_config():
  config = finetune_config()
  config.init_from.workdir = ""
  config.init_from.exclude = ()
  return config
