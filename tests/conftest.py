"""Shared test setup: 8 fake CPU devices, strict dtypes, one data dir per session."""

import os
import types

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxtrain.config import base_config  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
  """Embedded datasets are prepared once per session into a private dir."""
  path = os.environ.get("JAXTRAIN_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  os.environ["JAXTRAIN_DATA_DIR"] = path
  return path


def tiny_config(**overrides):
  """A digits MLP small enough to train in about a second."""
  c = base_config()
  c.data.batch_size = 32
  c.model.hidden_sizes = (64,)
  c.optim.learning_rate = 1e-2
  c.train.num_steps = 60
  c.train.eval_every_steps = 20
  c.train.log_every_steps = 10
  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 2
  # One device, as golden values were recorded; sharding tests ask for the 8 fake ones
  # (mesh.num_devices=0) explicitly. Tuning tests keep the default (members over all 8).
  c.mesh.num_devices = 1
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def recipe_for(config, input_shape, num_classes=10):
  """`setup.recipe` of `config` for inputs of `input_shape` (no dataset read)."""
  from jaxtrain.jobs import setup  # pylint: disable=g-import-not-at-top
  info = types.SimpleNamespace(num_classes=num_classes, input_shape=tuple(input_shape))
  return setup.recipe(config, info)


@pytest.fixture
def compiles():
  """A list that gets one entry per XLA compilation while the test runs."""
  events = []

  def listener(event, duration_secs, **kwargs):
    del duration_secs, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def strict_dtypes():
  with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
    yield
