"""Optimizers: injected hyperparameters, schedules, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain.core import optim
from jaxtrain.config import base_config


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(4, 3),
          "b": jnp.full((3,), 0.5, jnp.float32)}


def _run(tx, steps=8):
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(steps):
    grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.1 * i, params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("name", optim.NAMES)
@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine"])
def test_injected_matches_unwrapped_bit_for_bit(name, schedule):
  c = base_config().optim
  c.name, c.weight_decay, c.clip_norm = name, 1e-2, 0.5
  c.schedule.name, c.schedule.warmup_steps = schedule, 2
  shape = optim.schedule_shape(c.schedule, 10)
  hparams = optim.hparams_of(c)
  injected, _ = optim.build(c, 10)
  unwrapped = optim.make_transform(name, shape, **hparams)  # Plain Python floats.
  a, _ = _run(injected)
  b, _ = _run(unwrapped)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_adam_matches_optax_adam():
  c = base_config().optim
  tx, _ = optim.build(c, 100)
  a, _ = _run(tx)
  b, _ = _run(optax.adam(1e-3))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_hyperparameters_are_state_leaves_and_settable():
  c = base_config().optim
  c.name = "adamw"
  tx, _ = optim.build(c, 100)
  state = tx.init(_params())
  h = optim.get_hparams(state)
  assert set(h) == {"learning_rate", "weight_decay", "b1", "b2", "eps", "clip_norm"}
  assert all(isinstance(v, jax.Array) for v in h.values())
  state2 = optim.set_hparams(state, {"learning_rate": 0.5})
  assert float(optim.get_hparams(state2)["learning_rate"]) == 0.5
  assert jax.tree.structure(state) == jax.tree.structure(state2)
  with pytest.raises(KeyError):
    optim.set_hparams(state, {"momentum": 0.1})


def test_changing_learning_rate_does_not_recompile():
  c = base_config().optim
  tx, _ = optim.build(c, 100)
  traces = []

  @jax.jit
  def step(state, params, grads):
    traces.append(1)
    return tx.update(grads, state, params)

  params = _params()
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for lr in (1e-3, 1e-2, 0.3):
    updates, state = step(optim.set_hparams(state, {"learning_rate": lr}), params, grads)
  assert len(traces) == 1


def test_schedule_shapes():
  c = base_config().optim.schedule
  c.name, c.warmup_steps, c.end_factor = "warmup_cosine", 10, 0.1
  s = optim.schedule_shape(c, 110)
  assert float(s(0)) == 0.0
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(110)) == pytest.approx(0.1, rel=1e-5)
  c.name, c.warmup_steps = "piecewise", 0
  c.boundaries, c.scales = (5, 8), (0.5, 0.1)
  s = optim.schedule_shape(c, 10)
  assert [float(s(i)) for i in (4, 5, 8)] == pytest.approx([1.0, 0.5, 0.05])
  c.name, c.decay_rate, c.transition_steps = "exponential", 0.5, 10
  s = optim.schedule_shape(c, 100)
  assert float(s(20)) == pytest.approx(0.25)
  c.name, c.end_factor = "linear", 0.0
  s = optim.schedule_shape(c, 100)
  assert float(s(50)) == pytest.approx(0.5)


def test_clip_norm_clips_and_zero_means_off():
  c = base_config().optim
  c.name, c.clip_norm = "sgd", 1.0
  tx, _ = optim.build(c, 10)
  params = {"w": jnp.zeros((4,), jnp.float32)}
  grads = {"w": jnp.full((4,), 10.0, jnp.float32)}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(1e-3, rel=1e-5)
  c.clip_norm = 0.0
  tx, _ = optim.build(c, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(20.0 * 1e-3, rel=1e-5)


def test_gradient_accumulation_averages_micro_batches():
  c = base_config().optim
  c.name, c.learning_rate, c.accumulate_steps = "sgd", 0.1, 2
  tx, _ = optim.build(c, 10)
  params = {"w": jnp.zeros((2,), jnp.float32)}
  state = tx.init(params)
  u1, state = tx.update({"w": jnp.array([1.0, 0.0])}, state, params)
  assert np.all(np.asarray(u1["w"]) == 0.0)  # First micro-step: no update yet.
  u2, state = tx.update({"w": jnp.array([3.0, 2.0])}, state, params)
  np.testing.assert_allclose(np.asarray(u2["w"]), [-0.2, -0.1], rtol=1e-6)
  assert int(optim.update_count(state)) == 1
