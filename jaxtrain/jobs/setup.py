"""The build recipe, written once: config -> data, model, optimizer, hyperparameters, placement.

Every mode builds through here: a single run (`train.run`), `--mode=eval`,
`--mode=compile`, every tuning phase and cross-validation.

- `recipe(config, info)`: the model (LoRA-wrapped when `model.lora_rank > 0`),
  the optimizer and its schedule, and the hyperparameters that live in the
  state (EMA decay included when `train.ema_decay > 0`). The only place a model
  or an optimizer is built.
- `build(config)`: the recipe plus the data (train pipeline, eval arrays) and,
  for a single run, where every array lives on the mesh (`Placement`).
- `programs(setup)`: the jitted single-run steps (create, train one step,
  train K steps per call, eval), with donation and shardings applied here, not
  inside the pure steps.
- `evaluate(...)`: the eval metrics of a state (and of its EMA parameters).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from jaxtrain import errors, models
from jaxtrain.core import ema, lora, metrics, multistep, optim, state as state_lib, step
from jaxtrain.data import catalog, pipeline
from jaxtrain.io import compilation
from jaxtrain.jobs import transfer
from jaxtrain.parallel import sharding


# Searched keys that a LoRA population serves with one program (padded rank, see recipe).
LORA_MEMBER_KEYS = ("model.lora_rank", "model.lora_alpha")
# A PRNG key's shape and dtype: traced functions take it without a key being made.
RNG_SHAPE = jax.ShapeDtypeStruct((2,), np.uint32)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One model as a config makes it: the model, its optimizer and its hyperparameters."""
  model: models.Model
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  hparams: dict[str, float]  # Model/loss-side hyperparameters held in the state.

  def create(self, sample_batch: dict, rng: jax.Array) -> state_lib.TrainState:
    """A fresh state (pure: jit it, or `jax.eval_shape` it)."""
    return state_lib.create(self.model, self.tx, sample_batch, self.hparams, rng)

  def shapes(self, sample_batch: dict) -> state_lib.TrainState:
    """The state's shapes and dtypes (traced, nothing compiled or allocated)."""
    return jax.eval_shape(self.create, sample_batch, RNG_SHAPE)


def hparams(config) -> dict[str, float]:
  """The hyperparameters that are state leaves (tunable without recompiling)."""
  return {"dropout_rate": config.model.dropout_rate,
          "label_smoothing": config.loss.label_smoothing,
          **ema.hparams(config.train)}  # train.ema_decay > 0: the average lives in the state.


