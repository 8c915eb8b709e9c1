"""Pretraining for the ViT transfer demo: configs/digits_vit.py on digits 0-4 only.

  python -m jaxtrain.main --config=configs/digits_vit_pretrain_0to4.py \
    --workdir=runs/digits_vit_pretrain_0to4

Then configs/digits_vit_finetune_5to9.py. See docs/guide/finetune.md.
"""

from jaxtrain.configs.digits_vit import get_config as digits_vit_config


def get_config():
  config = digits_vit_config()
  config.data.classes = (0, 1, 2, 3, 4)
  return config
