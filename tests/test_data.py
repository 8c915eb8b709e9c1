"""Embedded TFDS datasets and the two input pipelines."""

import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import errors
from jaxtrain.data import catalog, pipeline


@pytest.mark.parametrize("name,split,size,shape", [
    ("digits", "train", 1437, (8, 8, 1)),
    ("digits", "test", 360, (8, 8, 1)),
    ("mnist1d", "train", 4000, (40,)),
    ("mnist1d", "test", 1000, (40,)),
])
def test_embedded_datasets_through_tfds_data_source(name, split, size, shape):
  source, info = catalog.open_split(name, split)
  assert len(source) == size
  assert info.input_shape == shape and info.num_classes == 10
  inputs, labels = catalog.load_arrays(source, info)
  assert inputs.shape == (size,) + shape and inputs.dtype == np.float32
  assert labels.dtype == np.int32 and set(np.unique(labels)) == set(range(10))


def test_tfds_data_source_reads_the_registered_builder(data_dir):
  import tensorflow_datasets as tfds
  catalog.open_split("digits", "train")  # Prepared on first use.
  source = tfds.data_source("digits", split="test", data_dir=data_dir, download=False)
  assert len(source) == 360


def test_digits_split_is_fixed():
  # The split and values must not change between machines or versions: runs
  # are compared by params_sha256. Changing it on purpose means a new version.
  inputs, labels = catalog.load_arrays(*catalog.open_split("digits", "test"))
  digest = hashlib.sha256(inputs.tobytes() + labels.tobytes()).hexdigest()[:16]
  assert float(inputs.max()) == 1.0 and float(inputs.min()) == 0.0
  assert digest == DIGITS_TEST_SHA


def test_split_slicing_works_like_tfds():
  source, _ = catalog.open_split("digits", "train[:10%]")
  assert len(source) == 144


def test_missing_catalog_dataset_is_one_clear_line(tmp_path):
  with pytest.raises(errors.UserError) as e:
    catalog.open_split("mnist", "train", str(tmp_path))
  message = str(e.value)
  assert "mnist" in message and str(tmp_path) in message and "array_record" in message
  assert "\n" not in message


def test_unknown_split_lists_the_available_ones():
  with pytest.raises(errors.UserError, match="available splits: test, train"):
    catalog.open_split("digits", "validation")


def test_device_batches_cover_each_epoch_once():
  n, batch = 10, 3
  data = {"labels": jnp.arange(n, dtype=jnp.int32)}
  key = jax.random.PRNGKey(0)
  def labels_at(step):
    order = pipeline.refresh_order(pipeline.new_epoch_order(n), key, step, n, batch)
    return pipeline.device_batch(data, order, step, batch)["labels"]
  get = jax.jit(labels_at)
  epoch0 = np.concatenate([np.asarray(get(s)) for s in range(3)])
  epoch1 = np.concatenate([np.asarray(get(s)) for s in range(3, 6)])
  assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9  # Remainder dropped.
  assert not np.array_equal(epoch0, epoch1)  # A fresh permutation per epoch.
  np.testing.assert_array_equal(np.asarray(get(4)), np.asarray(get(4)))


