"""One population with shared static settings: its model and compiled functions.

A tuning run trains one `Phase` per group of members that share static
settings (width, depth, batch size...): each phase has one compiled train
step, eval step, exploit/explore and refill, reused for every event.

A LoRA phase (`model.lora_rank > 0`) holds the frozen base once: the stacked
population carries only what members own (adapters, optimizer state, settings),
`Phase.shared` the base, passed to every program un-stacked (population.py) and
saved once in the checkpoint. Members searching `model.lora_rank`/`lora_alpha`
share the phase too, padded to the largest searched rank (core/lora.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import models
from jaxtrain.core import ema as ema_lib, lora, metrics
from jaxtrain.core import state as state_lib
from jaxtrain.data import pipeline
from jaxtrain.io import compilation
from jaxtrain.jobs import setup, transfer
from jaxtrain.models import padded as padded_lib
from jaxtrain.parallel import sharding
from jaxtrain.tune import execution as execution_lib
from jaxtrain.tune import pareto
from jaxtrain.tune import population as pop_lib
from jaxtrain.tune import space as space_lib


WIDTHS = space_lib.PADDED_KEY  # model.hidden_sizes: tune.pad_widths pads it.


def width_choices(config, dims, settings: dict[str, Any]) -> tuple:
  """The hidden sizes a phase of `settings` trains padded together: with tune.pad_widths,
  every choice of the searched model.hidden_sizes with the depth of `settings`' (a
  mixed-depth search pads each depth apart); () when nothing is padded."""
  dim = next((d for d in dims if d.key == WIDTHS), None)
  if not config.tune.pad_widths or dim is None:
    return ()
  depth = len(settings[WIDTHS])
  choices = tuple(dict.fromkeys(tuple(c) for c in dim.choices if len(c) == depth))
  return choices if len(choices) > 1 else ()  # One width: an unpadded phase as before.


def recipe(c, info, searched: tuple[str, ...], width_choices: tuple, sample_batch
           ) -> tuple[setup.Recipe, padded_lib.Padded | None]:
  """(recipe, padded) of a phase whose config is `c`: `setup.recipe`'s, or with
  `width_choices` the padded model (models/padded.py; `c` at the widest sizes) and
  each member's widths in the state's hparams (models.WIDTHS_KEY)."""
  r = setup.recipe(c, info, searched=searched)
  if not width_choices:
    return r, None
  padded = padded_lib.build(
      lambda sizes: setup.recipe(config_lib.with_settings(c, {WIDTHS: sizes}), info,
                                 searched=searched).model, width_choices, sample_batch)
  return dataclasses.replace(r, model=padded.model, hparams={
      **r.hparams, models.WIDTHS_KEY: padded.sizes}), padded


def unpad(padded: padded_lib.Padded, tx, sample_batch, state):
  """A padded member's state (host arrays, no member axis) cut to its own widths: the
  state an unpadded run of those widths holds (params, optimizer and model state, EMA)."""
  widths = tuple(int(w) for w in np.asarray(state.hparams[models.WIDTHS_KEY]))
  state = state.replace(hparams={k: v for k, v in state.hparams.items()
                                 if k != models.WIDTHS_KEY})
  solo = padded.solo[padded.choices.index(widths)]
  shapes = jax.eval_shape(lambda rng: state_lib.create(
      solo, tx, sample_batch, state.hparams, rng), setup.RNG_SHAPE)
  return padded_lib.extract(state, shapes)


def member_config(config: ml_collections.ConfigDict, settings: dict[str, Any]):
  """The plain single-run config of a member with `settings` (tune.strategy='none')."""
  out = config_lib.with_settings(config, settings)
  with out.unlocked():
    out.tune.strategy = "none"
    out.tune.space = ml_collections.ConfigDict()  # A single run searches nothing.
    out.mesh.pop = 1  # ...and has no member axis.
  return out


def check_init_from(config, settings: dict[str, Any], info, sample_batch) -> dict:
  """Checks that a member with `settings` fits `config.init_from` (checkpoint
  metadata only; nothing compiled); returns the init_from.json record.

  Raises:
    UserError: the checkpoint does not fit (every problem listed).
  """
  c = member_config(config, settings)
  shapes = setup.recipe(c, info).shapes(sample_batch)
  return transfer.load(c.init_from, shapes.params, shapes.model_state, read=False)[1]


def check_memory(config, s: setup.Setup) -> None:
  """Refuses a population whose states cannot fit, before any is allocated:
  tune.population_size members of the config's model (a searched static key may
  give a phase another model; this is a lower bound, as setup.check_memory says)."""
  n = config.tune.population_size
  shapes = s.recipe.shapes(s.train_data.sample_batch())
  shared = (lora.BASE,) if config.model.lora_rank > 0 else ()  # Held once (Phase.shared).
  setup.check_memory(pop_lib.without_shared(shapes, shared), n, s.train_data,
                     f"a population of {n} members",
                     "lower tune.population_size, or choose a smaller model",
                     shared_shapes={k: shapes.model_state[k] for k in shared})


def steps_per_call(config, model_name: str) -> int:
  """Population steps per dispatch: tune.steps_per_call, or with 0 (auto) the whole
  evaluation interval in one rolled `lax.scan` (one dispatch per interval instead of
  one per step: on CPU the dispatches of a small model cost more than its steps),
  except for convolutional models, whose scans must be unrolled on CPU (see
  PERF-NOTES.md): there one step per call."""
  if config.tune.steps_per_call > 0:
    return config.tune.steps_per_call
  if model_name in execution_lib.CONV_MODELS:
    return 1
  return config.train.eval_every_steps


def execution_for(config, model_name: str) -> str:
  """'vmap' or 'map' for this phase (the rule for 'auto': `execution.choose`)."""
  return execution_lib.choose(config.tune.execution, model_name)


class Phase:
  """One population with shared static settings: its model and compiled functions."""

  def __init__(self, config, settings: dict[str, Any], info, train_data, eval_batches,
               dynamic_dims, size: int, width_choices: tuple = ()):
    """`width_choices` (tune.pad_widths, see `width_choices`): the model.hidden_sizes
    this phase's members may have; they train padded to the widest, in one program."""
    if width_choices:
      settings = {**settings, WIDTHS: padded_lib.widest(width_choices)}
    self.search_config = config  # What its exported members' configs derive from.
    self.config = member_config(config, settings)
    self.strategy = config.tune.strategy  # (self.config is a member's: strategy 'none'.)
    self.size = size
    self.seed = config.seed
    self.dynamic_dims = dynamic_dims
    self.dynamic_keys = [d.key for d in dynamic_dims]
    self.data = train_data.arrays
    self.eval_batches = eval_batches
    self.host_eval_batches = eval_batches  # This process's own copy (the soup scores on it).
    # A searched LoRA rank or alpha: one program, padded to the largest rank.
    self.lora_keys = tuple(space_lib.member_key_dims(config.tune.space)) if (
        config.model.lora_rank > 0 or "model.lora_rank" in config_lib.flatten(
            config.tune.space)) else ()
    self.lora_default = {"model.lora_rank": self.config.model.lora_rank,
                         "model.lora_alpha": self.config.model.lora_alpha}
    self.config = padded_config(config, self.config)
    c = self.config
    # What a searched key needs exists in every member (some may draw 0: dropout,
    # weight decay, clipping).
    self.sample_batch = train_data.sample_batch()
    r, self.padded = recipe(c, info, tuple(self.dynamic_keys) + self.lora_keys, width_choices,
                            self.sample_batch)
    self.model, self.tx, self.base_hparams = r.model, r.tx, r.hparams
    schedule = r.schedule
    # LoRA: the frozen base is held once (Phase.shared), not by every member.
    self.shared_names = (lora.BASE,) if c.model.lora_rank > 0 else ()
    # init_from: every member (and every refill) starts from the same copied arrays.
    shapes = r.shapes(self.sample_batch)
    self.init_copies, self.init_record = (
        transfer.load(c.init_from, shapes.params, shapes.model_state)
        if c.init_from.workdir else ({}, None))
    # Every member starts from the same parameters when init_from copied all of them.
    self.shared_init = self.init_record is not None and not any(
        p.startswith("params/") for p in self.init_record["fresh"])
    self.execution = execution_for(config, c.model.name)
    self.steps_per_call = steps_per_call(config, c.model.name)
    self.traces = []
    # Members one at a time (execution 'map'): one compiled member step, host loop.
    self._host_loop = execution_lib.HostLoop(
        self.model, self.tx, schedule, c.data.batch_size, self.steps_per_call,
        unroll=True if c.model.name in execution_lib.CONV_MODELS else 1,
        on_trace=lambda: self.traces.append(1)) if self.execution == "map" else None

    # Members sharded over the mesh's 'pop' axis when the count divides (sharding.py).
    mesh = sharding.population_mesh(config, size)  # None: the population stays on one device.
    shard = mesh is not None
    self.member_sharding = sharding.population_sharding(mesh) if shard else None
    replicated = sharding.replicated(mesh) if shard else None
    if shard:  # Placed once; with several processes every program's inputs must be global.
      self.data = sharding.put(self.data, replicated)
      self.eval_batches = [sharding.put(b, replicated) for b in eval_batches]
    pop_train = pop_lib.make_train_fn(
        self.model, self.tx, schedule, c.data.batch_size, "vmap", self.steps_per_call,
        unroll=True if c.model.name == "cnn" else 1)  # Rolled conv scans are slow on CPU.

    def train_fn(pop, acc, orders, active, data, data_keys, shared):
      self.traces.append(1)
      return pop_train(pop, acc, orders, active, data, data_keys, shared)

    ms = self.member_sharding
    # The population's state: split over members, and within a member like a single run's
    # state when the mesh has fsdp/model axes (a member too large for one device).
    ps = (sharding.population_state_shardings(
        mesh, pop_lib.without_shared(shapes, self.shared_names), r.tx, c.mesh)
          if sharding.members_sharded(mesh) else ms)
    bounded = functools.partial(sharding.bounded_dispatch, mesh=mesh)  # CPU meshes: sharding.py.
    self._train = bounded(jax.jit(
        train_fn, donate_argnums=(0, 1, 2),
        in_shardings=(ps, ms, ms, ms, replicated, ms, replicated) if shard else None,
        out_shardings=(ps, ms, ms) if shard else None))
    # A multi-objective search's extra metrics (pareto.EXTRA_METRICS), when it names them.
    needed = pareto.needed(config)
    self.calibration_bins = c.eval.calibration_bins if "eval/ece" in needed else 0
    self.num_params = (state_lib.num_params(shapes.params)
                       if "model/num_params" in needed else None)
    self._eval = bounded(jax.jit(pop_lib.make_eval_fn(self.model, self.calibration_bins),
                                 in_shardings=(ps, replicated, replicated) if shard else None,
                                 out_shardings=ms if shard else None))
    # One program makes a population: keys, parameters, init_from's arrays, settings.
    # (Done eagerly, each of those steps compiled a small program of its own.)
    self._init = jax.jit(functools.partial(
        _init_population, self.model, self.tx, self.sample_batch, self.base_hparams,
        per_member_data_order=config.tune.per_member_data_order,
        shared_names=self.shared_names, padded=self.padded),
        out_shardings=(ps, ms) if shard else None,
        compiler_options=compilation.run_once_options())
    # The shared collections (LoRA's base): one member's, made and placed once.
    self.shared = None
    if self.shared_names:
      self.shared = jax.jit(functools.partial(
          _init_shared, self.model, self.tx, self.sample_batch, self.base_hparams,
          names=self.shared_names), out_shardings=replicated if shard else None,
          compiler_options=compilation.run_once_options())(np.int32(self.seed),
                                                           self.init_copies)
    # Every function that replaces the population donates the old one: updated in place.
    self._apply_exploit = bounded(jax.jit(
        pop_lib.apply_exploit, donate_argnums=0,
        in_shardings=(ps, replicated, replicated, replicated, replicated) if shard else None,
        out_shardings=ps if shard else None,
        compiler_options=compilation.run_once_options()))
    # Selects populations and metric sums alike: placed like its (global) inputs.
    self._select = bounded(jax.jit(pop_lib.select, donate_argnums=2))
    self.data_keys = None
    self.orders = None  # Per-member epoch permutations (a cache; never checkpointed).
    self.num_examples = train_data.num_examples

  @property
  def compiles(self) -> int:
    return len(self.traces)

  def _put(self, tree):
    """Host values (the same on every process) split over the members' devices."""
    if self.member_sharding is None:
      return tree
    return sharding.put(tree, self.member_sharding)

  def member_metrics(self, sums, prefix: str) -> list[dict[str, float]]:
    """Per-member means of metric sums, on every process (gathered from all of them)."""
    return pop_lib.compute_member_metrics(sharding.to_host(sums), prefix)

  def take(self, pop, index: int):
    """Member `index`'s state as host arrays, on every process (to export it): as a
    single run at the member's own settings holds it (a LoRA member with its base,
    its adapters cut to its own rank; a padded member at its own width)."""
    state = single_state(sharding.to_host(pop_lib.take(pop, index)),
                         sharding.to_host(self.shared))
    return state if self.padded is None else unpad(self.padded, self.tx, self.sample_batch,
                                                   state)
  def member_widths(self, members) -> np.ndarray | None:
    """The members' hidden sizes ([P, depth] float32) in a padded phase, else None."""
    if self.padded is None:
      return None
    return np.asarray([m["settings"][WIDTHS] for m in members], np.float32)

  def sample_widths(self, rng: np.random.Generator) -> dict[str, Any]:
    """A refill's hidden sizes, drawn from this padded phase's choices ({} unpadded)."""
    if self.padded is None:
      return {}
    return {WIDTHS: self.padded.choices[int(rng.integers(len(self.padded.choices)))]}

  def dynamic_values(self, members) -> dict[str, np.ndarray]:
    return {k: np.asarray([float(m["settings"][k]) for m in members], np.float32)
            for k in self.dynamic_keys}

  def member_hparams(self, members) -> dict[str, np.ndarray]:
    """A padded LoRA phase's per-member state leaves (rank, scale) from the settings."""
    if not self.lora_keys:
      return {}
    values = [lora.member_hparams(*(m["settings"].get(k, self.lora_default[k])
                                    for k in ("model.lora_rank", "model.lora_alpha")))
              for m in members]
    return {k: np.asarray([v[k] for v in values], np.float32) for k in lora.HPARAMS}

  def checkpoint_items(self, pop, acc) -> dict[str, Any]:
    """What a checkpoint holds: the population, its metric sums and, once, the
    shared collections (the LoRA base)."""
    items = {"population": pop, "metric_sums": acc}
    if self.shared is not None:
      items["shared"] = self.shared
    return items

  def _init_args(self, members) -> tuple:
    ids = np.asarray([m["id"] for m in members], np.int32)
    return (np.int32(self.seed), ids, self.dynamic_values(members), self.init_copies,
            self.member_hparams(members), self.member_widths(members))

  def precompile(self, members) -> None:
    """Compiles the init, train and eval programs for `members` (and PBT's exploit) at
    once; their first calls then reuse them (JAX keeps a lowered program's executable).

    Why: XLA releases the GIL while it compiles, and the init program (built without
    backend optimisation) and the eval program compile on the other core while this
    thread traces, lowers and compiles the train program (`scripts/bench_compile.py
    --cli` shows each program's compile seconds and the first evaluation's time, before
    and after). A failed background compile is dropped: the program's first call
    compiles it again and raises where it always did. Members one at a time (`map`)
    keep compiling on first use.
    """
    if self._host_loop is not None:
      return
    init_args = self._init_args(members)
    pop = jax.eval_shape(self._init, *init_args)[0]
    jobs = [lambda: self._init.lower(*init_args).compile()]
    if self.eval_batches:
      jobs.append(lambda: self._eval.lower(pop, self.eval_batches[0], self.shared).compile())
    if self.strategy == "pbt":  # Needed right after the first evaluation.
      n = len(members)
      vector = lambda dtype, *shape: jax.ShapeDtypeStruct((n, *shape), dtype)
      jobs.append(lambda: self._apply_exploit.lower(
          pop, vector(np.int32), vector(np.bool_),
          {k: vector(np.float32) for k in self.dynamic_keys},
          vector(np.uint32, 2)).compile())
    threads = [threading.Thread(target=_quietly, args=(job,), daemon=True) for job in jobs]
    for t in threads:
      t.start()
    fn, args = self.train_program(members)
    fn.lower(*args).compile()
    for t in threads:
      t.join()

  def initial_state(self, members):
    """A fresh population for `members` (each with its own init RNG and settings)."""
    pop, data_keys = self._init(*self._init_args(members))
    self.data_keys = data_keys  # Placed by the program (out_shardings) when sharded.
    self.orders = self._put(pipeline.new_epoch_order(self.num_examples, (len(members),)))
    return pop, self._put(metrics.new_sums((len(members),)))

  def train_program(self, members):
    """(jitted train function, abstract arguments) of one dispatch for `members`, as
    `train` would call it: what --mode=compile compiles (nothing is allocated)."""
    n = len(members)
    pop, data_keys = jax.eval_shape(self._init, *self._init_args(members))
    acc = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, metrics.new_sums((n,))))
    orders = jax.eval_shape(lambda: pipeline.new_epoch_order(self.num_examples, (n,)))
    if self.member_sharding is not None:  # Placed as `_put` places them: the same program.
      acc, orders = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.member_sharding),
          (acc, orders))
    if self._host_loop is None:
      return self._train, (pop, acc, orders, None, self.data, data_keys, self.shared)
    index = jax.ShapeDtypeStruct((), jnp.int32)  # The member step takes the whole population.
    return self._host_loop.member_step, (pop, acc, orders, index, self.data, data_keys,
                                         self.shared)

  def fresh_sums(self, size: int):
    """Zero metric sums for `size` members, placed like the population."""
    return self._put(metrics.new_sums((size,)))

  def restore(self, ckpts, step: int, pop, acc):
    """The population and metric sums of checkpoint `step` (shaped like `pop`, `acc`)."""
    restored = ckpts.restore(step, self.checkpoint_items(pop, acc))[0]
    if self.shared is not None:  # The base as saved (init_from's source may have changed).
      self.shared = restored["shared"]
    return restored["population"], restored["metric_sums"]  # Placed like the targets.

  def active(self, members) -> jax.Array | None:
    if all(m["active"] for m in members):
      return None  # The step without the member-wise select (population.make_train_fn).
    return self._put(np.asarray([m["active"] for m in members]))

  def train(self, pop, acc, active):
    run = self._host_loop.train if self._host_loop is not None else self._train
    pop, acc, self.orders = run(pop, acc, self.orders, active, self.data, self.data_keys,
                                self.shared)
    return pop, acc

  def evaluate(self, pop) -> list[dict[str, float]]:
    """Per-member eval metrics; with train.ema_decay > 0 the members' EMA
    parameters too (eval/ema_*), as a single run does."""
    def member_metrics(states, prefix):
      sums = metrics.sum_batches(lambda batch: self._eval(states, batch, self.shared),
                                 self.eval_batches)
      calibration = sums.pop("calibration", None)
      values = self.member_metrics(sums, prefix)
      if calibration is not None and prefix == "eval/":
        bins = jax.tree.map(np.asarray, sharding.to_host(calibration))
        for i, m in enumerate(values):
          # A diverged member's metrics are all NaN (metrics.compute): its ECE too.
          m["eval/ece"] = (metrics.expected_calibration_error(
              bins["bin_count"][i], bins["bin_correct"][i], bins["bin_confidence"][i],
              max(float(bins["bin_count"][i].sum()), 1.0))
                           if math.isfinite(m["eval/loss"]) else math.nan)
      return values

    values = member_metrics(pop, "eval/")
    if self.num_params is not None:
      for m in values:
        m["model/num_params"] = float(self.num_params)
    if pop.ema_params is not None:
      for m, ema in zip(values, member_metrics(ema_lib.as_params(pop), "eval/ema_")):
        m.update(ema)
    return values

  def exploit(self, pop, scores: list[float], event: int, members):
    """PBT's exploit and explore at evaluation `event` (its randomness: (seed, event));
    returns (population, parents [P], exploited [P], the members' dynamic settings
    afterwards {key: [P]}). `members`: their current settings."""
    c = self.config.tune.pbt
    scores_arr = np.asarray([s if s is not None else math.nan for s in scores], np.float32)
    event_ = pop_lib.pbt_event(
        scores_arr, self.dynamic_values(members), np.random.default_rng([self.seed, 3, event]),
        self.dynamic_dims, method=c.exploit, fraction=c.fraction,
        factors=tuple(c.perturb_factors), resample_probability=c.resample_probability)
    if not event_["exploited"].any():  # Nobody copies: the population stays as it is.
      return pop, event_["parents"], event_["exploited"], event_["values"]
    new_pop = self._apply_exploit(pop, event_["parents"], event_["exploited"],
                                  event_["values"], event_["rngs"])
    return new_pop, event_["parents"], event_["exploited"], event_["values"]

  def refill(self, pop, acc, members, mask: list[bool]):
    """Replaces the masked slots with fresh members (new init, settings, data order)."""
    fresh = self.initial_state(members)[0]
    mask_arr = self._put(np.asarray(mask))
    pop = self._select(mask_arr, fresh, pop)
    acc = self._select(mask_arr, self._put(metrics.new_sums((len(members),))), acc)
    return pop, acc




