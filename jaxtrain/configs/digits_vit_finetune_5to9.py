"""Fine-tuning demo with a Vision Transformer: digits 5-9 from 20 training
examples per class, starting from configs/digits_vit_pretrain_0to4.py.

  python -m jaxtrain.main --config=configs/digits_vit_pretrain_0to4.py \
    --workdir=runs/digits_vit_pretrain_0to4
  python -m jaxtrain.main --config=configs/digits_vit_finetune_5to9.py \
    --workdir=runs/digits_vit_finetune_5to9

Everything but the head (`params/head/`, fresh) comes from the pretrained run.
configs/digits_vit_scratch_5to9.py is the same run from scratch. Expected: see
docs/guide/finetune.md (scripts/finetune_demo.py --prefix=digits_vit).
"""

from jaxtrain.configs.digits_vit import get_config as digits_vit_config


def get_config():
  config = digits_vit_config()
  config.data.classes = (5, 6, 7, 8, 9)
  config.data.examples_per_class = 20  # 100 training examples, chosen by config.seed.
  config.data.batch_size = 20
  config.optim.schedule.warmup_steps = 30
  config.train.num_steps = 300
  config.train.eval_every_steps = 100
  config.train.log_every_steps = 50
  config.checkpoint.every_steps = 300
  config.init_from.workdir = "runs/digits_vit_pretrain_0to4"
  config.init_from.exclude = ("params/head/",)  # A new task, a fresh head.
  return config