def test_epoch_order_cache_recomputes_only_at_epoch_boundaries():
  n, batch = 10, 3
  key = jax.random.PRNGKey(0)
  cache = pipeline.new_epoch_order(n)
  refresh = jax.jit(lambda c, s: pipeline.refresh_order(c, key, s, n, batch))
  epochs = []
  for step in range(7):
    cache = refresh(cache, step)
    epochs.append(int(cache.epoch))
    np.testing.assert_array_equal(
        np.asarray(cache.order), np.asarray(pipeline.epoch_permutation(key, step // 3, n)))
  assert epochs == [0, 0, 0, 1, 1, 1, 2]
  # Population version: members at different steps keep their own epochs.
  keys = jnp.stack([key, jax.random.PRNGKey(1)])
  orders = pipeline.refresh_orders(pipeline.new_epoch_order(n, (2,)), keys,
                                   jnp.asarray([1, 4]), n, batch)
  assert np.asarray(orders.epoch).tolist() == [0, 1]
  np.testing.assert_array_equal(np.asarray(orders.order[1]),
                                np.asarray(pipeline.epoch_permutation(keys[1], 1, n)))


def test_grain_iterator_resumes_exactly():
  source, info = catalog.open_split("digits", "train")
  key = jax.random.PRNGKey(3)
  data = pipeline.GrainData(source, info, batch_size=64, data_key=key)
  for _ in range(30):  # Past the first epoch (22 batches).
    next(data)
  state = data.iterator.get_state()
  expected = [next(data)["labels"] for _ in range(5)]
  fresh = pipeline.GrainData(source, info, batch_size=64, data_key=key)
  fresh.iterator.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(fresh)["labels"], want)


def test_grain_and_device_batches_have_the_same_form():
  config = __import__("jaxtrain.config", fromlist=["base_config"]).base_config().data
  config.batch_size = 16
  for kind in ("device", "grain"):
    config.pipeline = kind
    data, _ = pipeline.create_train_data(config, seed=0)
    batch = data.sample_batch()
    assert batch["inputs"].shape == (16, 8, 8, 1) and batch["inputs"].dtype == np.float32
    assert batch["labels"].shape == (16,) and batch["labels"].dtype == np.int32


def test_grain_and_device_paths_give_the_same_example_sequence():
  """Same seed, same examples in the same order, epoch after epoch (the last partial
  batch of each epoch dropped by both): data.pipeline=auto cannot change a run."""
  config = __import__("jaxtrain.config", fromlist=["base_config"]).base_config().data
  config.batch_size = 100  # 1437 examples: 14 batches an epoch, 37 left out of each.
  config.pipeline = "device"
  device, _ = pipeline.create_train_data(config, seed=5)
  config.pipeline = "grain"
  grain_data, _ = pipeline.create_train_data(config, seed=5)

  @jax.jit
  def batch_at(order, step):
    order = pipeline.refresh_order(order, device.data_key, step, device.num_examples, 100)
    return pipeline.device_batch(device.arrays, order, step, 100), order

  order = pipeline.new_epoch_order(device.num_examples)
  for step in range(3 * 14 + 2):  # Three epochs and into the fourth.
    want, order = batch_at(order, step)
    got = next(grain_data)
    np.testing.assert_array_equal(got["labels"], np.asarray(want["labels"]), err_msg=str(step))
    np.testing.assert_array_equal(got["inputs"], np.asarray(want["inputs"]), err_msg=str(step))


def test_eval_batches_pad_and_mask():
  inputs = np.arange(10, dtype=np.float32)[:, None]
  labels = np.arange(10, dtype=np.int32)
  batches = list(pipeline.eval_batches(inputs, labels, 4))
  assert [b["inputs"].shape for b in batches] == [(4, 1)] * 3
  assert batches[-1]["mask"].tolist() == [1, 1, 0, 0]
  assert sum(b["mask"].sum() for b in batches) == 10


DIGITS_TEST_SHA = "ea1d0dae64d87510"


def test_permute_features_is_one_fixed_permutation():
  x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  a = pipeline.permute_features(x, 7)
  assert a.shape == x.shape
  assert sorted(a[0].ravel().tolist()) == x[0].ravel().tolist()
  # Same positions moved for every example.
  np.testing.assert_array_equal(a[1] - a[0], np.full((3, 4), 12.0))
  np.testing.assert_array_equal(pipeline.permute_features(x, 0), x)


@pytest.mark.slow
def test_processes_starting_together_prepare_an_embedded_dataset_once(local_tmp_path):
  """The hosts of one run share the data dir: preparing it concurrently raced (one
  process failed while its peers waited for it in jax.distributed)."""
  tmp_path = local_tmp_path  # A data dir: local under either scheme (docs/guide/sharding.md).
  import subprocess
  import sys
  code = ("import sys; from jaxtrain.data import catalog; "
          "source, info = catalog.open_split('digits', 'train', sys.argv[1]); print(len(source))")
  env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "data")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], [e[-1500:] for _, e in outs]
  assert len({o.strip() for o, _ in outs}) == 1 and int(outs[0][0]) > 1000
