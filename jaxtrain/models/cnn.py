"""Convolutional classifier for 1D signals (B, L[, C]) and 2D images (B, H, W, C)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.models import layers


@dataclasses.dataclass(frozen=True)
class CNNConfig:
  num_classes: int
  spatial_dims: int  # 1 for signals, 2 for images.
  features: tuple[int, ...] = (32, 64)
  kernel_size: int = 3
  dense_size: int = 128
  activation: str = "relu"
  batch_norm: bool = False
  dropout: bool = False
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False  # Recompute each block's activations in the backward pass.


class CNN(nn.Module):
  """[Conv -> (BatchNorm) -> act] per block, 2x max-pool between blocks,
  global average pool, Dense -> act -> (Dropout) -> Dense(num_classes)."""
  config: CNNConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_rate: jax.Array = 0.0) -> jax.Array:
    cfg = self.config
    act = layers.ACTIVATIONS[cfg.activation]
    if x.ndim == cfg.spatial_dims + 1:  # No channel axis: add one.
      x = x[..., None]
    kernel = (cfg.kernel_size,) * cfg.spatial_dims
    window = (2,) * cfg.spatial_dims

    def block(unused_module, x, width, pool):
      x = nn.Conv(width, kernel, padding="SAME", dtype=cfg.dtype)(x)
      if cfg.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=cfg.dtype)(x)
      x = act(x)
      if pool:
        x = nn.max_pool(x, window, strides=window)
      return x

    block = layers.maybe_remat(block, cfg.remat, static_argnums=(2, 3))
    for i, width in enumerate(cfg.features):
      # Pool between blocks while the (unpooled) map is at least 2 wide.
      pool = i < len(cfg.features) - 1 and min(x.shape[1:-1]) >= 2
      x = block(self, x, width, pool)
    x_BxC = jnp.mean(x, axis=tuple(range(1, 1 + cfg.spatial_dims)))
    x_BxD = act(nn.Dense(cfg.dense_size, dtype=cfg.dtype)(x_BxC))
    if cfg.dropout:
      x_BxD = layers.Dropout()(x_BxD, dropout_rate, train=train)
    return nn.Dense(cfg.num_classes, dtype=cfg.dtype)(x_BxD).astype(jnp.float32)