def _quietly(job) -> None:
  """Runs `job`; an exception is dropped (`Phase.precompile`: the first call redoes it)."""
  try:
    job()
  except Exception:  # pylint: disable=broad-except
    pass


def single_state(member, shared):
  """A member's state (no member axis) as a single run at its own settings holds it:
  the shared collections (a LoRA base) put back; a padded LoRA member's adapters,
  optimizer moments and averages cut to its own rank, its rank and scale leaves
  dropped (a single run's scale is its config's)."""
  state = pop_lib.with_shared(member, shared)
  if lora.RANK not in state.hparams:
    return state
  rank = int(np.asarray(state.hparams[lora.RANK]))
  hparams = {k: v for k, v in state.hparams.items() if k not in lora.HPARAMS}
  return lora.slice_rank(state, rank).replace(hparams=hparams)


def padded_config(config, member: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`member` (a member's single-run config) with model.lora_rank set to the largest
  rank `config.tune.space` searches: the shapes every member of a padded LoRA phase has."""
  dims = space_lib.member_key_dims(config.tune.space)
  if "model.lora_rank" not in dims:
    return member
  return config_lib.with_settings(member, {"model.lora_rank":
                                           int(dims["model.lora_rank"].largest())})


def _init_population(model, tx, sample_batch, base_hparams, seed, ids, values, copies,
                     member_hparams, widths, *, per_member_data_order: bool, shared_names,
                     padded=None):
  """(population, data keys) for members `ids` (pure; jitted by `Phase`).

  Member i's state is created from `state.init_key(seed, ids[i])` and its data
  order from `pipeline.data_key_of(seed, ids[i])` (one shared order,
  data_key_of(seed), without per_member_data_order): the keys of a single run with
  tune.member=ids[i]. `copies` ({path: array}, init_from's) replace those paths in
  every member; `values` ({key: [P]}) set the dynamic settings; `member_hparams`
  ({name: [P]}) a padded LoRA member's rank and scale, its adapters zero past its
  rank. The `shared_names` collections are left out (XLA drops their per-member
  computation): `_init_shared` makes them once. With `padded` (models/padded.py),
  member i is initialised at its own hidden sizes `widths[i]` and embedded into the
  padded arrays.
  """
  rngs = jax.vmap(lambda i: state_lib.init_key(seed, i))(ids)
  if padded is None:
    pop = pop_lib.create(model, tx, sample_batch, base_hparams, rngs)
  else:
    pop = jax.vmap(lambda rng, w: _create_padded(padded, tx, sample_batch, base_hparams, rng,
                                                 w))(rngs, widths)
  if copies:
    pop = transfer.init_population(copies, pop)
  pop = pop_lib.without_shared(pop, shared_names)
  if member_hparams:
    pop = pop.replace(hparams={**pop.hparams, **member_hparams})
    rank = member_hparams[lora.RANK]
    pop = pop.replace(params=jax.vmap(lora.mask_rank)(pop.params, rank))
    if pop.ema_params is not None:
      pop = pop.replace(ema_params=jax.vmap(lora.mask_rank)(pop.ema_params, rank))
  if values:
    pop = pop_lib.set_dynamic(pop, values)
  data_base = pipeline.base_data_key(seed)
  data_keys = (jax.vmap(lambda i: pipeline.member_data_key(data_base, i))(ids)
               if per_member_data_order else jnp.broadcast_to(data_base, (len(ids), 2)))
  return pop, data_keys


def _init_shared(model, tx, sample_batch, base_hparams, seed, copies, *, names):
  """The collections `names` every member of a phase shares (LoRA: the frozen base),
  once: those of a member with id 0 (pure; jitted by `Phase`), with init_from's
  `copies` in place."""
  rng = state_lib.init_key(seed, 0)[None]  # Member 0's key.
  one = pop_lib.create(model, tx, sample_batch, base_hparams, rng)
  if copies:
    one = transfer.init_population(copies, one)
  return {k: jax.tree.map(lambda x: x[0], one.model_state[k]) for k in names}


def _create_padded(padded, tx, sample_batch, base_hparams, rng, widths):
  """One padded member of hidden sizes `widths`: `state.create`'s state (the same
  split of `rng`, so the same init and train keys as an unpadded run), its variables
  those of its own width embedded (`Padded.init_at`), its widths in its hparams."""
  model = dataclasses.replace(
      padded.model, init=lambda r, batch: padded.init_at(r, batch, widths))
  state = state_lib.create(model, tx, sample_batch, base_hparams, rng)
  return state.replace(hparams={**state.hparams, models.WIDTHS_KEY: widths})
