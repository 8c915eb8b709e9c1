"""Several train steps per dispatch (`train.steps_per_call`).

Dispatching a jitted step from Python costs a fixed amount of host time per
call (hundreds of µs on a CPU), which dominates small models. Running K steps
inside one `lax.scan` pays it once per K steps. The loop still needs the host
after every step that logs, evaluates, saves or stops, so `call_sizes` plans
K-step calls that end exactly on those steps and single steps where K does not
fit: the sequence of states, records and checkpoints is the same as with K = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np

from jaxtrain import errors

# Models without convolutions: a rolled scan is as fast as an unrolled one.
_SCAN_FRIENDLY_MODELS = ("mlp", "gru", "lstm", "transformer")


def check_config(train_config) -> None:
  """Raises `UserError` for a bad `train.steps_per_call` or `train.scan_unroll`."""
  if train_config.steps_per_call <= 0:
    raise errors.UserError(f"train.steps_per_call={train_config.steps_per_call} must be > 0 "
                           "(1 = one step per dispatch)")
  if train_config.scan_unroll < 0:
    raise errors.UserError(f"train.scan_unroll={train_config.scan_unroll} must be >= 0 "
                           "(0 = auto)")


def scan_unroll(requested: int, model_name: str, platform: str) -> int | bool:
  """The `unroll` for `lax.scan`: `requested` if > 0, else automatic.

  Automatic: fully unrolled for convolutional models on CPU, where a CNN step
  inside a rolled scan ran about 40x slower (the weight-gradient convolution
  keeps a slow layout; see PERF-NOTES.md), rolled (1) otherwise.
  """
  if requested > 0:
    return requested
  if ":" in model_name:  # A user's module (models/reference.py): rolled, compile time bounded.
    return 1
  return True if platform == "cpu" and model_name not in _SCAN_FRIENDLY_MODELS else 1


def repeat(step_fn: Callable, num_steps: int, *, unroll: int | bool,
           stacked_data: bool) -> Callable:
  """`step_fn(state, acc, guard, order, data, data_key) -> (state, acc, guard, order)` run
  `num_steps` times in a `lax.scan`.

  With `stacked_data`, `data` holds one batch per step on a leading axis (a host
  pipeline); otherwise it is passed unchanged to every step (the device-resident
  split, from which each step gathers its own batch).
  """

  def many(state, acc, guard, order, data, data_key):
    def body(carry, batch):
      return step_fn(*carry, batch if stacked_data else data, data_key), None

    carry, _ = jax.lax.scan(body, (state, acc, guard, order),
                            data if stacked_data else None, length=num_steps, unroll=unroll)
    return carry

  many.__name__ = f"{getattr(step_fn, '__name__', 'step')}_x{num_steps}"  # e.g. train_one_x10
  return many


def next_stop(step: int, every: Iterable[int], at: Iterable[int | None]) -> int:
  """The first step after `step` that is a multiple of one of `every` or one of `at`."""
  candidates = [(step // e + 1) * e for e in every]
  candidates += [s for s in at if s is not None and s > step]
  return min(candidates)


def call_size(step: int, steps_per_call: int, stop: int) -> int:
  """Steps in the next call from `step`: K when the call ends at or before `stop`, else 1."""
  return steps_per_call if step + steps_per_call <= stop else 1


def stack_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Host batches stacked on a new leading (step) axis."""
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}
