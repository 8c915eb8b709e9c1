"""The population engine: many members trained by one compiled step (pure).

A population state is a `TrainState` with a leading member axis `P` on every
leaf. The member step (`jaxtrain.step.train_step`) runs over it either with
`jax.vmap` (`make_train_fn`: one batched program, the fast path on accelerators
and for dense models) or one member at a time (`make_member_train_fn`: one
compiled single-member step that updates member `i` of the stacked population
in place, driven by a host loop in `jaxtrain.tune.execution`; faster for
convolutions on CPU, where vmap turns them into slow grouped convolutions),
optionally `steps_per_call` steps per dispatch with `lax.scan`.

Members never mix: each has its own optimizer state, hyperparameters, RNG and
data order, so one member's NaN cannot reach another. Exploit, explore and
refill gather whole member states on device (PBT's decisions are made on the host).

Model-state collections that every member holds identically and never changes
(a LoRA population's frozen base, `lora.BASE`) are *shared*: kept out of the
stacked state, held once, and passed to the steps as `shared` (vmapped with
`in_axes=None`), so their bytes do not grow with the population.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.core import metrics as metrics_lib
from jaxtrain.core import optim
from jaxtrain.core import state as state_lib
from jaxtrain.core import step as step_lib
from jaxtrain.data import pipeline
from jaxtrain.tune import space as space_lib

EXECUTIONS = ("auto", "vmap", "map")  # map: members one at a time (execution.py)


def create(model, tx, sample_batch: dict, base_hparams: dict[str, float],
           rngs: jax.Array) -> state_lib.TrainState:
  """A population of fresh members, one per key in `rngs` ([P, 2])."""
  return jax.vmap(lambda rng: state_lib.create(model, tx, sample_batch, base_hparams, rng))(rngs)


def with_shared(state, shared: dict | None):
  """`state` (one member's or the population's) with the shared collections put back
  into its model state."""
  if not shared:
    return state
  return state.replace(model_state={**state.model_state, **shared})


def without_shared(state, names):
  """`state` without the model-state collections `names` (the shared ones)."""
  if not names:
    return state
  return state.replace(model_state={k: v for k, v in state.model_state.items()
                                    if k not in names})


def get_dynamic(pop_state, keys: Sequence[str]) -> dict[str, jax.Array]:
  """Per-member values [P] of dynamic hyperparameters, by config key."""
  opt_hparams = optim.get_hparams(pop_state.opt_state)
  out = {}
  for key in keys:
    where, name = space_lib.DYNAMIC_KEYS[key]
    out[key] = opt_hparams[name] if where == "opt" else pop_state.hparams[name]
  return out


def set_dynamic(pop_state, values: dict[str, jax.Array]):
  """A copy of the population with dynamic hyperparameters replaced ([P] each)."""
  opt_values, state_values = {}, dict(pop_state.hparams)
  for key, value in values.items():
    where, name = space_lib.DYNAMIC_KEYS[key]
    value = jnp.asarray(value, jnp.float32)
    if where == "opt":
      opt_values[name] = value
    else:
      state_values[name] = value
  opt_state = optim.set_hparams(pop_state.opt_state, opt_values) if opt_values else pop_state.opt_state
  return pop_state.replace(opt_state=opt_state, hparams=state_values)


def take(pop_state, index: int):
  """One member's state (no member axis), e.g. to export it as a single run."""
  return _take(pop_state, np.int32(index))  # A host scalar: no program to convert it.


@jax.jit
def _take(pop_state, index):
  # One compiled gather for the whole tree: indexing leaf by leaf outside jit
  # compiled one program per leaf shape (about 30 for an MLP, seconds on CPU).
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False),
                      pop_state)


