"""Search spaces: which config keys a tuner varies, and how.

A space is written in the config under `tune.space`, mirroring the config's
own nesting, one string per key:

    config.tune.space.optim = dict(learning_rate="loguniform(1e-4, 1e-1)",
                                   weight_decay="loguniform(1e-6, 1e-2)")
    config.tune.space.model = dict(dropout_rate="uniform(0.0, 0.5)",
                                   hidden_sizes="choice((64,), (256,), (256, 256))")
    config.tune.space.data = dict(batch_size="int(32, 256)")

Once in a config file, a dimension can be overridden on the command line:
`--config.tune.space.optim.learning_rate='loguniform(1e-3, 1e-1)'`.

Keys whose values live in the train state as arrays (`DYNAMIC_KEYS`) can differ
between members of one compiled population and can change during training
(PBT). `MEMBER_KEYS` (a LoRA population's rank and alpha) can differ between
members of one program too -- every member is padded to the largest rank, its own
rank and scale are state leaves (core/lora.py) -- but stay fixed during training
(PBT copies them with the parent's state, never perturbs them). Every other key is
static: members that differ in it are trained as separate groups, one compiled
program each -- except model.hidden_sizes with tune.pad_widths, whose widths of one
depth share a group, padded to the widest (jaxtrain/models/padded.py).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from jaxtrain import errors

# Config key -> where the value lives in the train state.
DYNAMIC_KEYS = {
    "optim.learning_rate": ("opt", "learning_rate"),
    "optim.weight_decay": ("opt", "weight_decay"),
    "optim.momentum": ("opt", "momentum"),
    "optim.b1": ("opt", "b1"),
    "optim.b2": ("opt", "b2"),
    "optim.eps": ("opt", "eps"),
    "optim.clip_norm": ("opt", "clip_norm"),
    "model.dropout_rate": ("state", "dropout_rate"),
    "loss.label_smoothing": ("state", "label_smoothing"),
}

# Config keys served by one padded program, fixed per member (LoRA rank and alpha).
MEMBER_KEYS = ("model.lora_rank", "model.lora_alpha")
# The static key whose values tune.pad_widths trains together (same depth, any widths).
PADDED_KEY = "model.hidden_sizes"

KINDS = ("uniform", "loguniform", "int", "choice")
# Keys a search may vary: the model, optimizer, loss and batch size. (Step
# counts, checkpointing, data names and the seed are the experiment, not a
# setting: members already get their own seeds.)
SEARCHABLE_PREFIXES = ("model.", "optim.", "loss.", "data.batch_size")


@dataclasses.dataclass(frozen=True)
class Dimension:
  """One searched config key."""
  key: str
  kind: str  # uniform | loguniform | int | choice
  low: float = 0.0
  high: float = 0.0
  choices: tuple = ()

  @property
  def dynamic(self) -> bool:
    return self.key in DYNAMIC_KEYS

  @property
  def per_member(self) -> bool:
    """Whether members of one program may differ in it (dynamic or `MEMBER_KEYS`)."""
    return self.dynamic or self.key in MEMBER_KEYS

  def largest(self) -> Any:
    """The largest value the dimension allows."""
    return max(self.choices) if self.kind == "choice" else self.high

  def sample(self, rng: np.random.Generator) -> Any:
    if self.kind == "uniform":
      return float(rng.uniform(self.low, self.high))
    if self.kind == "loguniform":
      return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
    if self.kind == "int":
      return int(rng.integers(int(self.low), int(self.high) + 1))
    return self.choices[int(rng.integers(len(self.choices)))]

  def grid(self, points: int) -> list[Any]:
    """`points` evenly spaced values (log-spaced for loguniform); all choices."""
    if self.kind == "choice":
      return list(self.choices)
    if self.kind == "int":
      values = np.linspace(self.low, self.high, min(points, int(self.high - self.low) + 1))
      return sorted({int(round(v)) for v in values})
    if self.kind == "loguniform":
      return [float(v) for v in np.geomspace(self.low, self.high, points)]
    return [float(v) for v in np.linspace(self.low, self.high, points)]

  def clip(self, value: float) -> float:
    """Keeps a perturbed value inside the range (for uniform/loguniform/int)."""
    if self.kind == "choice":
      return value
    value = min(max(value, self.low), self.high)
    return int(round(value)) if self.kind == "int" else float(value)


def parse_dimension(key: str, spec: str) -> Dimension:
  """Parses 'kind(args)' into a `Dimension`; raises a one-line `UserError`."""
  where = f"tune.space.{key}={spec!r}"
  spec = str(spec).strip()
  kind, _, rest = spec.partition("(")
  kind = kind.strip()
  if kind not in KINDS or not rest.endswith(")"):
    raise errors.UserError(
        f"{where} is not a search dimension; write one of "
        "uniform(low, high), loguniform(low, high), int(low, high), choice(a, b, ...)"
        f"{errors.did_you_mean(kind, KINDS)}")
  try:
    args = ast.literal_eval("(" + rest[:-1] + ",)") if rest[:-1].strip() else ()
  except (ValueError, SyntaxError):
    raise errors.UserError(f"{where}: the arguments are not Python literals") from None
  if kind == "choice":
    if not args:
      raise errors.UserError(f"{where}: choice() needs at least one value")
    return Dimension(key, kind, choices=tuple(args))
  if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
    raise errors.UserError(f"{where}: {kind}() takes two numbers, (low, high)")
  low, high = args
  if not low < high:
    raise errors.UserError(f"{where}: the range is empty; low must be smaller than high")
  if kind == "loguniform" and low <= 0:
    raise errors.UserError(f"{where}: loguniform needs low > 0 (log of {low} is undefined)")
  if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
    raise errors.UserError(f"{where}: int() bounds must be whole numbers")
  return Dimension(key, kind, float(low), float(high))


def parse_space(space_config, base_flat: dict[str, Any]) -> list[Dimension]:
  """All dimensions of `tune.space`, checked against the config's keys and types."""
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  dims = []
  for key, spec in sorted(config_lib.flatten(space_config).items()):
    if key not in base_flat or not key.startswith(SEARCHABLE_PREFIXES):
      raise errors.UserError(
          f"tune.space.{key}: {key!r} is not a config key that can be searched"
          f"{errors.did_you_mean(key, [k for k in base_flat if k.startswith(SEARCHABLE_PREFIXES)])}"
          f"; searchable keys start with {', '.join(SEARCHABLE_PREFIXES)}")
    if not isinstance(spec, str):
      raise errors.UserError(
          f"tune.space.{key} must be a string such as \"loguniform(1e-4, 1e-1)\", got {spec!r}")
    dim = parse_dimension(key, spec)
    default = base_flat[key]
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if dim.kind != "choice" and not numeric:
      raise errors.UserError(
          f"tune.space.{key}: {key} holds {type(default).__name__} values; use choice(...)")
    if dim.kind == "choice":
      for value in dim.choices:
        if isinstance(default, tuple) != isinstance(value, tuple) or (
            numeric and not isinstance(value, (int, float))):
          raise errors.UserError(
              f"tune.space.{key}: choice {value!r} does not have the type of "
              f"{key} (like {default!r})")
    dims.append(dim)
  return dims


