"""Character-level Transformer LM on Python's own standard-library sources (`charlm`; offline).

  python -m jaxtrain.main --config=configs/charlm_transformer.py --workdir=runs/charlm_transformer

A decoder-only, pre-LayerNorm transformer (2 blocks, width 128, 4 heads, rotary
positions) predicting the next byte of 128-byte windows. Reports
eval/bits_per_char on the test split (5 stdlib files the model never saw).

Measured: eval/bits_per_char 1.99 [r:charlm_transformer.bits_per_char] on the
test split (next-byte accuracy 0.63, eval/loss 1.38 nats) after 800 steps;
462,592 parameters; 236 s [r:charlm_transformer.train_sec] of training, 241 s
[r:charlm_transformer.wall_sec] wall on 2 shared CPU cores (load and command in docs/results.json) (132 s of
training when the machine was quiet, 27.6 min at load ~10; the same parameters,
params_sha256, every time). No published reference exists: the corpus is jaxtrain's own.

Variants derive from this file: charlm_transformer_learned.py (a learned position
table instead of rotary), charlm_transformer_wide.py (width 256, 8 heads),
charlm_transformer_deep.py (4 blocks).
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.data.name = "charlm"
  config.data.batch_size = 32
  config.data.eval_batch_size = 256
  config.model.name = "transformer"
  config.model.width = 128
  config.model.depth = 2
  config.model.num_heads = 4
  config.model.mlp_ratio = 4.0
  config.model.positions = "rotary"
  config.model.activation = "gelu"
  config.model.dropout_rate = 0.0
  config.optim.name = "adamw"
  config.optim.learning_rate = 3e-3
  config.optim.weight_decay = 0.01
  config.optim.clip_norm = 1.0
  config.optim.schedule.name = "warmup_cosine"
  config.optim.schedule.warmup_steps = 100
  config.optim.schedule.end_factor = 0.1
  config.train.num_steps = 800
  config.train.eval_every_steps = 400
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 400
  # Next-character accuracy is reported too, but the loss (= bits per char x ln 2) ranks runs.
  config.checkpoint.best_metric = "eval/loss"
  config.early_stopping.metric = "eval/loss"
  return config