def select(mask_P: jax.Array, new, old):
  """Member-wise `where`: members with mask True take `new`, the rest keep `old`."""
  def pick(n, o):
    return jnp.where(mask_P.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


def make_train_fn(model, tx, schedule, batch_size: int, execution: str = "vmap",
                  steps_per_call: int = 1, unroll: int | bool = 1) -> Callable:
  """Returns `fn(pop, acc, orders, active_P, data, data_keys_P, shared=None) ->
  (pop, acc, orders)`; `shared`: collections every member reads, not stacked.

  The vmapped population step (`execution` must be 'vmap'; members one at a
  time are `make_member_train_fn`). Not jitted (the caller jits it, with
  donation and shardings). `orders` is the per-member epoch permutation cache
  (`pipeline.EpochOrder` with a member axis). Members with `active` False are
  computed and discarded: they keep their state unchanged. `active=None` means
  every member is active and skips the member-wise select (a step 1.08-1.26x
  faster at N = 16 and 64, docs/BENCHMARKS.md); under jit, None and an array are two
  programs, the second compiled only once some member is inactive. (A `lax.cond`
  on `all(active)` inside one program measured slower than the select itself:
  the branches stop XLA from updating the donated state in place.)
  """
  if execution != "vmap":
    raise ValueError(f"make_train_fn runs members with vmap; got execution={execution!r} "
                     "(members one at a time: make_member_train_fn)")

  def member_step(state, acc, order, data, shared):
    batch = pipeline.device_batch(data, order, state.step, batch_size)
    state, acc = step_lib.accumulate_train_step(model, tx, schedule,
                                                with_shared(state, shared), acc, batch)
    return without_shared(state, shared), acc

  members_step = jax.vmap(member_step, in_axes=(0, 0, 0, None, None))

  def pop_step(states, accs, orders, active, data, data_keys, shared=None):
    num_examples = data["labels"].shape[0]
    orders = pipeline.refresh_orders(orders, data_keys, states.step, num_examples, batch_size)
    new_states, new_accs = members_step(states, accs, orders, data, shared)
    if active is None:
      return new_states, new_accs, orders
    states, accs = select(active, (new_states, new_accs), (states, accs))
    return states, accs, orders

  if steps_per_call == 1:
    return pop_step

  def multi_step(states, accs, orders, active, data, data_keys, shared=None):
    def body(carry, _):
      return pop_step(*carry, active, data, data_keys, shared), None
    (states, accs, orders), _ = jax.lax.scan(body, (states, accs, orders), None,
                                             length=steps_per_call, unroll=unroll)
    return states, accs, orders

  return multi_step


def make_member_train_fn(model, tx, schedule, batch_size: int, steps_per_call: int = 1,
                         unroll: int | bool = 1) -> Callable:
  """Returns `fn(pop, acc, orders, index, data, data_keys_P, shared=None) -> (pop, acc,
  orders)`; `shared` as in `make_train_fn`.

  Member `index` (an int32 scalar array, so one compiled program serves every
  member) takes `steps_per_call` steps; every other member is untouched. The
  member is read with `dynamic_index_in_dim` and written back with
  `dynamic_update_index_in_dim`, so with `pop`, `acc` and `orders` donated the
  update is in place. The step is the single-run step (`refresh_order`,
  `device_batch`, `accumulate_train_step`) with top-level ops only: no
  `lax.map` or `lax.cond` around the model, which the CPU backend runs slowly
  for convolutions. Not jitted (the caller jits and donates).
  """

  def fn(pop, acc, orders, index, data, data_keys, shared=None):
    take = lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False)
    state, member_acc, order = jax.tree.map(take, (pop, acc, orders))
    state = with_shared(state, shared)
    data_key = take(data_keys)
    num_examples = data["labels"].shape[0]

    def one(carry, _):
      state, member_acc, order = carry
      order = pipeline.refresh_order(order, data_key, state.step, num_examples, batch_size)
      batch = pipeline.device_batch(data, order, state.step, batch_size)
      state, member_acc = step_lib.accumulate_train_step(model, tx, schedule, state,
                                                         member_acc, batch)
      return (state, member_acc, order), None

    carry = (state, member_acc, order)
    if steps_per_call == 1:
      carry, _ = one(carry, None)
    else:
      carry, _ = jax.lax.scan(one, carry, None, length=steps_per_call, unroll=unroll)
    carry = (without_shared(carry[0], shared), *carry[1:])
    put = lambda x, m: jax.lax.dynamic_update_index_in_dim(x, m, index, 0)
    return jax.tree.map(put, (pop, acc, orders), carry)

  return fn


def make_eval_fn(model, calibration_bins: int = 0) -> Callable:
  """Returns `fn(pop_state, batch, shared=None) -> metric sums [P]` (batch and `shared`
  collections the same for every member); with `calibration_bins` > 0 the sums hold
  ECE's bin sums too (`step.eval_step`)."""
  members = jax.vmap(lambda state, batch, shared: step_lib.eval_step(
      model, with_shared(state, shared), batch, calibration_bins), in_axes=(0, None, None))
  return lambda pop_state, batch, shared=None: members(pop_state, batch, shared)


def compute_member_metrics(sums: dict[str, Any], prefix: str) -> list[dict[str, float]]:
  """Host-side per-member means from metric sums with a leading member axis."""
  sums = jax.device_get(sums)
  size = len(np.asarray(sums["count"]))
  return [metrics_lib.compute({k: v[i] for k, v in sums.items()}, prefix) for i in range(size)]


# --- Exploit and explore (PBT). ---
# The decisions (who copies whom, the new settings, fresh RNG keys) concern P numbers and
# are made on the host with numpy; one small program then copies the member states on
# device (`apply_exploit`). Made on device, they cost a program of their own whose
# dozen threefry draws took XLA 0.8-1.1 s to compile on CPU, on the way to the second
# evaluation of every cold search (docs/BENCHMARKS.md, time to result).