def grid_points(dims: list[Dimension], points: int) -> list[dict[str, Any]]:
  """The cartesian product of every dimension's grid, as settings dicts."""
  axes = [d.grid(points) for d in dims]
  return [dict(zip([d.key for d in dims], values)) for values in itertools.product(*axes)]


def sample_points(dims: list[Dimension], count: int, rng: np.random.Generator) -> list[dict]:
  return [{d.key: d.sample(rng) for d in dims} for _ in range(count)]


def static_part(setting: dict[str, Any], pad_widths: bool = False) -> tuple:
  """The static keys of a setting, as a hashable group key (members whose static
  parts are equal train in one program). With `pad_widths` (tune.pad_widths)
  model.hidden_sizes counts by its depth alone: members of one depth train together,
  padded to the widest (jaxtrain/models/padded.py)."""
  def frozen(k, v):
    if pad_widths and k == PADDED_KEY:
      return ("depth", len(v))
    return tuple(v) if isinstance(v, list) else v
  return tuple(sorted((k, frozen(k, v)) for k, v in setting.items()
                      if k not in DYNAMIC_KEYS and k not in MEMBER_KEYS))


def member_key_dims(space_config) -> dict[str, Dimension]:
  """{key: dimension} of the `MEMBER_KEYS` searched in `space_config` (tune.space)."""
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  flat = config_lib.flatten(space_config)
  return {k: parse_dimension(k, flat[k]) for k in MEMBER_KEYS if k in flat}
