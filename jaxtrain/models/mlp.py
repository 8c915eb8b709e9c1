"""Multi-layer perceptron classifier."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.models import layers


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  num_classes: int
  hidden_sizes: tuple[int, ...] = (256, 256)
  activation: str = "relu"
  batch_norm: bool = False
  dropout: bool = False  # Whether dropout layers exist; their rate is a hyperparameter.


class MLP(nn.Module):
  """Flatten -> [Dense -> (BatchNorm) -> act -> (Dropout)] * n -> Dense(num_classes)."""
  config: MLPConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_rate: jax.Array = 0.0) -> jax.Array:
    cfg = self.config
    act = layers.ACTIVATIONS[cfg.activation]
    x_BxD = jnp.reshape(x, (x.shape[0], -1))
    for width in cfg.hidden_sizes:
      x_BxD = nn.Dense(width)(x_BxD)
      if cfg.batch_norm:
        x_BxD = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x_BxD)
      x_BxD = act(x_BxD)
      if cfg.dropout:
        x_BxD = layers.Dropout()(x_BxD, dropout_rate, train=train)
    return nn.Dense(cfg.num_classes)(x_BxD)
