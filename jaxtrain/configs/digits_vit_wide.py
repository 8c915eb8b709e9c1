"""configs/digits_vit.py at width 128 (4 heads of 32).

  python -m jaxtrain.main --config=configs/digits_vit_wide.py --workdir=runs/digits_vit_wide

Expected: see docs/guide/models.md (measured on 2 CPU cores).
"""

from jaxtrain.configs import digits_vit


def get_config():
  config = digits_vit.get_config()
  config.model.width = 128
  return config
