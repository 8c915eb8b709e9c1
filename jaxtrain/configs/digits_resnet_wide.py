"""configs/digits_resnet.py at the standard ResNet-18 width (64 channels in the first stage).

  python -m jaxtrain.main --config=configs/digits_resnet_wide.py --workdir=runs/digits_resnet_wide

Expected: see docs/guide/models.md (measured on 2 CPU cores).
"""

from jaxtrain.configs import digits_resnet


def get_config():
  config = digits_resnet.get_config()
  config.model.resnet_width = 64
  return config
