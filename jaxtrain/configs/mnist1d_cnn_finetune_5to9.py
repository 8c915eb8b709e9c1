"""Fine-tuning demo: MNIST-1D classes 5-9 from 20 training examples per class,
starting from the 1D CNN pretrained on classes 0-4.

  python -m jaxtrain.main --config=configs/mnist1d_cnn_pretrain_0to4.py \
    --workdir=runs/mnist1d_cnn_pretrain_0to4
  python -m jaxtrain.main --config=configs/mnist1d_cnn_finetune_5to9.py \
    --workdir=runs/mnist1d_cnn_finetune_5to9

The convolutions and the dense layer come from the pretrained run (init_from);
the head starts fresh (excluded). configs/mnist1d_cnn_scratch_5to9.py trains
the same model on the same 100 examples from scratch. Expected: see
docs/guide/finetune.md (scripts/finetune_demo.py reproduces the table).
"""

from jaxtrain.configs.mnist1d_cnn import get_config as mnist1d_cnn_config


def get_config():
  config = mnist1d_cnn_config()
  config.data.classes = (5, 6, 7, 8, 9)
  config.data.examples_per_class = 20  # 100 training examples, chosen by config.seed.
  config.data.batch_size = 20
  # 600 steps at 3e-3 is the best of {150, 300, 600} x {1e-3, 3e-3} for training from
  # scratch; fine-tuning is ahead at every one of those six settings (finetune.md).
  config.optim.learning_rate = 3e-3
  config.optim.schedule.warmup_steps = 60
  config.train.num_steps = 600
  config.train.eval_every_steps = 200
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 600
  config.init_from.workdir = "runs/mnist1d_cnn_pretrain_0to4"
  config.init_from.exclude = ("params/Dense_1/",)  # The head: a new task, a fresh head.
  return config