def optimizer(config, searched: tuple[str, ...] = ()
              ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer (hyperparameters injected as state) and its schedule shape;
  `searched`: the config keys a tuner changes during training."""
  return optim.build(config.optim, config.train.num_steps, searched)


def recipe(config, info: catalog.DatasetInfo, *, searched: tuple[str, ...] = ()) -> Recipe:
  """The model, optimizer and hyperparameters of `config` for a dataset like `info`.

  `searched`: the config keys a tuner changes during training (the population's
  dynamic dimensions). Their computations exist in every member whatever its value:
  dropout layers when model.dropout_rate is searched, weight decay and clipping
  when theirs are.
  """
  force_dropout = "model.dropout_rate" in searched
  model = models.build(config.model, info.num_classes, info.input_shape,
                       force_dropout=force_dropout, precision=config.precision)
  # model.lora_rank > 0: adapters (and what init_from leaves fresh, e.g. a new head) train.
  fresh = None
  if config.init_from.workdir:
    wanted = transfer.filter_of(config.init_from)
    fresh = lambda path: not wanted("params/" + path)
  # A population searching rank or alpha: one program, each member's own rank and
  # scale are state leaves (model.lora_rank is then the largest rank, see core/lora.py).
  member_rank = config.model.lora_rank > 0 and any(k in searched for k in LORA_MEMBER_KEYS)
  model = lora.maybe_wrap(model, config.model, train_full=fresh, member_rank=member_rank)
  tx, schedule = optimizer(config, searched)
  state_hparams = hparams(config)
  if member_rank:
    state_hparams.update(lora.member_hparams(config.model.lora_rank, config.model.lora_alpha))
  return Recipe(model, tx, schedule, state_hparams)


@dataclasses.dataclass
class Setup:
  """Everything a job builds from its config before it compiles."""
  config: Any
  info: catalog.DatasetInfo
  train_data: pipeline.DeviceData | pipeline.GrainData
  eval_inputs: np.ndarray
  eval_labels: np.ndarray
  recipe: Recipe
  placement: sharding.Placement | None  # Single runs; populations place their members.

  def eval_batches(self) -> list[dict[str, np.ndarray]]:
    """The eval split in fixed-shape, padded batches (on the host)."""
    return list(pipeline.eval_batches(self.eval_inputs, self.eval_labels,
                                      self.config.data.eval_batch_size))


def build(config, *, data_pipeline: str | None = None, placement: bool = True) -> Setup:
  """Data, recipe and (with `placement`) the mesh placement of a single run.

  `data_pipeline` overrides `data.pipeline` (the tuner and cross-validation keep
  the split on the device). Raises `UserError` before anything is compiled.
  """
  c = config
  # e.g. per-token labels need a token model: said before the data is read.
  _, info = catalog.split_of(c.data, c.data.train_split)
  models.zoo.check_for_data(c.model, info.input_shape, info.label_shape)
  data_config = c.data
  if data_pipeline is not None:
    data_config = copy.deepcopy(c.data)
    with data_config.unlocked():
      data_config.pipeline = data_pipeline
  # tune.member >= 0: a single run ordered as that member of a search (config.py).
  order_member = c.tune.member if c.tune.per_member_data_order else -1
  train_data, info = pipeline.create_train_data(data_config, c.seed, order_member)
  eval_inputs, eval_labels = pipeline.load_eval_arrays(c.data)
  r = recipe(c, info)
  if models.reference.is_reference(c.model.name):
    _check_logits(c.model.name, r, train_data.sample_batch(), info)
  placed = None
  if placement:  # Validates config.mesh against the devices and the batch size.
    shapes = jax.eval_shape(r.create, train_data.sample_batch(), RNG_SHAPE)
    check_memory(shapes, 1, train_data, "this model",
                 "choose a smaller model (model.*), or run on more or larger devices")
    placed = sharding.Placement.for_run(c, r.tx, shapes)
  return Setup(c, info, train_data, eval_inputs, eval_labels, r, placed)


def _check_logits(name: str, r: Recipe, sample_batch: dict, info: catalog.DatasetInfo) -> None:
  """A user's module returns [batch, num_classes] logits (traced, nothing compiled)."""
  def logits(rng, batch):
    return r.model.apply(r.model.init(rng, batch), batch, rng, False, r.hparams)[0]
  try:
    out = jax.eval_shape(logits, RNG_SHAPE, sample_batch)
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's module)
    lines = str(e).strip().splitlines()
    raise errors.UserError(
        f"model.name={name!r} fails on a batch of inputs {tuple(sample_batch['inputs'].shape)} "
        f"({type(e).__name__}: {lines[0][:160] if lines else ''})") from None
  want = (sample_batch["inputs"].shape[0], *info.label_shape, info.num_classes)
  if tuple(getattr(out, "shape", ())) != want:
    raise errors.UserError(
        f"model.name={name!r} returns {getattr(out, 'shape', type(out).__name__)}, but "
        f"{info.name} needs logits of shape {want} ({info.num_classes} classes); "
        "make its last layer output num_classes")


def _gib(n: float) -> str:
  return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def memory_available() -> tuple[int | None, str]:
  """(bytes, what) a run can hold: the local accelerators' memory together, or on CPU
  the host's available RAM; (None, '') when neither can be read."""
  devices = jax.local_devices()
  if devices[0].platform != "cpu":
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    if all(limits):
      return sum(limits), f"{len(devices)} x {devices[0].device_kind}"
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024, "this host's available RAM"
  except (OSError, KeyError, ValueError):
    return None, ""


def check_memory(state_shapes, copies: int, train_data, what: str, fix: str,
                 shared_shapes=None) -> None:
  """Refuses, before anything is allocated or compiled, a run whose states alone
  (`copies` of `state_shapes`: parameters, optimizer state) plus the device-resident
  data cannot fit. A lower bound (activations come on top): what it refuses cannot
  run, where it went on allocating for an hour or hung. `shared_shapes`: state held
  once for all copies (a LoRA population's frozen base).

  Raises:
    UserError: naming the sizes and `fix`.
  """
  nbytes = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize
                           for x in jax.tree_util.tree_leaves(tree))
  per_copy = nbytes(state_shapes)
  data = sum(int(a.nbytes) for a in jax.tree_util.tree_leaves(
      getattr(train_data, "arrays", None) or {}))  # Grain data: read as it goes.
  shared = nbytes(shared_shapes)
  need = per_copy * copies + shared + data
  have, where = memory_available()
  if have is not None and need > have:
    copies_text = f"{copies} x {_gib(per_copy)}" if copies > 1 else _gib(per_copy)
    if shared:
      copies_text += f" + a shared base of {_gib(shared)}"
    raise errors.UserError(
        f"{what} needs at least {_gib(need)} (states {copies_text}, data {_gib(data)}) but "
        f"{where} is {_gib(have)}; {fix}")


