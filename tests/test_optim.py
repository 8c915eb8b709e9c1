"""Optimizers: injected hyperparameters, schedules, accumulation."""

import chex
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
  chex.assert_trees_all_equal(a, b, strict=True)


def test_adam_matches_optax_adam():
  c = base_config().optim
  tx, _ = optim.build(c, 100)
  a, _ = _run(tx)
  b, _ = _run(optax.adam(1e-3))
  chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7, strict=True)


@pytest.mark.parametrize("assert_trees", [
    lambda a, b: chex.assert_trees_all_equal(a, b, strict=True),
    lambda a, b: chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6, strict=True),
], ids=["equal", "close"])
@pytest.mark.parametrize("other", [
    {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32),
     "extra": np.ones(1, np.float32)},  # An extra leaf (zip() stopped at the shorter tree).
    {"w": np.ones((2, 3), np.float32)},  # A missing leaf.
    {"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)},  # A different shape.
    {"w": np.ones((2, 3), np.float32), "b": np.float32(1.0)},  # Broadcasts without strict.
    {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float64)},  # Another dtype.
], ids=["extra_leaf", "missing_leaf", "shape", "scalar_for_array", "dtype"])
def test_tree_comparisons_fail_on_any_mismatch(assert_trees, other):
  """The comparisons every test uses (strict chex) check structure, shapes and dtypes."""
  tree = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
  assert_trees(tree, jax.tree.map(np.copy, tree))  # Equal trees pass.
  with pytest.raises(AssertionError):
    assert_trees(tree, other)
  with pytest.raises(AssertionError):
    assert_trees(other, tree)


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


def _final_params(workdir):
  """Parameters and EMA parameters of a finished run's last checkpoint (host arrays)."""
  from jaxtrain.jobs import evaluate  # pylint: disable=g-import-not-at-top
  state = evaluate.restore(workdir).state
  return jax.device_get(state.params), jax.device_get(state.ema_params)


def test_accumulation_equals_the_k_times_larger_batch_ema_included(tmp_path):
  """4 accumulated micro-batches of 32 = one batch of 128 (device pipeline, MLP, no
  dropout or BatchNorm): same examples per update, same updates, EMA once per update."""
  from jaxtrain.jobs import train  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  common = {"data.train_split": "train[:1280]",  # 1280 = 10 x 128: the epochs line up.
            "data.pipeline": "device", "train.ema_decay": 0.9, "optim.learning_rate": 1e-2,
            "optim.schedule.name": "warmup_cosine", "optim.schedule.warmup_steps": 3}
  micro = tiny_config(**common, **{"data.batch_size": 32, "optim.accumulate_steps": 4,
                                   "train.num_steps": 40, "train.eval_every_steps": 20,
                                   "train.log_every_steps": 20, "checkpoint.every_steps": 40})
  big = tiny_config(**common, **{"data.batch_size": 128, "train.num_steps": 10,
                                 "train.eval_every_steps": 5, "train.log_every_steps": 5,
                                 "checkpoint.every_steps": 10})
  train.run(micro, tmp_path / "micro")
  train.run(big, tmp_path / "big")
  (p_micro, e_micro), (p_big, e_big) = (_final_params(tmp_path / "micro"),
                                        _final_params(tmp_path / "big"))
  chex.assert_trees_all_close(p_micro, p_big, rtol=2e-5, atol=2e-6, strict=True)
  chex.assert_trees_all_close(e_micro, e_big, rtol=2e-5, atol=2e-6, strict=True)
  # The check can fail: without accumulation the 32-example run moves elsewhere.
  alone = tiny_config(**common, **{"data.batch_size": 32, "train.num_steps": 10,
                                   "train.eval_every_steps": 5, "checkpoint.every_steps": 10})
  train.run(alone, tmp_path / "alone")
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(_final_params(tmp_path / "alone")[0], p_big, rtol=2e-5,
                                atol=2e-6, strict=True)


@pytest.mark.parametrize("overrides, message", [
    ({"optim.accumulate_steps": 4, "train.num_steps": 42},
     "train.num_steps=42 is not a multiple of optim.accumulate_steps=4: the last 2 "
     "micro-steps would never make an update; use 40 or 44"),
    ({"optim.accumulate_steps": 4, "train.num_steps": 40, "optim.schedule.warmup_steps": 20},
     "optim.schedule.warmup_steps=20 must be smaller than the run's 10 optimizer updates "
     "(train.num_steps=40 / optim.accumulate_steps=4; schedules count updates)"),
])
def test_accumulation_units_are_checked_before_compiling(overrides, message, compiles):
  from jaxtrain import errors  # pylint: disable=g-import-not-at-top
  from jaxtrain.jobs import checks  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.UserError) as e:
    checks.validate(tiny_config(**overrides))
  assert str(e.value) == message and compiles == []


def test_weight_decay_mask_matches_optax_adamw_with_a_mask():
  c = base_config().optim
  c.name, c.learning_rate, c.weight_decay, c.weight_decay_mask = "adamw", 1e-2, 0.1, "matrices"
  tx, _ = optim.build(c, 10)
  reference = optax.adamw(1e-2, weight_decay=0.1, mask=lambda p: jax.tree.map(
      lambda x: x.ndim >= 2, p))
  got, _ = _run(tx)
  want, _ = _run(reference)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6, strict=True)
  c.weight_decay_mask = "all"  # The default decays the bias too: a different result.
  everything, _ = _run(optim.build(c, 10)[0])
  assert not np.allclose(np.asarray(everything["b"]), np.asarray(got["b"]))
  np.testing.assert_allclose(np.asarray(everything["w"]), np.asarray(got["w"]), rtol=1e-6)
