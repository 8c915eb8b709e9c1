"""Parameter groups: frozen leaves and per-group learning-rate multipliers.

`optim.freeze` (regexes) and `optim.lr_multipliers` ('regex=factor' strings)
are matched with `re.search` against '/'-joined parameter paths such as
'Conv_0/kernel'. The optimizer becomes an `optax.multi_transform` with one
group per distinct factor plus a 'frozen' group (`optax.set_to_zero`, which
keeps no state), so frozen leaves get neither updates nor optimizer state.

Global-norm clipping runs once, before the groups, over the trainable leaves
only (per group it would clip each group by its own norm). Everything else in
the optimizer (weight decay, Adam moments, learning rate, schedule) is
per-leaf, so splitting it into groups does not change its arithmetic.

Groups live *inside* the `inject_hyperparams` factory (see `optim.build`), so
the hyperparameters stay one shared set of state leaves and
`optim.get_hparams` / `optim.set_hparams` work unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import jax
import optax

from jaxtrain import errors

FROZEN = "frozen"


def path_str(key_path) -> str:
  """'/'-joined names of a `jax.tree_util` key path ('Conv_0/kernel')."""
  return jax.tree_util.keystr(key_path, simple=True, separator="/")


def parse_multipliers(specs) -> list[tuple[str, float]]:
  """('regex=factor', ...) -> [(regex, factor)]; raises `UserError` on bad specs."""
  out = []
  for spec in specs:
    pattern, sep, factor = str(spec).rpartition("=")
    try:
      value = float(factor)
    except ValueError:
      value = float("nan")
    if not sep or not pattern or not math.isfinite(value) or value < 0:
      raise errors.UserError(
          f"optim.lr_multipliers entry {spec!r} must be 'regex=factor' with a finite factor "
          ">= 0, e.g. 'Dense_1/=10.0' (use optim.freeze for factor 0 without optimizer state)")
    out.append((pattern, value))
  return out


def _compile(key: str, pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise errors.UserError(f"{key} regex {pattern!r} does not compile ({e}); "
                           "fix the regular expression") from None


def check_config(optim_config) -> None:
  """Raises `UserError` for a regex that does not compile or a bad 'regex=factor'."""
  for pattern in optim_config.freeze:
    _compile("optim.freeze", str(pattern))
  for pattern, _ in parse_multipliers(optim_config.lr_multipliers):
    _compile("optim.lr_multipliers", pattern)


def label_fn(freeze, multipliers) -> Callable:
  """params -> tree of group labels: 'frozen' or 'lr*<factor>' (first match wins)."""
  freeze_res = [re.compile(str(p)) for p in freeze]
  mult_res = [(re.compile(p), f) for p, f in parse_multipliers(multipliers)]

  def label(key_path, _):
    path = path_str(key_path)
    if any(r.search(path) for r in freeze_res):
      return FROZEN
    for r, factor in mult_res:
      if r.search(path):
        return f"lr*{factor!r}"
    return "lr*1.0"

  return lambda params: jax.tree_util.tree_map_with_path(label, params)


def grouped(make: Callable[..., optax.GradientTransformation],
            clip: Callable[..., optax.GradientTransformation],
            hparams: dict, freeze, multipliers) -> optax.GradientTransformation:
  """`make(**hparams)` applied per group, frozen leaves zeroed, clipping shared.

  Args:
    make: builds the optimizer (without clipping) from hyperparameter values.
    clip: builds the clipping transform from the `clip_norm` value.
    hparams: hyperparameter values (arrays inside `inject_hyperparams`).
    freeze, multipliers: the config's `optim.freeze` and `optim.lr_multipliers`.
  """
  hparams = dict(hparams)
  clip_norm = hparams.pop("clip_norm", None)
  labels = label_fn(freeze, multipliers)
  factors = {1.0} | {f for _, f in parse_multipliers(multipliers)}
  groups = {FROZEN: optax.set_to_zero()}
  for factor in sorted(factors):
    inner = make(**hparams)
    groups[f"lr*{factor!r}"] = inner if factor == 1.0 else optax.chain(inner, optax.scale(factor))
  tx = optax.multi_transform(groups, labels)
  if clip_norm is None:
    return tx
  trainable = lambda params: jax.tree.map(lambda l: l != FROZEN, labels(params))
  return optax.chain(optax.masked(clip(clip_norm), trainable), tx)
