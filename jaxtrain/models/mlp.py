"""Multi-layer perceptron classifier."""

from __future__ import annotations

import dataclasses
from typing import Any

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
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False  # Recompute each block's activations in the backward pass.


class MLP(nn.Module):
  """Flatten -> [Dense -> (BatchNorm) -> act -> (Dropout)] * n -> Dense(num_classes).

  Logits are float32 whatever the compute dtype (the loss and softmax run in float32).
  """
  config: MLPConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_rate: jax.Array = 0.0,
               hidden_widths: jax.Array | None = None) -> jax.Array:
    """`hidden_widths` (a padded population's member, models/padded.py): how many units
    of each hidden layer are live; the rest output exactly zero."""
    cfg = self.config
    act = layers.ACTIVATIONS[cfg.activation]
    x_BxD = jnp.reshape(x, (x.shape[0], -1))

    def block(unused_module, x_BxD, rate, width, live):
      x_BxD = nn.Dense(width, dtype=cfg.dtype)(x_BxD)
      if cfg.batch_norm:
        x_BxD = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             dtype=cfg.dtype)(x_BxD)
      x_BxD = act(x_BxD)
      if live is not None:  # Padded units: zero whatever the activation makes of 0.
        x_BxD = jnp.where(jnp.arange(width) < live, x_BxD, jnp.zeros_like(x_BxD))
      if cfg.dropout:
        x_BxD = layers.Dropout()(x_BxD, rate, train=train, width=live)
      return x_BxD

    # The functional form of nn.remat keeps the parameter tree (and so the
    # initialization) identical to the plain model.
    block = layers.maybe_remat(block, cfg.remat, static_argnums=(3,))
    for i, width in enumerate(cfg.hidden_sizes):
      live = None if hidden_widths is None else jnp.asarray(hidden_widths[i]).astype(jnp.int32)
      x_BxD = block(self, x_BxD, dropout_rate, width, live)
    return nn.Dense(cfg.num_classes, dtype=cfg.dtype)(x_BxD).astype(jnp.float32)
