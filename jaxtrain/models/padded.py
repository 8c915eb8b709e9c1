"""Members of different widths in one program: a model padded to the widest, with masks.

A search over `model.hidden_sizes` with `tune.pad_widths` trains members whose
hidden layers differ in width (same depth) in one compiled population: every
member holds the parameters of the padded model (each layer as wide as the
widest choice), its real parameters in the leading corner of each array and
zeros elsewhere. Which choice a member is lives in its state as data
(`hparams[models.WIDTHS_KEY]`, the member's hidden sizes), so exploiting a
member of another width copies that width along with the parameters.

Three things keep the padded units out of a member's computation:
- `init_at`: a member is initialised at its own width (Flax draws a (in, 256)
  kernel's numbers differently from a (in, 64) kernel's) and embedded into the
  padded arrays, the rest zero;
- the model zeroes the padded units' activations (`mlp.MLP(hidden_widths=...)`),
  so they reach no output and the padded parameters get zero gradients;
- `Model.param_mask` tells the train step which entries are real: the
  gradients and updates of the others are set to zero there, so they stay
  exactly zero through any optimizer (weight decay, Adam's moments, eps = 0).

A member's real part then follows the arithmetic of an unpadded run of its own
width (tests/test_widths.py: within 1e-5 over 200 steps). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import models


def widest(choices: Sequence[Sequence[int]]) -> tuple[int, ...]:
  """Each layer's widest size over `choices` (all of one depth)."""
  depths = {len(c) for c in choices}
  if len(depths) != 1:
    raise ValueError(f"padded widths need choices of one depth; got {sorted(depths)}")
  return tuple(int(max(sizes)) for sizes in zip(*choices))


@dataclasses.dataclass(frozen=True)
class Padded:
  """A padded model and, per width choice, the unpadded model and its shapes."""
  model: models.Model  # The padded model, with `param_mask`.
  choices: tuple[tuple[int, ...], ...]  # Hidden sizes of each choice (one depth).
  sizes: tuple[int, ...]  # The padded hidden sizes (`widest(choices)`).
  solo: tuple[models.Model, ...]  # The unpadded model of each choice.
  solo_shapes: tuple[Any, ...]  # Each choice's variables, abstract (jax.eval_shape).
  shapes: Any  # The padded model's variables, abstract.

  def index(self, widths: jax.Array) -> jax.Array:
    """The choice (int32 index) whose hidden sizes are `widths` ([depth] floats)."""
    table = jnp.asarray(self.choices, jnp.float32)
    return jnp.argmax(jnp.all(table == widths[None, :], axis=1)).astype(jnp.int32)

  def init_at(self, rng: jax.Array, batch: dict, widths: jax.Array) -> dict:
    """A member's variables: the model of its own width (`widths`) initialised with
    `rng`, exactly as an unpadded run would, embedded into the padded shapes.

    Traced with `widths` as data, so every choice is initialised and the member's
    selected (a handful of small inits; one program serves every member)."""
    index = self.index(widths)
    out = None
    for i, model in enumerate(self.solo):
      variables = embed(model.init(rng, batch), self.shapes)
      out = variables if out is None else jax.tree.map(
          lambda new, old, i=i: jnp.where(index == i, new, old), variables, out)
    return out


def build(build_at: Callable[[tuple[int, ...]], models.Model],
          choices: Sequence[Sequence[int]], sample_batch: dict) -> Padded:
  """The padded model of `choices` (hidden sizes of one depth); `build_at(sizes)`
  builds the unpadded model with those hidden sizes."""
  choices = tuple(tuple(int(w) for w in c) for c in choices)
  sizes = widest(choices)
  shapes_of = lambda m: jax.eval_shape(m.init, jax.ShapeDtypeStruct((2,), jnp.uint32),
                                       sample_batch)
  solo = tuple(build_at(c) for c in choices)
  solo_shapes = tuple(shapes_of(m) for m in solo)
  padded = build_at(sizes)
  shapes = shapes_of(padded)
  limits = _limits(shapes["params"], [s["params"] for s in solo_shapes])

  def param_mask(model_hparams: dict[str, Any]):
    index = result.index(model_hparams[models.WIDTHS_KEY])  # `result`: defined below.
    return jax.tree.map(lambda leaf, table: _mask(leaf.shape, table, index),
                        shapes["params"], limits)

  result = Padded(dataclasses.replace(padded, param_mask=param_mask), choices, sizes, solo,
                  solo_shapes, shapes)
  return result


def _limits(padded_params, solo_params: list) -> Any:
  """Per parameter leaf, an int array [choices, ndim]: each choice's real extent."""
  return jax.tree.map(lambda p, *solos: np.asarray([s.shape for s in solos], np.int32)
                      .reshape(len(solos), len(p.shape)), padded_params, *solo_params)


def _mask(shape: tuple[int, ...], table: np.ndarray, index: jax.Array) -> jax.Array:
  """The bool mask of a leaf of `shape`: True inside the choice `index`'s extent."""
  mask = jnp.ones((), bool)
  for d, size in enumerate(shape):
    if np.all(table[:, d] == size):  # No choice is narrower here: nothing to mask.
      continue
    inside = jnp.arange(size) < jnp.asarray(table[:, d])[index]
    mask = mask & inside.reshape((size,) + (1,) * (len(shape) - d - 1))
  return mask


def embed(tree, shapes):
  """Each leaf of `tree` in the leading corner of a zero array of its `shapes` leaf."""
  def one(x, target):
    pad = [(0, t - s) for s, t in zip(np.shape(x), target.shape)]
    return jnp.pad(x, pad) if any(p for _, p in pad) else x
  return jax.tree.map(one, tree, shapes)


def extract(tree, shapes):
  """Each leaf of `tree` cut to the leading corner of its `shapes` leaf's shape (the
  inverse of `embed`; host or device arrays)."""
  return jax.tree.map(lambda target, x: x[tuple(slice(0, s) for s in target.shape)],
                      shapes, tree)
