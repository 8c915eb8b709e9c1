"""The train state: one pytree holding everything that is saved and restored."""

from __future__ import annotations

import hashlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain import models


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue, and nothing else.

  Attributes:
    step: number of train steps taken (int32 scalar).
    params: trainable parameters.
    model_state: mutable model collections (e.g. `batch_stats`), maybe empty.
    opt_state: optimizer state; its numeric hyperparameters live inside it.
    hparams: model- and loss-side hyperparameters as float32 scalars
      (`dropout_rate`, `label_smoothing`), data like the optimizer's.
    rng: base PRNG key; step `s` uses `fold_in(rng, s)`.
    ema_params: moving average of `params` when `hparams` has `ema_decay`
      (see jaxtrain/core/ema.py), else None (no leaves).
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  hparams: dict[str, jax.Array]
  rng: jax.Array
  ema_params: Any = None


def create(model: models.Model, tx: optax.GradientTransformation, sample_batch: dict,
           hparams: dict[str, float], rng: jax.Array) -> TrainState:
  """Initializes a state (pure; jit it to build it on device in one program)."""
  init_rng, train_rng = jax.random.split(rng)
  variables = model.init(init_rng, sample_batch)
  params = variables.pop("params")
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=variables,
      opt_state=tx.init(params),
      hparams={k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()},
      rng=train_rng,
      ema_params=params if "ema_decay" in hparams else None,
  )


def init_key(seed, member=-1) -> jax.Array:
  """The key a run's state is created from: PRNGKey(seed), or for member `member`
  (>= 0; a Python int or a traced int32) of a population fold_in(PRNGKey(seed), member).

  One definition for the tuner's members and for a single run with tune.member set, so
  that the two start from the same state (the member-equivalence guarantee)."""
  key = jax.random.PRNGKey(seed)
  if isinstance(member, int) and member < 0:
    return key
  return jax.random.fold_in(key, member)


def params_sha256(params) -> str:
  """sha256 over the raw bytes of every parameter leaf, in sorted path order.

  A fingerprint that compares runs from outside: bitwise-equal parameters
  give the same digest on any machine and byte order is little-endian here.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  digest = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()


def num_params(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
