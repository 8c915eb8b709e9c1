"""Optax optimizers with their numeric hyperparameters as data.

`build()` returns an `optax.inject_hyperparams` transformation: learning rate,
weight decay, momentum, betas, eps and the clipping norm are array leaves of
the optimizer state, so a tuner can read and overwrite them per member without
recompiling. The learning-rate schedule is a fixed *shape* (peak 1.0) that
multiplies the tunable peak learning rate.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtrain import errors
from jaxtrain.core import param_groups

NAMES = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "warmup_cosine", "linear", "exponential", "piecewise")
DECAY_MASKS = ("all", "matrices")

# Which numeric hyperparameters each optimizer has (all become state leaves).
_HPARAMS = {
    "sgd": ("learning_rate", "weight_decay", "clip_norm"),
    "momentum": ("learning_rate", "weight_decay", "momentum", "clip_norm"),
    "adam": ("learning_rate", "weight_decay", "b1", "b2", "eps", "clip_norm"),
    "adamw": ("learning_rate", "weight_decay", "b1", "b2", "eps", "clip_norm"),
}


def hparam_names(name: str) -> tuple[str, ...]:
  """The numeric hyperparameters optimizer `name` has (each a state leaf a tuner may set)."""
  return _HPARAMS[name]


def check_config(optim_config) -> None:
  """Raises `UserError` for an unknown optimizer or schedule, a value out of its range,
  bad schedule fields or bad parameter groups."""
  for key in ("learning_rate", "accumulate_steps"):
    errors.check_positive(f"optim.{key}", optim_config[key])
  errors.check_positive("optim.schedule.transition_steps", optim_config.schedule.transition_steps)
  for key in ("weight_decay", "clip_norm", "eps"):
    errors.check_nonnegative(f"optim.{key}", optim_config[key])
  for key in ("warmup_steps", "end_factor"):
    errors.check_nonnegative(f"optim.schedule.{key}", optim_config.schedule[key])
  for key in ("momentum", "b1", "b2"):
    errors.check_in_range(f"optim.{key}", optim_config[key], 0.0, 1.0)
  if optim_config.weight_decay_mask not in DECAY_MASKS:
    raise errors.unknown_choice("optim.weight_decay_mask", optim_config.weight_decay_mask,
                                DECAY_MASKS)
  if optim_config.name not in NAMES:
    raise errors.unknown_choice("optim.name", optim_config.name, NAMES)
  sched = optim_config.schedule
  if sched.name not in SCHEDULES:
    raise errors.unknown_choice("optim.schedule.name", sched.name, SCHEDULES)
  if sched.name == "piecewise":
    if len(sched.boundaries) != len(sched.scales):
      raise errors.UserError(
          f"optim.schedule.boundaries {tuple(sched.boundaries)} and optim.schedule.scales "
          f"{tuple(sched.scales)} must have the same length")
    if list(sched.boundaries) != sorted(sched.boundaries) or any(b <= 0 for b in sched.boundaries):
      raise errors.UserError(
          f"optim.schedule.boundaries={tuple(sched.boundaries)} must be positive and increasing")
  if sched.name == "exponential" and not 0 < sched.decay_rate:
    raise errors.UserError(f"optim.schedule.decay_rate={sched.decay_rate} must be > 0")
  param_groups.check_config(optim_config)


def schedule_shape(schedule_config, num_update_steps: int) -> optax.Schedule:
  """The learning-rate multiplier as a function of the update count (peak 1.0)."""
  s = schedule_config
  warmup = int(s.warmup_steps)
  decay_steps = max(num_update_steps - warmup, 1)
  if s.name == "constant":
    main = optax.constant_schedule(1.0)
  elif s.name == "warmup_cosine":
    main = optax.cosine_decay_schedule(1.0, decay_steps, alpha=s.end_factor)
  elif s.name == "linear":
    main = optax.linear_schedule(1.0, s.end_factor, decay_steps)
  elif s.name == "exponential":
    main = optax.exponential_decay(1.0, s.transition_steps, s.decay_rate)
  elif s.name == "piecewise":
    main = optax.piecewise_constant_schedule(
        1.0, {int(b) - warmup: float(f) for b, f in zip(s.boundaries, s.scales)})
  else:
    raise errors.unknown_choice("optim.schedule.name", s.name, SCHEDULES)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def matrices_only(params):
  """Weight-decay mask: decay kernels and embeddings (2 or more dimensions), not biases
  or normalisation scales and offsets."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_transform(name: str, shape: optax.Schedule, nesterov: bool = False,
                   decay_mask: str = "all", *, clip: bool = True, decay: bool = True,
                   **hparams: Any) -> optax.GradientTransformation:
  """The optimizer `name` from explicit hyperparameter values.

  `decay_mask` (optim.weight_decay_mask): "all" decays every parameter (optax's
  default); "matrices" only those with 2 or more dimensions (`matrices_only`).
  `clip` / `decay` False: the clipping / weight decay is known to be off (its value
  is 0 and nothing searches it), so its place in the chain holds `optax.identity()`:
  the same state structure (checkpoints keep their paths), none of the work.

  Hyperparameters are cast to float32 arrays first, so the arithmetic is the
  same whether they arrive as Python floats or as injected state leaves (with
  Python floats, expressions like `1 - b1` would be folded in float64 and
  differ in the last bit).
  """
  h = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
  mask = matrices_only if decay_mask == "matrices" else None
  parts = []
  if "clip_norm" in h:
    # clip_norm = 0 means "off"; as data it must stay a branch-free expression.
    parts.append(_clip_by_global_norm_or_off(h["clip_norm"]) if clip else optax.identity())
  if name in ("sgd", "momentum", "adam"):  # L2 on the gradient.
    parts.append(optax.add_decayed_weights(h["weight_decay"], mask) if decay
                 else optax.identity())
  if name == "momentum":
    parts.append(optax.trace(decay=h["momentum"], nesterov=nesterov))
  if name in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=h["b1"], b2=h["b2"], eps=h["eps"]))
  if name == "adamw":  # Decoupled.
    parts.append(optax.add_decayed_weights(h["weight_decay"], mask) if decay
                 else optax.identity())
  parts.append(optax.scale_by_learning_rate(h["learning_rate"]))
  parts.append(optax.scale_by_schedule(shape))
  return optax.chain(*parts)


