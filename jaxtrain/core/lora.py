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

Parameters that `train_full` selects (peft's `modules_to_save`: e.g. a new
head left at its random initialization by `init_from.exclude`) are not frozen:
they stay in `params` and are trained whole, next to the adapters.

`merge(variables, scale)` turns a wrapped model's variables back into the base
model's (adapters folded into the kernels): the export after a LoRA run.

Members of a tuning population may differ in rank and alpha and still share one
program (`wrap(..., member_rank=True)`): every member holds adapters of the
largest rank R, and its own rank r and scale alpha / r are hyperparameter leaves
(`RANK`, `SCALE`). Columns r..R of A and rows r..R of B are masked to zero in
every apply, so they contribute nothing to the output and receive exactly zero
gradient; `mask_rank` zeroes them at initialization too, so the optimizer never
moves them, and `slice_rank` cuts a member back to its own rank. A is drawn
column by column (column k from its own key), so the first r columns of a rank-R
draw are the rank-r draw: a padded member starts where a run at its own rank starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxtrain import errors
from jaxtrain.models import Model
from jaxtrain.core.param_groups import path_str

BASE = "lora_base"  # The collection holding the frozen base parameters.
ADAPTERS = ("lora_a", "lora_b")  # The last path component of every adapter leaf.
_INPUT_FIRST = ("query", "key", "value")
RANK, SCALE = "lora_rank", "lora_scale"  # A padded member's rank and alpha / rank (hparams).
HPARAMS = (RANK, SCALE)


def check_config(model_config) -> None:
  """Raises `UserError` for a bad rank, alpha or target regex."""
  if model_config.lora_rank < 0:
    raise errors.UserError(f"model.lora_rank={model_config.lora_rank} must be >= 0 (0 = off)")
  if not model_config.lora_alpha > 0:
    raise errors.UserError(f"model.lora_alpha={model_config.lora_alpha} must be > 0")
  for key, patterns in (("model.lora_targets", [model_config.lora_targets]),
                        ("model.lora_train_full", model_config.lora_train_full)):
    for pattern in patterns:
      try:
        re.compile(pattern)
      except re.error as e:
        raise errors.UserError(f"{key} regex {pattern!r} does not compile ({e}); fix the "
                               "regular expression") from None


def scale_of(model_config) -> float:
  return float(model_config.lora_alpha) / int(model_config.lora_rank)


def maybe_wrap(model: Model, model_config,
               train_full: Callable[[str], bool] | None = None,
               member_rank: bool = False) -> Model:
  """`wrap(model, ...)` when `model.lora_rank > 0`, else `model` unchanged.

  Parameters whose path matches a `model.lora_train_full` regex, or for which
  `train_full(path)` is true, are trained whole instead of frozen. `member_rank`:
  `model.lora_rank` is the padded rank of a population whose members read their
  own rank and scale from the state (`wrap`).
  """
  if model_config.lora_rank <= 0:
    return model
  patterns = [re.compile(p) for p in model_config.lora_train_full]

  def full(path: str) -> bool:
    return any(p.search(path) for p in patterns) or bool(train_full and train_full(path))

  return wrap(model, int(model_config.lora_rank), scale_of(model_config),
              model_config.lora_targets, train_full=full,
              freeze_batch_stats=bool(model_config.lora_freeze_batch_stats),
              member_rank=member_rank)


def member_hparams(rank: int, alpha: float) -> dict[str, float]:
  """The state leaves of a padded member of rank `rank` (see `wrap`): its scale
  computed as a single run computes it (`scale_of`), then stored as float32."""
  return {RANK: float(rank), SCALE: float(alpha) / int(rank)}


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


def is_adapter(path: str) -> bool:
  """Whether a '/'-joined path inside `params` names an adapter matrix."""
  return path.rsplit("/", 1)[-1] in ADAPTERS


