"""configs/digits_resnet.py with ResNet-34 blocks (3, 4, 6, 3 basic blocks).

  python -m jaxtrain.main --config=configs/digits_resnet34.py --workdir=runs/digits_resnet34

Expected: see docs/guide/models.md (measured on 2 CPU cores).
"""

from jaxtrain.configs import digits_resnet


def get_config():
  config = digits_resnet.get_config()
  config.model.resnet_depth = 34
  return config
