"""Models as two pure functions, and the built-in Flax models.

The loop sees a model only through `Model.init(rng, batch) -> variables` and
`Model.apply(variables, batch, rng, train, hparams) -> (logits, new_mutable)`.
`hparams` holds model-side hyperparameters as arrays (e.g. `dropout_rate`), so
a tuner can change them without recompiling. Any Flax module whose `__call__`
takes `(inputs, *, train, **hparams)` plugs in through `from_flax`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxtrain import errors
from jaxtrain.models import cnn, layers, mlp, reference, rnn, zoo

NAMES = ("mlp", "cnn", "gru", "lstm") + zoo.NAMES
# The top-level `precision` key: "bf16" computes in bfloat16 (parameters stay float32).
PRECISIONS = ("f32", "bf16")
MODEL_HPARAMS = ("dropout_rate",)
# A padded population's per-member layer widths (models/padded.py): a float32 vector in
# the state's hparams, passed to the model like its other hyperparameters.
WIDTHS_KEY = "hidden_widths"


def model_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
  """The model-side hyperparameters of a state's `hparams`, as `Model.apply` takes them."""
  out = {k: hparams[k] for k in MODEL_HPARAMS}
  if WIDTHS_KEY in hparams:
    out[WIDTHS_KEY] = hparams[WIDTHS_KEY]
  return out


@dataclasses.dataclass(frozen=True)
class Model:
  init: Callable[[jax.Array, dict], dict]
  apply: Callable[..., tuple[jax.Array, dict]]
  # The Flax (linen) module behind `from_flax`, for calling it directly
  # (`module.apply(variables, inputs, train=False)`); None for a model that is not
  # one module, e.g. a LoRA wrapper (core/lora.py).
  module: Any = None
  # `param_mask(model_hparams) -> tree of bools like params`, or None: the parameters a
  # member really has (a padded population's, models/padded.py). The train step zeroes
  # the gradients and updates of the others, so they stay exactly as initialised (zero).
  param_mask: Callable[[dict[str, Any]], Any] | None = None


def from_flax(module, takes: set[str] | None = None) -> Model:
  """Adapts a Flax linen module to the `Model` contract.

  Every variable collection other than `params` (e.g. `batch_stats`) is treated
  as mutable model state during training. `takes`: the keywords (`train`, model
  hyperparameters) the module's `__call__` accepts, None for all (the built-ins).
  """
  def keywords(train: bool, hparams: dict[str, Any]) -> dict[str, Any]:
    given = {"train": train, **hparams}
    return given if takes is None else {k: v for k, v in given.items() if k in takes}

  def init(rng: jax.Array, batch: dict) -> dict:
    params_rng, dropout_rng = jax.random.split(rng)
    return dict(module.init({"params": params_rng, "dropout": dropout_rng},
                            batch["inputs"], **keywords(False, {})))

  def apply(variables: dict, batch: dict, rng: jax.Array, train: bool,
            hparams: dict[str, Any]) -> tuple[jax.Array, dict]:
    mutable = [k for k in variables if k != "params"] if train else []
    mutable = mutable or False  # Flax returns (out, state) for any list, even [].
    out = module.apply(variables, batch["inputs"], rngs={"dropout": rng},
                       mutable=mutable, **keywords(train, hparams))
    if mutable:
      logits, new_state = out
      return logits, dict(new_state)
    return out, {}

  return Model(init=init, apply=apply, module=module)


def check_config(model_config) -> None:
  """Raises `UserError` for an unknown model name or a bad model field."""
  if reference.is_reference(model_config.name):  # A user's module: it must import.
    reference.load(model_config.name)
  elif model_config.name not in NAMES:
    raise errors.unknown_choice("model.name", model_config.name,
                                NAMES + ("package.module:Attr (your own Flax module)",))
  errors.check_in_range("model.dropout_rate", model_config.dropout_rate, 0.0, 1.0)
  if model_config.activation not in layers.ACTIVATIONS:
    raise errors.unknown_choice("model.activation", model_config.activation, layers.ACTIVATIONS)
  for key in ("hidden_sizes", "features"):
    sizes = tuple(model_config[key])
    if (key == "features" or sizes) and (not sizes or any(
        not isinstance(s, int) or s <= 0 for s in sizes)):
      raise errors.UserError(f"model.{key}={sizes!r} must be a tuple of positive integers")
  for key in ("kernel_size", "dense_size", "rnn_size", "rnn_layers"):
    if model_config[key] <= 0:
      raise errors.UserError(f"model.{key}={model_config[key]!r} must be > 0")
  zoo.check_config(model_config)  # resnet, vit, transformer fields.


def check_precision(precision: str) -> None:
  """Raises `UserError` unless `precision` (the config's top-level key) is known."""
  if precision not in PRECISIONS:
    raise errors.unknown_choice("precision", precision, PRECISIONS)


def build(model_config, num_classes: int, input_shape: tuple[int, ...],
          force_dropout: bool = False, precision: str = "f32") -> Model:
  """Builds the model named by `model_config.name` (typed config made here, at the edge).

  Dropout layers exist when `dropout_rate > 0`, or with `force_dropout` (a tuner
  searching the rate needs them even where a member's rate is 0). `precision`
  ("f32" | "bf16", the config's `precision`) sets the compute `dtype`; every
  model config also takes `remat` (rematerialize each block).
  """
  check_config(model_config)
  if reference.is_reference(model_config.name):
    module = reference.build(model_config.name, dict(model_config.kwargs), num_classes)
    takes = reference.call_keywords(module)
    if (model_config.dropout_rate > 0 or force_dropout) and not (
        takes is None or "dropout_rate" in takes):
      raise errors.UserError(
          f"model.dropout_rate is set or searched, but {model_config.name}'s __call__ does not "
          "take dropout_rate; add a dropout_rate keyword (used by its nn.Dropout layers) or "
          "leave model.dropout_rate at 0")
    return from_flax(module, takes)
  common = dict(num_classes=num_classes, activation=model_config.activation,
                batch_norm=model_config.batch_norm,
                dropout=model_config.dropout_rate > 0 or force_dropout,
                dtype=jnp.bfloat16 if precision == "bf16" else jnp.float32,
                remat=bool(model_config.get("remat", False)))
  if model_config.name == "mlp":
    return from_flax(mlp.MLP(mlp.MLPConfig(
        hidden_sizes=tuple(model_config.hidden_sizes), **common)))
  if model_config.name in ("gru", "lstm"):
    return from_flax(rnn.RNNClassifier(rnn.RNNConfig(
        num_classes=num_classes, cell=model_config.name, size=model_config.rnn_size,
        num_layers=model_config.rnn_layers, dropout=common["dropout"], dtype=common["dtype"],
        remat=common["remat"])))
  if model_config.name in zoo.NAMES:
    return from_flax(zoo.build(model_config, num_classes, input_shape, common))
  spatial_dims = 1 if len(input_shape) == 1 else len(input_shape) - 1
  if spatial_dims not in (1, 2):
    raise errors.UserError(
        f"model.name='cnn' needs inputs of shape (L,), (L, C) or (H, W, C); got {input_shape}")
  return from_flax(cnn.CNN(cnn.CNNConfig(
      spatial_dims=spatial_dims, features=tuple(model_config.features),
      kernel_size=model_config.kernel_size, dense_size=model_config.dense_size, **common)))
