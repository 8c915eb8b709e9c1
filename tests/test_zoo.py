"""The model zoo (ResNet, ViT, Transformer LM), the `charlm` dataset and per-token steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxtrain import models
from jaxtrain.core import step as step_lib
from jaxtrain.jobs import train
from jaxtrain.config import base_config
from jaxtrain.data import catalog, charlm
from jaxtrain.models import resnet
from jaxtrain.core.state import TrainState

NO_DROP = {"dropout_rate": jnp.float32(0.0)}
# Tiny test variants of each model (config.model fields).
TINY = {
    "resnet": dict(resnet_depth=10, resnet_width=8),
    "vit": dict(width=32, depth=1, num_heads=2, mlp_ratio=2.0, patch_size=2),
    "transformer": dict(width=32, depth=2, num_heads=2, mlp_ratio=2.0),
}


def _build(name, input_shape, num_classes=10, **fields):
  c = base_config().model
  c.name = name
  for k, v in {**TINY[name], **fields}.items():
    c[k] = v
  return models.build(c, num_classes=num_classes, input_shape=input_shape)


@pytest.mark.parametrize("name,input_shape,fields", [
    ("resnet", (8, 8, 1), {}),
    pytest.param("resnet", (28, 28), dict(resnet_depth=50),  # Bottleneck blocks, no channels.
                 marks=pytest.mark.slow),
    ("resnet", (64, 64, 3), dict(resnet_stem="auto")),  # auto -> the ImageNet stem.
    ("vit", (8, 8, 1), dict(pooling="cls")),
    ("vit", (28, 28, 1), dict(pooling="mean", patch_size=7)),
])
def test_image_model_logits_shape(name, input_shape, fields, strict_dtypes):
  model = _build(name, input_shape, **fields)
  batch = {"inputs": jnp.ones((3,) + input_shape, jnp.float32)}
  variables = model.init(jax.random.PRNGKey(0), batch)
  logits, new_state = model.apply(variables, batch, jax.random.PRNGKey(1), True, NO_DROP)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert set(new_state) == ({"batch_stats"} if name == "resnet" else set())


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_transformer_is_causal(positions, strict_dtypes):
  """Changing token t+1 changes no logits at positions <= t, and does change position t+1."""
  model = _build("transformer", (12,), num_classes=50, positions=positions)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 50, jnp.int32)
  variables = model.init(jax.random.PRNGKey(1), {"inputs": tokens})
  logits, _ = model.apply(variables, {"inputs": tokens}, jax.random.PRNGKey(2), False, NO_DROP)
  assert logits.shape == (2, 12, 50) and logits.dtype == jnp.float32
  for t in (0, 5, 10):
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 7) % 50)
    new, _ = model.apply(variables, {"inputs": changed}, jax.random.PRNGKey(2), False, NO_DROP)
    np.testing.assert_array_equal(np.asarray(new[:, :t + 1]), np.asarray(logits[:, :t + 1]))
    assert not np.allclose(new[:, t + 1], logits[:, t + 1])


def test_rotary_positions_are_relative():
  """Rotary attention scores depend on the offset between positions only."""
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))
  rot = lambda x, pos: models.transformer.rotary(jnp.tile(x, (1, pos + 1, 1, 1)))[:, pos]
  score = lambda m, n: float(jnp.sum(rot(q, m) * rot(k, n)))
  assert score(3, 1) == pytest.approx(score(9, 7), rel=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


@pytest.mark.parametrize("depth,expected", [(18, 11_689_512), (34, 21_797_672),
                                            (50, 25_557_032)])
def test_resnet_param_counts_match_the_published_imagenet_models(depth, expected):
  """With the ImageNet stem, width 64 and 1000 classes: torchvision's counts, exactly.

  Shapes only (jax.eval_shape): nothing is computed or allocated.
  """
  module = resnet.ResNet(resnet.ResNetConfig(num_classes=1000, depth=depth, stem="imagenet"))
  variables = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"])) == expected


@pytest.mark.parametrize("name,input_shape,dtype", [
    pytest.param("resnet", (8, 8, 1), jnp.float32, marks=pytest.mark.slow),
    pytest.param("vit", (8, 8, 1), jnp.float32, marks=pytest.mark.slow),
    ("transformer", (8,), jnp.int32)])
def test_remat_changes_neither_parameters_nor_outputs(name, input_shape, dtype):
  batch = {"inputs": jnp.ones((2,) + input_shape, dtype)}
  outputs = {}
  for remat in (False, True):
    model = _build(name, input_shape, remat=remat, dropout_rate=0.1, depth=1)
    variables = model.init(jax.random.PRNGKey(0), batch)
    grads = jax.grad(lambda p: jnp.sum(model.apply(
        {**variables, "params": p}, batch, jax.random.PRNGKey(1), True,
        {"dropout_rate": jnp.float32(0.1)})[0]))(variables["params"])
    outputs[remat] = (variables["params"], grads)
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(chex_close, outputs[False], outputs[True])


def test_eval_step_counts_tokens_and_reports_bits_per_char():
  """Per-token eval sums: every unmasked token is one example; bits = nats / ln 2."""
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  labels = jax.random.randint(jax.random.PRNGKey(1), (3, 4), 0, 5, jnp.int32)
  model = models.Model(init=None, apply=lambda *args: (logits, {}))
  state = TrainState(step=jnp.int32(0), params={}, model_state={}, opt_state=None,
                     hparams=dict(NO_DROP), rng=jax.random.PRNGKey(0))
  batch = {"inputs": jnp.zeros((3, 4), jnp.int32), "labels": labels,
           "mask": jnp.array([1.0, 1.0, 0.0])}  # The last sequence is padding.
  sums = step_lib.eval_step(model, state, batch)
  logp = jax.nn.log_softmax(logits[:2])
  nll = -np.take_along_axis(np.asarray(logp), np.asarray(labels[:2])[..., None], -1).sum()
  correct = np.sum(np.argmax(logits[:2], -1) == labels[:2])
  assert float(sums["count"]) == 8
  np.testing.assert_allclose(float(sums["loss"]), nll, rtol=1e-5)
  np.testing.assert_allclose(float(sums["bits_per_char"]), nll / math.log(2), rtol=1e-5)
  assert float(sums["accuracy"]) == correct


def test_charlm_is_deterministic_and_split_by_file(local_tmp_path, data_dir):
  """The prepared data is a pure function of the listed stdlib files."""
  tmp_path = local_tmp_path  # A data dir: local under either scheme (docs/guide/sharding.md).
  assert not set(charlm.TRAIN_FILES) & set(charlm.TEST_FILES)
  arrays = {}
  for where in (data_dir, str(tmp_path)):  # The session's copy and a fresh preparation.
    source, info = catalog.open_split("charlm", "test", where)
    arrays[where] = catalog.load_arrays(source, info)
  assert (tmp_path / "charlm" / "1.0.0").is_dir()
  (inputs, labels), (inputs2, labels2) = arrays.values()
  np.testing.assert_array_equal(inputs, inputs2)
  np.testing.assert_array_equal(labels, labels2)
  assert info.num_classes == 256 and info.input_shape == (128,) and info.label_shape == (128,)
  assert inputs.dtype == labels.dtype == np.int32
  np.testing.assert_array_equal(inputs[:, 1:], labels[:, :-1])  # labels = next bytes
  expected_inputs, _ = charlm.windows(charlm.read_bytes(charlm.TEST_FILES))
  # TFDS stores examples in a shuffled (but fixed) order: compare as sets of rows.
  assert sorted(map(bytes, inputs.astype(np.uint8))) == sorted(
      map(bytes, expected_inputs.astype(np.uint8)))


def _loss_falls(final, workdir):
  import json  # pylint: disable=g-import-not-at-top
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert losses[-1] < 0.85 * losses[0], losses
  assert final["status"] == "completed"


def test_charlm_transformer_trains_end_to_end(tmp_path):
  c = tiny_config(**{"data.name": "charlm", "data.batch_size": 16, "data.eval_batch_size": 500,
                     "model.name": "transformer", "model.width": 32, "model.depth": 1,
                     "model.num_heads": 2, "model.positions": "rotary",
                     "model.activation": "gelu", "train.num_steps": 40,
                     "train.eval_every_steps": 40, "checkpoint.every_steps": 40})
  final = train.run(c, tmp_path)
  _loss_falls(final, tmp_path)
  metrics = final["final"]
  assert metrics["eval/bits_per_char"] == pytest.approx(metrics["eval/loss"] / math.log(2))
  assert metrics["eval/bits_per_char"] < 5.0  # Uniform over 256 bytes: 8 bits.


@pytest.mark.slow  # 10-20 s each on 2 CPU cores (mostly compilation).
@pytest.mark.parametrize("name,learning_rate,min_accuracy", [("resnet", 1e-2, 0.5),
                                                             ("vit", 3e-3, 0.4)])
def test_image_models_train_end_to_end_on_digits(name, learning_rate, min_accuracy, tmp_path):
  fields = {f"model.{k}": v for k, v in TINY[name].items()}
  c = tiny_config(**{"model.name": name, **fields, "optim.learning_rate": learning_rate,
                     "train.num_steps": 40, "train.eval_every_steps": 40,
                     "checkpoint.every_steps": 40})
  final = train.run(c, tmp_path)
  _loss_falls(final, tmp_path)
  assert final["final"]["eval/accuracy"] > min_accuracy  # Chance: 0.1.
  assert "eval/bits_per_char" not in final["final"]  # Classification is unchanged.
