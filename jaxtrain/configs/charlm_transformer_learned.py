"""configs/charlm_transformer.py with a learned position table instead of rotary embeddings.

  python -m jaxtrain.main --config=configs/charlm_transformer_learned.py \
    --workdir=runs/charlm_transformer_learned

Expected: see docs/guide/models.md (measured on 2 CPU cores).
"""

from jaxtrain.configs import charlm_transformer


def get_config():
  config = charlm_transformer.get_config()
  config.model.positions = "learned"
  return config
