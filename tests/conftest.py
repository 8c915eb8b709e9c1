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


# JAXTRAIN_TEST_WORKDIR_SCHEME=gs runs the suite with every `tmp_path` on gs:// (a local
# GCS emulator, tests/gcs_emulator.py) instead of the local disk: the workdirs, records,
# checkpoints and TensorBoard files the tests write go through the cloud code paths.
# `tmp_path_factory` (module fixtures, the data dir) stays local.
WORKDIR_SCHEME = os.environ.get("JAXTRAIN_TEST_WORKDIR_SCHEME", "")
if WORKDIR_SCHEME not in ("", "gs"):
  raise pytest.UsageError(f"JAXTRAIN_TEST_WORKDIR_SCHEME={WORKDIR_SCHEME!r}: '' (local) or 'gs'")


@pytest.fixture(scope="session")
def gcs_root():
  """gs://BUCKET on the local GCS emulator (started once per session), as a path."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tests import gcs_emulator  # pylint: disable=g-import-not-at-top
  return epath.Path(gcs_emulator.start())


@pytest.fixture
def gcs_path(gcs_root, request):
  """A fresh folder on the GCS emulator for one test: gs://BUCKET/<test name>-<n>."""
  import uuid  # pylint: disable=g-import-not-at-top
  name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in request.node.name)[:60]
  return gcs_root / f"{name}-{uuid.uuid4().hex[:8]}"


if WORKDIR_SCHEME == "gs":

  @pytest.fixture
  def tmp_path(gcs_path):  # pylint: disable=function-redefined
    return gcs_path


@pytest.fixture
def local_tmp_path(tmp_path_factory):
  """A fresh local folder under either scheme, for what is local by nature: a config
  or model file Python imports, an OS lock, file modes, a data dir."""
  return tmp_path_factory.mktemp("local")


# Scheme-neutral file helpers for tests (pathlib's rglob and shutil work on local
# paths only; gcsfs refuses `**` globs): plain iterdir/read_bytes/write_bytes, which
# both pathlib and epath have.


def files_under(root) -> list:
  """Every file below `root` (recursively), sorted; none when `root` does not exist
  (as pathlib's rglob)."""
  out = []
  if not root.is_dir():
    return out
  for p in root.iterdir():
    out.extend(files_under(p) if p.is_dir() else [p])
  return sorted(out)


def copy_tree(source, target) -> None:
  """Copies the folder `source` to `target` file by file (either may be gs://)."""
  for p in files_under(source):
    dest = target / str(p.relative_to(source))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(p.read_bytes())


def remove_tree(root) -> None:
  """Removes the folder `root` (local or gs://)."""
  if hasattr(root, "rmtree"):  # An epath (gs://).
    root.rmtree()
  else:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(root)


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
