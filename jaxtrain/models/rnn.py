"""Recurrent sequence classifiers: a GRU or LSTM over (B, L[, C]) inputs."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.models import layers


@dataclasses.dataclass(frozen=True)
class RNNConfig:
  num_classes: int
  cell: str = "gru"  # gru | lstm
  size: int = 64
  num_layers: int = 1
  dropout: bool = False
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False  # Recompute each time step's activations in the backward pass.


class RNNClassifier(nn.Module):
  """Stacked GRU/LSTM layers; the last time step's state feeds a Dense head."""
  config: RNNConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_rate: jax.Array = 0.0) -> jax.Array:
    cfg = self.config
    if x.ndim == 2:  # (B, L): one feature per time step.
      x = x[..., None]
    x_BxLxD = jnp.reshape(x, (x.shape[0], x.shape[1], -1))
    cell = nn.GRUCell if cfg.cell == "gru" else nn.OptimizedLSTMCell
    if cfg.remat:  # nn.RNN names its cell "cell": the parameter tree does not change.
      cell = nn.remat(cell)
    for _ in range(cfg.num_layers):
      x_BxLxD = nn.RNN(cell(features=cfg.size, dtype=cfg.dtype))(x_BxLxD)
    h_BxD = x_BxLxD[:, -1]
    if cfg.dropout:
      h_BxD = layers.Dropout()(h_BxD, dropout_rate, train=train)
    return nn.Dense(cfg.num_classes, dtype=cfg.dtype)(h_BxD).astype(jnp.float32)