@dataclasses.dataclass
class Programs:
  """The jitted steps of a single run. Train steps take and return
  `(state, metric sums, guard, epoch order)` (all donated) plus the data arguments."""
  create: Callable  # (sample_batch, seed) -> state, placed on the mesh
  train: Callable  # one step
  train_many: Callable  # train.steps_per_call steps in one dispatch (lax.scan)
  eval: Callable  # (state, batch) -> metric sums
  traces: list  # One entry per trace of the train step; more than one = a recompile.


def programs(s: Setup) -> Programs:
  """The single-run programs of `s` (its placement must be set)."""
  c, r, placement, data = s.config, s.recipe, s.placement, s.train_data
  traces = []

  def train_one(state, acc, guard, order, batch_or_split, data_key):
    traces.append(1)
    if data.kind == "device":  # The batch is gathered from the split on device.
      order = pipeline.refresh_order(order, data_key, state.step, data.num_examples,
                                     c.data.batch_size)
      batch_or_split = pipeline.device_batch(batch_or_split, order, state.step, c.data.batch_size)
      batch_or_split = placement.constrain_batch(batch_or_split)  # Split like a loaded batch.
    state, acc, guard = step.guarded_train_step(r.model, r.tx, r.schedule, c.train.nan_policy,
                                                state, acc, guard, batch_or_split)
    return state, acc, guard, order

  unroll = multistep.scan_unroll(c.train.scan_unroll, c.model.name, jax.default_backend())
  many = multistep.repeat(train_one, c.train.steps_per_call, stacked_data=data.kind == "grain",
                          unroll=unroll)
  return Programs(
      # The key is made inside the program from the seed: no small program of its own.
      create=jax.jit(lambda sample, seed: r.create(sample, state_lib.init_key(
          seed, c.tune.member)),
                     out_shardings=placement.state,
                     compiler_options=compilation.run_once_options()),
      train=placement.jit_train(train_one, data.kind),
      train_many=placement.jit_train(many, data.kind, stacked=True),
      eval=placement.jit_eval(functools.partial(step.eval_step, r.model)),
      traces=traces)


def initial_args(s: Setup) -> tuple[dict, dict, Any, tuple]:
  """(metric sums, guard, epoch order, data arguments) a single run starts with,
  replicated on the mesh. The data arguments are the split and its key for the
  device pipeline; for Grain, a sample batch (shapes only: the loop reads batches)."""
  placement, data = s.placement, s.train_data
  acc = fresh_sums(s)
  guard = placement.replicate(step.new_guard())
  if data.kind == "device":
    order = placement.replicate(pipeline.new_epoch_order(data.num_examples))
    return acc, guard, order, placement.replicate((data.arrays, data.data_key))
  return acc, guard, None, (data.sample_batch(), None)


def fresh_sums(s: Setup) -> dict:
  """Zero metric sums of a single run, replicated on its mesh."""
  return s.placement.replicate(metrics.new_sums())


def evaluate(eval_fn: Callable, state, batches, prefix: str = "eval/") -> dict[str, float]:
  """Means of `eval_fn(state, batch)` sums over `batches`; with `train.ema_decay > 0`
  the EMA parameters too, as eval/ema_*."""
  values = metrics.compute(metrics.sum_batches(functools.partial(eval_fn, state), batches),
                           prefix=prefix)
  if state.ema_params is not None and prefix == "eval/":
    values.update(evaluate(eval_fn, ema.as_params(state), batches, prefix="eval/ema_"))
  return values