def split(params) -> tuple[dict[str, Any], dict[str, Any]]:
  """({path: adapter leaf}, {path: leaf trained whole}) of a wrapped model's params."""
  adapters, full = {}, {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = path_str(key_path)
    (adapters if is_adapter(path) else full)[path] = leaf
  return adapters, full


def _adapters_by_path(adapters: dict[str, Any]) -> dict[str, dict]:
  """{'Dense_0/kernel': {'lora_a': A, 'lora_b': B}} from {'Dense_0/kernel/lora_a': A, ...}."""
  out: dict[str, dict] = {}
  for path, leaf in adapters.items():
    kernel_path, _, name = path.rpartition("/")
    out.setdefault(kernel_path, {})[name] = leaf
  return out


def merge_params(base_params, params, scale: float):
  """The base model's parameters: `scale * A @ B` added to every adapted kernel of
  `base_params`, and the whole-trained leaves of `params` put back in place (pure)."""
  adapters, full = split(params)
  by_path = _adapters_by_path(adapters)

  def merged(key_path, w):
    ab = by_path.get(path_str(key_path))
    if ab is None:
      return w
    delta = (ab["lora_a"] @ ab["lora_b"]).reshape(w.shape)
    return w + jnp.asarray(scale, w.dtype) * delta.astype(w.dtype)

  out = jax.tree_util.tree_map_with_path(merged, base_params)
  if full:
    out = jax.tree.map(lambda x: x, out)  # A copy: the leaves are set below.
    for path, leaf in full.items():
      _set(out, path, leaf)
  return out


def base_tree(params, model_state: dict):
  """The base model's parameter tree (frozen base and whole-trained leaves), unmerged:
  the paths and shapes a checkpoint of the base model has."""
  out = jax.tree.map(lambda x: x, model_state[BASE])
  for path, leaf in split(params)[1].items():
    _set(out, path, leaf)
  return out


def with_base_tree(params, model_state: dict, new_base):
  """(params, model_state) with the base tree replaced by `new_base` (see `base_tree`):
  frozen paths go to `lora_base`, whole-trained ones to `params`."""
  flat = {path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(new_base)[0]}

  def take(key_path, old):
    path = path_str(key_path)
    return old if is_adapter(path) else flat[path]

  new_frozen = jax.tree_util.tree_map_with_path(take, model_state[BASE])
  return jax.tree_util.tree_map_with_path(take, params), {**model_state, BASE: new_frozen}


def _columns(rng: jax.Array, d_in: int, rank: int, dtype) -> jax.Array:
  """[d_in, rank] standard normals, column k drawn from fold_in(rng, k): the first r
  columns do not depend on `rank` (a padded member starts as its own rank would)."""
  draw = lambda k: jax.random.normal(jax.random.fold_in(rng, k), (d_in,), dtype)
  return jax.vmap(draw, out_axes=1)(jnp.arange(rank))


def _rank_masks(path: str, leaf: jax.Array, rank) -> jax.Array | None:
  """The 0/1 mask of an adapter leaf's first `rank` components (None: not an adapter)."""
  name = path.rsplit("/", 1)[-1]
  if name not in ADAPTERS or leaf.ndim != 2:
    return None
  axis = 1 if name == "lora_a" else 0  # A [d_in, R]: columns; B [R, d_out]: rows.
  keep = (jnp.arange(leaf.shape[axis]) < rank).astype(leaf.dtype)
  return keep[None, :] if axis == 1 else keep[:, None]


def mask_rank(tree, rank):
  """`tree` (params, or anything shaped like them: optimizer moments) with every
  adapter's components past `rank` (a scalar, maybe traced) set to zero (pure)."""
  def masked(key_path, leaf):
    mask = _rank_masks(path_str(key_path), leaf, rank)
    return leaf if mask is None else leaf * mask
  return jax.tree_util.tree_map_with_path(masked, tree)


def slice_rank(tree, rank: int):
  """`tree` with every adapter leaf cut to its first `rank` components: a padded
  member's params, optimizer state or EMA as a run of rank `rank` holds them."""
  def cut(key_path, leaf):
    name = path_str(key_path).rsplit("/", 1)[-1]
    if name == "lora_a" and leaf.ndim == 2:
      return leaf[:, :rank]
    if name == "lora_b" and leaf.ndim == 2:
      return leaf[:rank, :]
    return leaf
  return jax.tree_util.tree_map_with_path(cut, tree)


def wrap(model: Model, rank: int, scale: float, targets: str,
         train_full: Callable[[str], bool] | None = None,
         freeze_batch_stats: bool = False, member_rank: bool = False) -> Model:
  """A `Model` that trains rank-`rank` adapters on the kernels matching `targets`.

  Leaves for which `train_full(path)` is true are trained whole (not adapted, not
  frozen). With `freeze_batch_stats` the base model's mutable collections (BatchNorm
  running statistics) keep their values during training; otherwise they update as
  they would in the base model. With `member_rank`, `rank` is the padded rank R and
  each apply reads the member's own rank and scale from `hparams[RANK]`,
  `hparams[SCALE]` (`scale` is unused): see the module docstring.
  """
  pattern = re.compile(targets)

  def init(rng: jax.Array, batch: dict) -> dict:
    base_rng, lora_rng = jax.random.split(rng)
    variables = dict(model.init(base_rng, batch))
    base_params = variables.pop("params")
    trainable: dict = {}
    leaves = jax.tree_util.tree_flatten_with_path(base_params)[0]
    full = {path_str(k) for k, _ in leaves if train_full is not None and train_full(path_str(k))}
    for i, (key_path, w) in enumerate(leaves):
      path = path_str(key_path)
      if path in full:
        _set(trainable, path, w)
        continue
      if w.ndim < 2 or not pattern.search(path):
        continue
      d_in, d_out = matrix_shape(path, w.shape)
      # A ~ N(0, 1/d_in), B = 0 so the delta starts at 0. (peft draws A kaiming-uniform,
      # variance 1/(3 d_in); the scale of A only rescales the adapters' learning rate.)
      a = _columns(jax.random.fold_in(lora_rng, i), d_in, rank, w.dtype)
      _set(trainable, path + "/lora_a", a / jnp.sqrt(jnp.asarray(d_in, w.dtype)))
      _set(trainable, path + "/lora_b", jnp.zeros((rank, d_out), w.dtype))
    if not any(is_adapter(p) for p in split(trainable)[0]):
      names = ", ".join(path_str(k) for k, w in leaves if w.ndim >= 2)
      raise errors.UserError(
          f"model.lora_targets={targets!r} matches no kernel of this model; its kernels "
          f"are: {names}")
    if full:  # The frozen base holds the other leaves only.
      frozen: dict = {}
      for key_path, w in leaves:
        if path_str(key_path) not in full:
          _set(frozen, path_str(key_path), w)
      base_params = frozen
    return {"params": trainable, BASE: base_params, **variables}

  def apply(variables: dict, batch: dict, rng: jax.Array, train: bool, hparams) -> tuple:
    variables = dict(variables)
    params, base_params = variables.pop("params"), variables.pop(BASE)
    member_scale = scale
    if member_rank:  # A padded member: its own rank's components only.
      hparams = dict(hparams)
      params = mask_rank(params, hparams.pop(RANK))
      member_scale = hparams.pop(SCALE)
    merged = merge_params(base_params, params, member_scale)
    logits, new_state = model.apply({"params": merged, **variables}, batch, rng, train, hparams)
    if freeze_batch_stats:
      new_state = {}
    return logits, new_state

  return Model(init=init, apply=apply)


def adapted_paths(params) -> dict[str, list[str]]:
  """{'adapted': kernel paths with adapters, 'trained_full': leaves trained whole}."""
  adapters, full = split(params)
  return {"adapted": sorted(_adapters_by_path(adapters)), "trained_full": sorted(full)}


def merge(params, model_state: dict, scale: float) -> tuple:
  """(params, model_state) of the base model from a wrapped model's: adapters merged."""
  model_state = dict(model_state)
  base_params = model_state.pop(BASE)
  return merge_params(base_params, params, scale), model_state