def exploit(scores_P: np.ndarray, rng: np.random.Generator, *, method: str, fraction: float
            ) -> tuple[np.ndarray, np.ndarray]:
  """Chooses parents; returns (parent index [P], exploited mask [P]).

  `truncation`: the bottom `fraction` of members (by score; NaN counts as the
  worst) copy a member drawn from the top `fraction`; the groups hold
  max(1, floor(P * fraction)) members each (Ray Tune's PBT rounds up). A member
  copies only a parent that scored strictly better: among equal scores nobody
  is exploited. `tournament`: every member meets a random other member and
  copies it if the other scored strictly better. Members that copy are 'exploited'.
  """
  scores = np.asarray(scores_P, np.float64)
  scores = np.where(np.isnan(scores), -np.inf, scores)
  size = scores.shape[0]
  members = np.arange(size)
  if method == "truncation":
    count = max(1, int(size * fraction))
    order = np.argsort(scores, kind="stable")  # Ascending: worst first.
    bottom, top = order[:count], order[size - count:]
    picks = top[rng.integers(0, count, size=count)]
    picks = np.where(scores[picks] > scores[bottom], picks, bottom)  # Ties: keep your own.
    parents = members.copy()
    parents[bottom] = picks
  elif method == "tournament":
    offset = rng.integers(1, max(size, 2), size=size)
    opponent = (members + offset) % size
    parents = np.where(scores[opponent] > scores, opponent, members)
  else:
    raise ValueError(f"unknown exploit method {method!r}")
  return parents.astype(np.int32), parents != members


def explore(values: dict[str, np.ndarray], exploited_P: np.ndarray, rng: np.random.Generator,
            dims: Sequence[space_lib.Dimension], *, factors: Sequence[float],
            resample_probability: float) -> dict[str, np.ndarray]:
  """New dynamic hyperparameters for exploited members (others unchanged; float32).

  Each exploited member's value is resampled from its dimension with
  probability `resample_probability`, otherwise multiplied by a factor drawn
  from `factors` and clipped to the dimension's range; a `choice` dimension
  instead moves to a neighbouring choice (one index up or down, at random,
  clipped to the ends), as Ray Tune's PBT perturbs categorical values.
  """
  out = {}
  for dim in dims:
    value = np.asarray(values[dim.key], np.float32)
    size = value.shape[0]
    resample = rng.random(size) < resample_probability
    fresh = _sample(dim, rng, size)
    if dim.kind in ("uniform", "loguniform", "int"):
      factor = np.asarray(factors, np.float32)[rng.integers(0, len(factors), size=size)]
      new = np.clip(np.where(resample, fresh, value * factor), dim.low, dim.high)
      if dim.kind == "int":
        new = np.round(new)
    else:  # A choice moves to a neighbouring choice (multiplying would stay put).
      choices = np.asarray(dim.choices, np.float32)
      index = np.argmin(np.abs(value[:, None] - choices[None, :]), axis=1)
      step = np.where(rng.random(size) < 0.5, -1, 1)
      neighbour = choices[np.clip(index + step, 0, len(dim.choices) - 1)]
      new = np.where(resample, fresh, neighbour)
    out[dim.key] = np.where(exploited_P, new, value).astype(np.float32)
  return out


def _sample(dim: space_lib.Dimension, rng: np.random.Generator, size: int) -> np.ndarray:
  if dim.kind == "uniform":
    return rng.uniform(dim.low, dim.high, size)
  if dim.kind == "loguniform":
    return np.exp(rng.uniform(np.log(dim.low), np.log(dim.high), size))
  if dim.kind == "int":
    return rng.integers(int(dim.low), int(dim.high) + 1, size=size).astype(np.float64)
  return np.asarray(dim.choices, np.float64)[rng.integers(0, len(dim.choices), size=size)]


def pbt_event(scores_P, values: dict[str, np.ndarray], rng: np.random.Generator, dims, *,
              method: str, fraction: float, factors: Sequence[float],
              resample_probability: float) -> dict[str, np.ndarray]:
  """One PBT event's decisions, on the host: {'parents' [P], 'exploited' [P],
  'values' (the members' dynamic settings afterwards, {key: [P]}), 'rngs' ([P, 2] new
  RNG keys; used by exploited members only)}. `values`: the members' settings now."""
  parents, exploited = exploit(scores_P, rng, method=method, fraction=fraction)
  copied = {k: np.asarray(v, np.float32)[parents] for k, v in values.items()}
  new_values = explore(copied, exploited, rng, dims, factors=factors,
                       resample_probability=resample_probability)
  rngs = rng.integers(0, 2**32, size=(len(parents), 2), dtype=np.uint32)
  return {"parents": parents, "exploited": exploited, "values": new_values, "rngs": rngs}


def apply_exploit(pop_state, parents_P, exploited_P, values, rngs_P):
  """The population after a PBT event (pure; jitted by `Phase`): exploited members
  receive a copy of their parent's whole state (parameters, model state, optimizer
  state with its hyperparameters, step), a fresh RNG stream (`rngs_P`) and their
  explored dynamic settings (`values`, {key: [P]})."""
  copied = jax.tree.map(lambda x: x[parents_P], pop_state)
  copied = copied.replace(rng=jnp.where(exploited_P[:, None], rngs_P.astype(copied.rng.dtype),
                                        copied.rng))
  return set_dynamic(copied, values)
