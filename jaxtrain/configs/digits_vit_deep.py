"""configs/digits_vit.py with 8 blocks instead of 4.

  python -m jaxtrain.main --config=configs/digits_vit_deep.py --workdir=runs/digits_vit_deep

Expected: see docs/guide/models.md (measured on 2 CPU cores).
"""

from jaxtrain.configs import digits_vit


def get_config():
  config = digits_vit.get_config()
  config.model.depth = 8
  return config
