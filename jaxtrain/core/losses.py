"""Loss functions. Hyperparameters arrive as arrays, never as Python constants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxtrain import errors


def check_config(loss_config) -> None:
  """Raises `UserError` for a label smoothing outside [0, 1)."""
  errors.check_in_range("loss.label_smoothing", loss_config.label_smoothing, 0.0, 1.0)


def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array,
                  label_smoothing: jax.Array | float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy with (array) label smoothing; shape [B]."""
  num_classes = logits_BxC.shape[-1]
  targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxC.astype(jnp.float32), targets_BxC)
