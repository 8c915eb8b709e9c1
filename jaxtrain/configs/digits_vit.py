"""A small Vision Transformer on scikit-learn's 8x8 handwritten digits (offline).

  python -m jaxtrain.main --config=configs/digits_vit.py --workdir=runs/digits_vit

2x2 patches (16 tokens + a class token), 4 pre-LayerNorm blocks of width 64
with 4 heads. Measured: test accuracy 0.969 [r:digits_vit.accuracy] with seed 0
(seeds 0-2: 0.956 [r:digits_vit.accuracy:min] to 0.969 [r:digits_vit.accuracy:max];
the ViT is sensitive to float rounding); 136,138 parameters; 64.8 s
[r:digits_vit.train_sec] of training, 69.3 s [r:digits_vit.wall_sec] wall on 2 shared CPU cores (load and command in docs/results.json).
Reference: scikit-learn's example "Recognizing hand-written digits" reports
accuracy 0.97 for SVC(gamma=0.001) trained on the first half of the 1,797 digits
and tested on the second half (899, not shuffled); that is not jaxtrain's split
(a seeded 80/20 permutation: 1,437 train / 360 test), on which the same SVC
scores 0.994 (measured; docs/BENCHMARKS.md, "Shipped configs against published
numbers"). This config matches the published 0.97 and is below that same-split
SVC; it was not retuned, because the transfer demo (configs/digits_vit_*_5to9.py)
derives from it.

Variants derive from this file: digits_vit_deep.py (8 blocks), digits_vit_wide.py
(width 128), digits_vit_tiny.py (the published ViT-Ti/2 size: 192 wide, 12 deep).
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.data.name = "digits"
  config.model.name = "vit"
  config.model.patch_size = 2
  config.model.width = 64
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.mlp_ratio = 2.0
  config.model.pooling = "cls"
  config.model.activation = "gelu"
  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-3
  config.optim.weight_decay = 1e-4
  config.optim.clip_norm = 1.0
  config.optim.schedule.name = "warmup_cosine"
  config.optim.schedule.warmup_steps = 100
  config.train.num_steps = 1000
  config.train.eval_every_steps = 200
  config.checkpoint.every_steps = 500
  return config
