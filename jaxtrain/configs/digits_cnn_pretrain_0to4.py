"""Pretraining for the transfer demo: the digits CNN on classes 0-4 only.

  python -m jaxtrain.main --config=configs/digits_cnn_pretrain_0to4.py \
    --workdir=runs/digits_cnn_pretrain_0to4

Then fine-tune on classes 5-9 with configs/digits_cnn_finetune_5to9.py.
Expected (2 CPU cores): about 0.99 test accuracy on the 0-4 test digits in a
few seconds; see docs/guide/finetune.md.
"""

from jaxtrain.configs.digits_cnn import get_config as digits_cnn_config


def get_config():
  config = digits_cnn_config()
  config.data.classes = (0, 1, 2, 3, 4)
  config.model.batch_norm = True  # Helped both fine-tuning and scratch on 5-9 (finetune.md).
  config.train.num_steps = 300
  config.train.eval_every_steps = 100
  config.checkpoint.every_steps = 300
  return config
