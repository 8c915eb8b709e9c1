"""Metrics as small pytrees of sums that live inside jit.

A metrics value is a dict of float32 sums plus a `count`; `merge` adds two,
`compute` turns sums into means. The train loop folds every step's metrics
into an on-device accumulator and pulls it to the host only when it logs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Metrics that are reported as their latest value rather than a mean.
LATEST = ("learning_rate",)


def zeros_like(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return jax.tree.map(jnp.zeros_like, metrics)


def merge(total: dict[str, jax.Array], new: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Adds sums; keeps the newest value of `LATEST` metrics."""
  return {k: (new[k] if k in LATEST else total[k] + new[k]) for k in total}


def compute(metrics: dict, prefix: str = "") -> dict[str, float]:
  """Host-side means: every sum divided by `count` (which is dropped)."""
  metrics = jax.device_get(metrics)
  count = float(np.asarray(metrics["count"]))
  out = {}
  for k, v in metrics.items():
    if k == "count":
      continue
    v = float(np.asarray(v))
    out[prefix + k] = v if k in LATEST else v / max(count, 1.0)
  return out


def classification_sums(logits_BxC: jax.Array, labels_B: jax.Array, loss_B: jax.Array,
                        mask_B: jax.Array | None = None) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the (masked) batch, and the count."""
  if mask_B is None:
    mask_B = jnp.ones(labels_B.shape, jnp.float32)
  correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
  return {"loss": jnp.sum(loss_B * mask_B),
          "accuracy": jnp.sum(correct_B * mask_B),
          "count": jnp.sum(mask_B)}
