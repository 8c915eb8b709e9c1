"""Saliency and integrated gradients of one class score (pure, jittable).

`logits_fn(inputs_BxD...) -> logits_BxC` is the model in eval mode. Examples
in a batch are independent at eval time, so the gradient of the sum of each
example's target logit gives every example's own gradient in one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]


def target_logits(logits_fn: LogitsFn, x: jax.Array, targets_B: jax.Array) -> jax.Array:
  """Each example's logit of its target class, shape [B]."""
  logits = logits_fn(x).astype(jnp.float32)
  return jnp.take_along_axis(logits, targets_B[:, None], -1)[:, 0]


def saliency(logits_fn: LogitsFn, x: jax.Array, targets_B: jax.Array) -> jax.Array:
  """Gradient of the target logit with respect to the input (same shape as x)."""
  return jax.grad(lambda v: jnp.sum(target_logits(logits_fn, v, targets_B)))(x)


def integrated_gradients(logits_fn: LogitsFn, x: jax.Array, baseline: jax.Array,
                         targets_B: jax.Array, steps: int) -> jax.Array:
  """Integrated gradients (Sundararajan et al. 2017) along the straight path.

  (x - baseline) times the path average of the gradient, the average taken by
  the trapezoid rule over `steps` intervals; the attributions of an example
  sum to about target_logit(x) - target_logit(baseline) (completeness).
  """
  alphas = jnp.linspace(0.0, 1.0, steps + 1)
  weights = jnp.full((steps + 1,), 1.0 / steps).at[0].mul(0.5).at[-1].mul(0.5)

  def grad_at(alpha):
    return saliency(logits_fn, baseline + alpha * (x - baseline), targets_B)

  # lax.map keeps one path point's activations alive at a time (vmap would hold all).
  grads = jax.lax.map(grad_at, alphas)
  mean_grad = jnp.tensordot(weights, grads, axes=1)
  return (x - baseline) * mean_grad
