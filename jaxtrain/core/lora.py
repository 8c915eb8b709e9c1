"""LoRA: low-rank adapters as a parameter-tree transformation around `Model.apply`.

`wrap(model, ...)` returns a `Model` whose trainable `params` are only the
adapters: for every kernel whose '/'-joined path matches `targets`, a pair
`{kernel_path}/lora_a` [d_in, r] and `{kernel_path}/lora_b` [r, d_out]. The
base model's parameters move to the non-trainable collection `lora_base`
(model state: saved and restored, never differentiated, no optimizer state).
Every apply computes `W + scale * (A @ B)` (reshaped to W's shape) and calls the
base model with the merged tree, so it works for any model that follows the
`Model` contract, the Flax zoo models included.

Kernels with more than two dimensions are viewed as matrices: Flax attention
projections `query`/`key`/`value` ([D, heads, head_dim]) split after the first
axis, everything else (the attention `out` projection [heads, head_dim, D],
convolutions) before the last axis. B starts at zero, so a wrapped model
computes exactly what the base model computes until it is trained.

`merge(variables, scale)` turns a wrapped model's variables back into the base
model's (adapters folded into the kernels): the export after a LoRA run.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp

from jaxtrain import errors
from jaxtrain.models import Model
from jaxtrain.core.param_groups import path_str

BASE = "lora_base"  # The collection holding the frozen base parameters.
_INPUT_FIRST = ("query", "key", "value")


def check_config(model_config) -> None:
  """Raises `UserError` for a bad rank, alpha or target regex."""
  if model_config.lora_rank < 0:
    raise errors.UserError(f"model.lora_rank={model_config.lora_rank} must be >= 0 (0 = off)")
  if not model_config.lora_alpha > 0:
    raise errors.UserError(f"model.lora_alpha={model_config.lora_alpha} must be > 0")
  try:
    re.compile(model_config.lora_targets)
  except re.error as e:
    raise errors.UserError(f"model.lora_targets regex {model_config.lora_targets!r} does not "
                           f"compile ({e}); fix the regular expression") from None


def scale_of(model_config) -> float:
  return float(model_config.lora_alpha) / int(model_config.lora_rank)


def maybe_wrap(model: Model, model_config) -> Model:
  """`wrap(model, ...)` when `model.lora_rank > 0`, else `model` unchanged."""
  if model_config.lora_rank <= 0:
    return model
  return wrap(model, int(model_config.lora_rank), scale_of(model_config),
              model_config.lora_targets)


def matrix_shape(path: str, shape: tuple[int, ...]) -> tuple[int, int]:
  """(d_in, d_out) of a kernel viewed as a matrix (see the module docstring)."""
  parent = path.split("/")[-2] if "/" in path else ""
  split = 1 if (len(shape) > 2 and parent in _INPUT_FIRST) else len(shape) - 1
  return math.prod(shape[:split]), math.prod(shape[split:])


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _adapters_by_path(adapters) -> dict[str, dict]:
  """{'Dense_0/kernel': {'lora_a': A, 'lora_b': B}} from the nested adapter tree."""
  out: dict[str, dict] = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(adapters)[0]:
    kernel_path, _, name = path_str(key_path).rpartition("/")
    out.setdefault(kernel_path, {})[name] = leaf
  return out


def merge_params(base_params, adapters, scale: float):
  """Base parameters with `scale * A @ B` added to every adapted kernel (pure)."""
  by_path = _adapters_by_path(adapters)

  def merged(key_path, w):
    ab = by_path.get(path_str(key_path))
    if ab is None:
      return w
    delta = (ab["lora_a"] @ ab["lora_b"]).reshape(w.shape)
    return w + jnp.asarray(scale, w.dtype) * delta.astype(w.dtype)

  return jax.tree_util.tree_map_with_path(merged, base_params)


def wrap(model: Model, rank: int, scale: float, targets: str) -> Model:
  """A `Model` that trains rank-`rank` adapters on the kernels matching `targets`."""
  pattern = re.compile(targets)

  def init(rng: jax.Array, batch: dict) -> dict:
    base_rng, lora_rng = jax.random.split(rng)
    variables = dict(model.init(base_rng, batch))
    base_params = variables.pop("params")
    adapters: dict = {}
    leaves = jax.tree_util.tree_flatten_with_path(base_params)[0]
    for i, (key_path, w) in enumerate(leaves):
      path = path_str(key_path)
      if w.ndim < 2 or not pattern.search(path):
        continue
      d_in, d_out = matrix_shape(path, w.shape)
      # A ~ N(0, 1/d_in) as in LoRA's Kaiming-style init; B = 0 so the delta starts at 0.
      a = jax.random.normal(jax.random.fold_in(lora_rng, i), (d_in, rank), w.dtype)
      _set(adapters, path + "/lora_a", a / jnp.sqrt(jnp.asarray(d_in, w.dtype)))
      _set(adapters, path + "/lora_b", jnp.zeros((rank, d_out), w.dtype))
    if not adapters:
      names = ", ".join(path_str(k) for k, w in leaves if w.ndim >= 2)
      raise errors.UserError(
          f"model.lora_targets={targets!r} matches no kernel of this model; its kernels "
          f"are: {names}")
    return {"params": adapters, BASE: base_params, **variables}

  def apply(variables: dict, batch: dict, rng: jax.Array, train: bool, hparams) -> tuple:
    variables = dict(variables)
    adapters, base_params = variables.pop("params"), variables.pop(BASE)
    merged = merge_params(base_params, adapters, scale)
    return model.apply({"params": merged, **variables}, batch, rng, train, hparams)

  return Model(init=init, apply=apply)


def merge(params, model_state: dict, scale: float) -> tuple:
  """(params, model_state) of the base model from a wrapped model's: adapters merged."""
  model_state = dict(model_state)
  base_params = model_state.pop(BASE)
  return merge_params(base_params, params, scale), model_state
