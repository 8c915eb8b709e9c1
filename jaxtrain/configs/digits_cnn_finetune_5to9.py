"""Fine-tuning demo: classes 5-9 of digits from 20 training examples per class,
starting from the CNN pretrained on classes 0-4.

  python -m jaxtrain.main --config=configs/digits_cnn_pretrain_0to4.py \
    --workdir=runs/digits_cnn_pretrain_0to4
  python -m jaxtrain.main --config=configs/digits_cnn_finetune_5to9.py \
    --workdir=runs/digits_cnn_finetune_5to9

The convolutional features and the dense layer come from the pretrained run
(init_from); the head starts fresh (excluded). Evaluated on the 5-9 test
examples. configs/digits_cnn_scratch_5to9.py trains the same model on the same
100 examples from scratch. Expected: see docs/guide/finetune.md.
"""

from jaxtrain.configs.digits_cnn import get_config as digits_cnn_config


def get_config():
  config = digits_cnn_config()
  config.data.classes = (5, 6, 7, 8, 9)
  config.data.examples_per_class = 20  # 100 training examples, chosen by config.seed.
  config.data.batch_size = 20
  config.model.batch_norm = True  # As in the pretrained run: the shapes must match.
  config.optim.learning_rate = 3e-3  # The better of 1e-3 and 3e-3 for both fine-tune and scratch.
  config.train.num_steps = 150
  config.train.eval_every_steps = 50
  config.train.log_every_steps = 50
  config.checkpoint.every_steps = 150
  config.init_from.workdir = "runs/digits_cnn_pretrain_0to4"
  config.init_from.exclude = ("params/Dense_1/",)  # The head: a new task, a fresh head.
  return config
