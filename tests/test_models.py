"""Built-in models through the init/apply contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import models
from jaxtrain.config import base_config


def _build(name, input_shape, **fields):
  c = base_config().model
  c.name = name
  for k, v in fields.items():
    c[k] = v
  return models.build(c, num_classes=10, input_shape=input_shape)


@pytest.mark.parametrize("name,input_shape", [
    ("mlp", (8, 8, 1)), ("mlp", (40,)), ("cnn", (8, 8, 1)), ("cnn", (40,)), ("cnn", (40, 2)),
])
def test_logits_shape(name, input_shape, strict_dtypes):
  model = _build(name, input_shape, features=(4, 8), dense_size=16, hidden_sizes=(16,))
  batch = {"inputs": jnp.ones((3,) + input_shape, jnp.float32)}
  variables = model.init(jax.random.PRNGKey(0), batch)
  logits, new_state = model.apply(variables, batch, jax.random.PRNGKey(1), False,
                                  {"dropout_rate": jnp.float32(0.0)})
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert new_state == {}


def test_batch_norm_state_is_updated_in_training():
  model = _build("cnn", (8, 8, 1), features=(4,), dense_size=8, batch_norm=True)
  batch = {"inputs": jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 1))}
  variables = model.init(jax.random.PRNGKey(0), batch)
  assert "batch_stats" in variables
  _, new_state = model.apply(variables, batch, jax.random.PRNGKey(1), True,
                             {"dropout_rate": jnp.float32(0.0)})
  before = jax.tree.leaves(variables["batch_stats"])[0]
  after = jax.tree.leaves(new_state["batch_stats"])[0]
  assert not np.allclose(before, after)


def test_dropout_rate_is_data_not_a_constant():
  model = _build("mlp", (8,), hidden_sizes=(64,), dropout_rate=0.5)
  batch = {"inputs": jnp.ones((4, 8), jnp.float32)}
  variables = model.init(jax.random.PRNGKey(0), batch)
  traces = []

  @jax.jit
  def forward(rate):
    traces.append(1)
    return model.apply(variables, batch, jax.random.PRNGKey(1), True, {"dropout_rate": rate})[0]

  no_drop = forward(jnp.float32(0.0))
  some_drop = forward(jnp.float32(0.5))
  eval_out = model.apply(variables, batch, jax.random.PRNGKey(1), False,
                         {"dropout_rate": jnp.float32(0.5)})[0]
  assert len(traces) == 1
  np.testing.assert_allclose(no_drop, eval_out, rtol=1e-6)
  assert not np.allclose(no_drop, some_drop)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_recurrent_classifiers(name):
  model = _build(name, (40,), rnn_size=8)
  batch = {"inputs": jnp.ones((3, 40), jnp.float32)}
  variables = model.init(jax.random.PRNGKey(0), batch)
  logits, _ = model.apply(variables, batch, jax.random.PRNGKey(1), False,
                          {"dropout_rate": jnp.float32(0.0)})
  assert logits.shape == (3, 10)


def test_logistic_regression_is_an_mlp_without_hidden_layers():
  model = _build("mlp", (40,), hidden_sizes=())
  variables = model.init(jax.random.PRNGKey(0), {"inputs": jnp.ones((2, 40))})
  assert [x.shape for x in jax.tree.leaves(variables["params"])] == [(10,), (40, 10)]


@pytest.mark.parametrize("shape", [(7,), (8, 100), (3, 5, 11)])
def test_dropout_draws_jaxs_bernoulli_bit_for_bit(shape):
  """`layers.bernoulli` (one flat draw, reshaped; faster to compile: bench_compile.py) is
  JAX's `jax.random.bernoulli` at the same key, probability and shape."""
  from jaxtrain.models import layers
  keys = jax.random.split(jax.random.PRNGKey(5), 4)
  p = jnp.float32(0.7)
  ours = jax.jit(jax.vmap(lambda k: layers.bernoulli(k, p, shape)))(keys)
  theirs = jax.jit(jax.vmap(lambda k: jax.random.bernoulli(k, p, shape)))(keys)
  np.testing.assert_array_equal(ours, theirs)
  assert 0 < np.mean(ours) < 1  # Not all one value: the draw is random.
  np.testing.assert_array_equal(jax.jit(lambda k: layers.bernoulli(k, p, shape))(keys[0]),
                                theirs[0])  # Un-vmapped too.
