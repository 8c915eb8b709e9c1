"""Small layers the built-in models share."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
}


class Dropout(nn.Module):
  """Dropout whose rate is an array, so a tuner can change it without recompiling.

  `flax.linen.Dropout` takes its rate as a Python float fixed at construction
  (and branches on it), which would bake the hyperparameter into the program.
  """

  @nn.compact
  def __call__(self, x: jax.Array, rate: jax.Array, *, train: bool,
               width: jax.Array | None = None) -> jax.Array:
    """`width` (a padded member's live units, models/padded.py; `x` is [B, W] with the
    first `width` columns live): the live units get the mask an unpadded [B, width]
    layer draws, so a padded member drops what its solo run drops."""
    if not train:
      return x
    keep = 1.0 - jnp.asarray(rate, x.dtype)
    rng = self.make_rng("dropout")
    if width is None:
      mask = bernoulli(rng, keep, x.shape)
    else:
      # With jax_threefry_partitionable (JAX's default) element k of a draw depends on its
      # flat index k alone, so row b, column j of a [B, width] draw is element
      # b * width + j of a flat [B * W] draw (W >= width: every index exists).
      batch, padded = x.shape
      flat = bernoulli(rng, keep, (batch * padded,))
      index = (jnp.arange(batch)[:, None] * width
               + jnp.arange(padded)[None, :])
      mask = flat[jnp.minimum(index, batch * padded - 1)]
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def bernoulli(key: jax.Array, p: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """`jax.random.bernoulli(key, p, shape)`, bit for bit, drawn as one flat vector.

  Written here rather than called from JAX because of compile time: on the CPU
  backend XLA compiles JAX's draw over a ranked shape (partitionable threefry) slowly;
  `python scripts/bench_compile.py` measured 0.67 s against 0.29 s for one vmapped
  [8, 100, 100] draw, and 2.40 s against 2.02 s for configs/mnist1d_pbt.py's train
  program (two dropout layers). With jax_threefry_partitionable (JAX's default)
  element k of a draw depends only on its flat index k, so the flat draw reshaped is
  the same array
  (tests/test_models.py checks equality with jax.random.bernoulli).
  """
  if not jax.config.jax_threefry_partitionable:  # Then the flat draw is a different array.
    return jax.random.bernoulli(key, p, shape)
  return jnp.reshape(jax.random.bernoulli(key, p, (math.prod(shape),)), shape)


def maybe_remat(block_fn, remat: bool, static_argnums: tuple[int, ...] = ()):
  """`block_fn(module, *args)` wrapped in `nn.remat` when `remat` is true.

  `block_fn` creates its layers inline (in the calling module's scope), so the
  parameter tree is the same with and without remat. `static_argnums` count the
  module argument as 0, like `nn.remat`'s.
  """
  if not remat:
    return block_fn
  return nn.remat(block_fn, static_argnums=static_argnums)