def _clip_by_global_norm_or_off(max_norm: jax.Array) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` that passes updates through when max_norm == 0."""
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    clipped, state = clip.update(updates, state, params)
    off = max_norm <= 0
    return jax.tree.map(lambda u, c: jnp.where(off, u, c), updates, clipped), state

  return optax.GradientTransformation(clip.init, update)


def hparams_of(optim_config) -> dict[str, float]:
  """The numeric hyperparameters (name -> value) the optimizer keeps in its state."""
  return {k: float(optim_config[k]) for k in _HPARAMS[optim_config.name]}


def build(optim_config, num_train_steps: int, searched: Collection[str] = ()
          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (transformation, schedule shape) for `optim_config`.

  The transformation is `inject_hyperparams`-wrapped (hyperparameters are
  state leaves) and, with `accumulate_steps > 1`, wrapped in `optax.MultiSteps`
  so gradients of that many steps are averaged into one update. The schedule
  shape counts updates, not micro-steps. `searched` names the config keys a
  tuner may change (e.g. 'optim.weight_decay'): clipping and weight decay run
  only where their value is not 0 or they are searched (otherwise each costs a
  pass over the gradients for nothing: about 15% of a small MLP's CPU step).
  """
  check_config(optim_config)
  num_updates = max(num_train_steps // optim_config.accumulate_steps, 1)
  shape = schedule_shape(optim_config.schedule, num_updates)
  name, nesterov = optim_config.name, bool(optim_config.nesterov)
  decay_mask = optim_config.weight_decay_mask
  static = {"clip": optim_config.clip_norm > 0 or "optim.clip_norm" in searched,
            "decay": optim_config.weight_decay > 0 or "optim.weight_decay" in searched}
  freeze, multipliers = tuple(optim_config.freeze), tuple(optim_config.lr_multipliers)

  # inject_hyperparams reads the factory's signature, so it names every field.
  def factory(learning_rate, weight_decay=None, momentum=None, b1=None, b2=None, eps=None,
              clip_norm=None):
    given = dict(learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum,
                 b1=b1, b2=b2, eps=eps, clip_norm=clip_norm)
    given = {k: v for k, v in given.items() if v is not None}
    if freeze or multipliers:  # Parameter groups: see jaxtrain/core/param_groups.py.
      return param_groups.grouped(
          lambda **h: make_transform(name, shape, nesterov, decay_mask, decay=static["decay"],
                                     **h),
          lambda norm: (_clip_by_global_norm_or_off(jnp.asarray(norm, jnp.float32))
                        if static["clip"] else optax.identity()), given,
          freeze, multipliers)
    return make_transform(name, shape, nesterov, decay_mask, **static, **given)

  tx = optax.inject_hyperparams(factory)(**hparams_of(optim_config))
  if optim_config.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim_config.accumulate_steps)
  return tx, shape


def _find_inject_state(opt_state):
  if isinstance(opt_state, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)):
    return opt_state
  if isinstance(opt_state, optax.MultiStepsState):
    return _find_inject_state(opt_state.inner_opt_state)
  raise ValueError(f"no injected hyperparameters in optimizer state {type(opt_state)}")


def get_hparams(opt_state) -> dict[str, jax.Array]:
  """The optimizer's hyperparameters (name -> array) from its state."""
  return dict(_find_inject_state(opt_state).hyperparams)


def set_hparams(opt_state, values: dict[str, jax.Array]):
  """A copy of `opt_state` with some hyperparameters replaced (pure)."""
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state._replace(inner_opt_state=set_hparams(opt_state.inner_opt_state, values))
  inject = _find_inject_state(opt_state)
  unknown = set(values) - set(inject.hyperparams)
  if unknown:
    raise KeyError(f"optimizer has no hyperparameters {sorted(unknown)}")
  hyperparams = dict(inject.hyperparams)
  for k, v in values.items():
    hyperparams[k] = jnp.asarray(v, hyperparams[k].dtype)
  return inject._replace(hyperparams=hyperparams)


def update_applied(opt_state) -> jax.Array | None:
  """Whether the step that returned `opt_state` applied an update: with gradient
  accumulation (`optax.MultiSteps`), only every `accumulate_steps`-th micro-step
  does. None without accumulation (every step does)."""
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.mini_step == 0
  return None


def update_count(opt_state) -> jax.Array:
  """Number of optimizer updates applied so far (micro-steps / accumulate_steps)."""
  return _find_inject_state(opt_state).count

