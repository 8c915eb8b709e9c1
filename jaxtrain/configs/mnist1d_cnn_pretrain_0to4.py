"""Pretraining for the MNIST-1D transfer demo: the 1D CNN on classes 0-4 only.

  python -m jaxtrain.main --config=configs/mnist1d_cnn_pretrain_0to4.py \
    --workdir=runs/mnist1d_cnn_pretrain_0to4

Then fine-tune on classes 5-9 from 20 examples per class with
configs/mnist1d_cnn_finetune_5to9.py. Measured: 0.988 [r:mnist1d_cnn_pretrain_0to4.accuracy]
test accuracy on the 0-4 test signals, 6.4 s [r:mnist1d_cnn_pretrain_0to4.train_sec] of
training on 2 shared CPU cores; see docs/guide/finetune.md.
"""

from jaxtrain.configs.mnist1d_cnn import get_config as mnist1d_cnn_config


def get_config():
  config = mnist1d_cnn_config()
  config.data.classes = (0, 1, 2, 3, 4)  # 2,000 of the 4,000 training signals.
  config.train.num_steps = 1500
  config.train.eval_every_steps = 500
  config.checkpoint.every_steps = 1500
  return config
