"""configs/charlm_transformer.py at twice the width (256, 8 heads of 32).

  python -m jaxtrain.main --config=configs/charlm_transformer_wide.py \
    --workdir=runs/charlm_transformer_wide

Expected: see docs/guide/models.md (measured on 2 CPU cores).
"""

from jaxtrain.configs import charlm_transformer


def get_config():
  config = charlm_transformer.get_config()
  config.model.width = 256
  config.model.num_heads = 8
  return config
