"""Baseline for the ViT fine-tuning demo: configs/digits_vit_finetune_5to9.py
from a fresh initialization (same model, 100 examples, steps and learning rate).

  python -m jaxtrain.main --config=configs/digits_vit_scratch_5to9.py \
    --workdir=runs/digits_vit_scratch_5to9
"""

from jaxtrain.configs.digits_vit_finetune_5to9 import get_config as finetune_config


def get_config():
  config = finetune_config()
  config.init_from.workdir = ""
  config.init_from.exclude = ()
  return config
