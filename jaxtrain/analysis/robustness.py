"""Accuracy under input perturbations: Gaussian noise, FGSM and PGD (pure, jittable).

`logits_fn(inputs) -> logits` is the model in eval mode with its variables
closed over. Perturbed inputs stay inside [low, high] (the value range of the
evaluation split), so an image stays an image. PGD starts at the clean input
(no random start), so at eps = 0 both attacks return the clean input exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LogitsFn = Callable[[jax.Array], jax.Array]


def _loss(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array) -> jax.Array:
  # A sum, not a mean: each example's gradient is then its own loss's gradient.
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
      logits_fn(x).astype(jnp.float32), labels))


def fgsm(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, eps: jax.Array,
         low: jax.Array, high: jax.Array) -> jax.Array:
  """Fast gradient sign method: one step of size eps up the loss's gradient sign."""
  grad = jax.grad(_loss, argnums=1)(logits_fn, x, labels)
  return jnp.clip(x + eps * jnp.sign(grad), low, high)


def pgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, eps: jax.Array,
        low: jax.Array, high: jax.Array, steps: int) -> jax.Array:
  """Projected gradient descent (L-inf ball of radius eps), step size 2.5 eps / steps."""
  step_size = 2.5 * eps / steps

  def body(_, x_adv):
    grad = jax.grad(_loss, argnums=1)(logits_fn, x_adv, labels)
    x_adv = jnp.clip(x_adv + step_size * jnp.sign(grad), x - eps, x + eps)
    return jnp.clip(x_adv, low, high)

  return jax.lax.fori_loop(0, steps, body, x)


def gaussian_noise(x: jax.Array, sigma: jax.Array, key: jax.Array,
                   low: jax.Array, high: jax.Array, index_B: jax.Array) -> jax.Array:
  """x plus i.i.d. N(0, sigma^2) noise, clipped to [low, high].

  Args:
    x: a batch of inputs [B, ...].
    sigma: the noise standard deviation.
    key: the key of this noise level.
    low, high: the value range the noisy inputs are clipped to.
    index_B: each example's index in the split (int [B]).

  Example b's noise comes from fold_in(key, index_B[b]): it depends on the
  example, not on its batch or its position there, so every batch size gives
  the same noisy split (one key per batch would repeat a draw every B examples).
  """
  def draw(index):
    return jax.random.normal(jax.random.fold_in(key, index), x.shape[1:], x.dtype)
  return jnp.clip(x + sigma * jax.vmap(draw)(index_B), low, high)

