"""ResNet v1.5 classifiers (He et al. 2016): basic blocks (18/34) and bottleneck blocks (50+).

Batch norm after every convolution; the stride of a bottleneck sits on its 3x3
convolution (v1.5, as in torchvision and the Flax ImageNet example). Two stems:
`imagenet` (7x7/2 convolution + 3x3/2 max-pool, for 224x224 inputs) and `small`
(one 3x3/1 convolution, no pooling, for 8x8 / 28x28 / 32x32 images, where the
ImageNet stem would shrink the image to nothing). With the ImageNet stem, width
64 and 1000 classes the parameter counts are the published ones: 11,689,512
(18), 21,797,672 (34), 25,557,032 (50).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.models import layers

# Depth -> (blocks per stage, bottleneck blocks?). 10 is the tiny test variant.
STAGES = {
    10: ((1, 1, 1, 1), False),
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
STEMS = ("auto", "small", "imagenet")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  num_classes: int
  depth: int = 18  # A key of STAGES.
  width: int = 64  # Channels of the stem and the first stage; doubled at each stage.
  stem: str = "small"  # small | imagenet (models.build resolves "auto").
  activation: str = "relu"
  dropout: bool = False  # Dropout before the head; its rate is a hyperparameter.
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False  # Recompute each block's activations in the backward pass.


def stem_for(input_shape: tuple[int, ...]) -> str:
  """'imagenet' for images at least 64 pixels on a side, else 'small'."""
  return "imagenet" if min(input_shape[:2]) >= 64 else "small"


class Block(nn.Module):
  """One residual block: basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x channels)."""
  width: int
  strides: int
  bottleneck: bool
  train: bool
  activation: str
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    act = layers.ACTIVATIONS[self.activation]
    conv = lambda features, kernel, strides=1, name=None: nn.Conv(
        features, (kernel, kernel), (strides, strides), padding=[(kernel // 2,) * 2] * 2,
        use_bias=False, dtype=self.dtype, name=name)
    norm = lambda name=None, **kw: nn.BatchNorm(
        use_running_average=not self.train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
        name=name, **kw)
    if self.bottleneck:
      out_width = 4 * self.width
      y = act(norm()(conv(self.width, 1)(x_BxHxWxC)))
      y = act(norm()(conv(self.width, 3, self.strides)(y)))
      y = conv(out_width, 1)(y)
    else:
      out_width = self.width
      y = act(norm()(conv(self.width, 3, self.strides)(x_BxHxWxC)))
      y = conv(self.width, 3)(y)
    # The last norm of each block starts at zero: a block without a projection starts
    # as the identity (one with a projection starts as its projected shortcut).
    y = norm(scale_init=nn.initializers.zeros)(y)
    shortcut = x_BxHxWxC
    if self.strides != 1 or x_BxHxWxC.shape[-1] != out_width:
      shortcut = norm(name="proj_norm")(conv(out_width, 1, self.strides, name="proj_conv")(
          x_BxHxWxC))
    return act(y + shortcut)


class ResNet(nn.Module):
  """Stem -> 4 stages of residual blocks -> global average pool -> (Dropout) -> Dense."""
  config: ResNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_rate: jax.Array = 0.0) -> jax.Array:
    cfg = self.config
    act = layers.ACTIVATIONS[cfg.activation]
    stage_sizes, bottleneck = STAGES[cfg.depth]
    if x.ndim == 3:  # (B, H, W): add the channel axis.
      x = x[..., None]
    x = x.astype(cfg.dtype)
    if cfg.stem == "imagenet":
      x = nn.Conv(cfg.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                  dtype=cfg.dtype, name="stem_conv")(x)
    else:
      x = nn.Conv(cfg.width, (3, 3), padding="SAME", use_bias=False, dtype=cfg.dtype,
                  name="stem_conv")(x)
    x = act(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=cfg.dtype, name="stem_norm")(x))
    if cfg.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    # nn.remat on the class; `train` is a module field, so no static arguments.
    block_cls = nn.remat(Block) if cfg.remat else Block
    for stage, num_blocks in enumerate(stage_sizes):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block_cls(width=cfg.width * 2**stage, strides=strides, bottleneck=bottleneck,
                      train=train, activation=cfg.activation, dtype=cfg.dtype,
                      name=f"stage{stage + 1}_block{i + 1}")(x)
    x_BxC = jnp.mean(x, axis=(1, 2))
    if cfg.dropout:
      x_BxC = layers.Dropout()(x_BxC, dropout_rate, train=train)
    return nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="head")(x_BxC).astype(jnp.float32)
