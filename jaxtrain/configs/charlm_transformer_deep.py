"""configs/charlm_transformer.py at twice the depth (4 blocks).

  python -m jaxtrain.main --config=configs/charlm_transformer_deep.py \
    --workdir=runs/charlm_transformer_deep

Expected: see docs/guide/models.md (measured on 2 CPU cores).
"""

from jaxtrain.configs import charlm_transformer


def get_config():
  config = charlm_transformer.get_config()
  config.model.depth = 4
  return config
