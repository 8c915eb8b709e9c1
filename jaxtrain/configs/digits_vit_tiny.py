"""configs/digits_vit.py at the published ViT-Ti size (width 192, 12 blocks, 3 heads), 2x2 patches.

  python -m jaxtrain.main --config=configs/digits_vit_tiny.py --workdir=runs/digits_vit_tiny

The sizes come from `jaxtrain.models.vit.PRESETS` ("small" is ViT-S: 384 wide,
6 heads). Slow on a CPU (5,345,098 parameters); meant for an accelerator.
"""

from jaxtrain.configs import digits_vit
from jaxtrain.models import vit


def get_config():
  config = digits_vit.get_config()
  for key, value in vit.PRESETS["tiny"].items():
    config.model[key] = value
  return config
