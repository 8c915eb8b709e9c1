"""Exponential moving average (EMA) of the parameters, kept in the train state.

With `train.ema_decay > 0` the state carries `ema_params` (same tree as
`params`, started from the initial, or `init_from`, parameters) and the decay as
the hyperparameter leaf `hparams["ema_decay"]`, so it is checkpointed and
resumes bitwise like everything else. After every train step
`ema = decay * ema + (1 - decay) * params`. The loop evaluates the average
alongside the raw parameters (`eval/ema_accuracy`, `eval/ema_loss`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain import errors

KEY = "ema_decay"


def check_config(train_config) -> None:
  """Raises `UserError` unless 0 <= `train.ema_decay` < 1."""
  if train_config.ema_decay < 0 or not train_config.ema_decay < 1:
    raise errors.UserError(f"train.ema_decay={train_config.ema_decay} must be in [0, 1) "
                           "(0 = off; e.g. 0.99)")


def hparams(train_config) -> dict[str, float]:
  """{'ema_decay': d} when EMA is on, else {} (added to the state's hparams)."""
  decay = float(train_config.ema_decay)
  return {KEY: decay} if decay > 0 else {}


def update(ema_params, params, decay: jax.Array):
  """One EMA step (pure): decay * ema + (1 - decay) * params, in each leaf's dtype."""
  def mix(e, p):
    d = jnp.asarray(decay, e.dtype)
    return d * e + (1 - d) * p.astype(e.dtype)
  return jax.tree.map(mix, ema_params, params)


def as_params(state):
  """The state with its EMA parameters in place of the raw ones (for evaluation)."""
  return state.replace(params=state.ema_params)
