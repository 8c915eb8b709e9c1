"""The device mesh and where every array lives on it (`config.mesh`).

One mesh with four named axes serves every run:

- `data`: batches are split over it (data parallelism);
- `fsdp`: batches are split over it too, and large parameters (with their
  optimizer state) are sharded over it instead of replicated;
- `model`: parameters sharded by `mesh.rules` (tensor parallelism);
- `pop`: the member axis of a tuning population.

Sizes are integers; one of them may be -1, meaning "every device left". The
default (`data=-1`, the rest 1) is pure data parallelism over all devices.
Parameter placement: the first `mesh.rules` entry ("REGEX=SPEC") whose regex
matches (`re.search`) the '/'-joined path of a leaf (e.g.
`params/Dense_0/kernel`, `model_state/batch_stats/BatchNorm_0/mean`) gives its
partition spec; leaves no rule matches are sharded over `fsdp` along their
largest divisible dimension when they have at least `mesh.fsdp_min_size`
elements, and replicated otherwise. Optimizer state leaves follow the
parameter they belong to (`optax.tree_map_params`); scalars (step count,
injected hyperparameters) are replicated.

Everything here is about placement: no function changes what is computed.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxtrain import errors

AXES = ("data", "fsdp", "model", "pop")
BATCH_AXES = ("data", "fsdp")  # The batch dimension is split over both.


# --- Config checks that need no devices (called by jobs/checks.validate).

def parse_spec(text: str, where: str) -> PartitionSpec:
  """'fsdp,model' -> P('fsdp', 'model'); 'None' or '' for an unsharded dimension;
  'data+fsdp' shards one dimension over two axes. An empty string replicates."""
  text = text.strip()
  if not text:
    return PartitionSpec()
  dims = []
  for part in text.split(","):
    part = part.strip()
    if part in ("", "None", "none", "-"):
      dims.append(None)
      continue
    axes = tuple(a.strip() for a in part.split("+"))
    for axis in axes:
      if axis not in AXES:
        raise errors.UserError(
            f"{where}: unknown mesh axis {axis!r}{errors.did_you_mean(axis, AXES)}; "
            f"partition specs name the axes {', '.join(AXES)} (or None), e.g. 'fsdp,model'")
    dims.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*dims)


def parse_rules(rules) -> list[tuple[re.Pattern, PartitionSpec, str]]:
  """`mesh.rules` as (compiled regex, spec, original text); raises UserError."""
  parsed = []
  for i, rule in enumerate(rules):
    where = f"mesh.rules[{i}]={rule!r}"
    if not isinstance(rule, str) or "=" not in rule:
      raise errors.UserError(
          f"{where} is not 'REGEX=SPEC'; write e.g. '.*Dense_0/kernel=fsdp,model'")
    pattern, spec = rule.rsplit("=", 1)
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise errors.UserError(f"{where}: the regex does not parse ({e}); fix the pattern "
                             "before '='") from None
    parsed.append((regex, parse_spec(spec, where), rule))
  return parsed


def check_config(mesh_config) -> None:
  """Raises a one-line `UserError` for mesh settings that are wrong on any machine."""
  minus_one = [a for a in AXES if mesh_config[a] == -1]
  for axis in AXES:
    size = mesh_config[axis]
    if size == 0 or size < -1:
      raise errors.UserError(f"mesh.{axis}={size} must be a positive size or -1 "
                             "(every device left)")
  if len(minus_one) > 1:
    raise errors.UserError(
        f"mesh.{minus_one[0]} and mesh.{minus_one[1]} are both -1; at most one mesh axis "
        "can take the devices left, give the others a size")
  if mesh_config.num_devices < 0:
    raise errors.UserError(f"mesh.num_devices={mesh_config.num_devices} must be >= 0 "
                           "(0 = every device)")
  if mesh_config.fsdp_min_size < 0:
    raise errors.UserError(f"mesh.fsdp_min_size={mesh_config.fsdp_min_size} must be >= 0")
  if mesh_config.cpu_devices < 0:
    raise errors.UserError(f"mesh.cpu_devices={mesh_config.cpu_devices} must be >= 0 "
                           "(0 = auto, 1 = one CPU device)")
  parse_rules(mesh_config.rules)


def use_cpu_devices(count: int) -> bool:
  """Splits the host's CPU into `count` JAX devices (`jax_num_cpu_devices`); returns
  whether it did. Left alone (False) when `count` < 2, when the process already chose
  its CPU devices (XLA_FLAGS' --xla_force_host_platform_device_count, or
  JAX_NUM_CPU_DEVICES / jax_num_cpu_devices), or once JAX has started its backends
  (the count can only be set before). No effect on the GPU or TPU devices; call before
  anything touches a device."""
  if count < 2 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return False
  if jax.config.jax_num_cpu_devices != -1:  # Set by JAX_NUM_CPU_DEVICES or the caller.
    return False
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # The backends are up (e.g. a notebook used JAX already).
    return False
  return True


# --- The mesh (needs the devices: call after jax.distributed.initialize).

def mesh_devices(mesh_config) -> list:
  """The devices the mesh spans: all (of every process), or the first num_devices."""
  devices = jax.devices()
  n = mesh_config.num_devices
  if n > len(devices):
    raise errors.UserError(f"mesh.num_devices={n} but JAX sees {len(devices)} devices; "
                           "lower it (0 = every device)")
  return devices[:n] if n else devices


def resolve_sizes(mesh_config, num_devices: int) -> dict[str, int]:
  """{axis: size} with -1 filled in; raises UserError unless the product is `num_devices`."""
  sizes = {a: int(mesh_config[a]) for a in AXES}
  known = math.prod(s for s in sizes.values() if s != -1)
  text = ", ".join(f"{a}={mesh_config[a]}" for a in AXES)
  if -1 in sizes.values():
    axis = next(a for a in AXES if sizes[a] == -1)
    if num_devices % known:
      raise errors.UserError(
          f"mesh sizes ({text}) cannot fill {num_devices} devices: {known} does not divide "
          f"{num_devices}; choose sizes whose product divides the device count")
    sizes[axis] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise errors.UserError(
        f"mesh sizes ({text}) multiply to {math.prod(sizes.values())} but there are "
        f"{num_devices} devices; make the product {num_devices}, set one size to -1, or set "
        "mesh.num_devices")
  return sizes


def make_mesh(mesh_config, *, sizes: dict[str, int] | None = None) -> jax.sharding.Mesh:
  """The device mesh of `config.mesh` (axes `AXES`); raises UserError before any compile."""
  devices = mesh_devices(mesh_config)
  sizes = sizes or resolve_sizes(mesh_config, len(devices))
  # Auto axes: shardings are hints XLA's partitioner propagates (no sharding in types).
  axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, axis_types, devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (example) dimension split over data and fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def population_sharding(mesh) -> NamedSharding:
  """Leading (member) dimension split over pop."""
  return NamedSharding(mesh, PartitionSpec("pop"))


# --- Dispatch on CPU meshes.

class _OneAtATime:
  """A jitted program whose executions run one at a time (see `bounded_dispatch`).

  Everything but the call (`lower`, `eval_shape`, ...) is the jitted function's own.
  """

  def __init__(self, fn):
    self._fn = fn

  def __call__(self, *args, **kwargs):
    return jax.block_until_ready(self._fn(*args, **kwargs))

  def __getattr__(self, name):
    return getattr(self._fn, name)


def bounded_dispatch(fn, mesh):
  """`fn` (jitted), made to finish each execution before the next is queued when
  `mesh` puts several devices of this process on the CPU backend.

  Why: XLA's CPU client deadlocks in a collective's rendezvous when many
  executions of a multi-device program are queued at once. Measured with the
  jax-only repro (`python scripts/cpu_collectives_depth.py`): with at most 24
  executions in flight 20000 steps complete on 2 and 8 fake devices; with 32 or
  an unbounded queue (a training loop that never waits, as ours does between
  log steps) all-reduces hang and XLA aborts the process. The CPU "devices"
  share the host's cores, so waiting gives up little overlap (same repro: 4618
  steps/s at depth 1 against 4900-5700 at depths 2-24, a tiny step where dispatch
  dominates). Depth 1 because the programs donate their inputs: an earlier
  execution's outputs are gone by the time a deeper queue would wait on them.
  Accelerator backends and one-device meshes keep asynchronous dispatch.
  """
  if (mesh is None or jax.default_backend() != "cpu"
      or sum(d.process_index == jax.process_index() for d in mesh.devices.flat) < 2):
    return fn
  return _OneAtATime(fn)


# --- Parameters and state.

def path_str(path) -> str:
  """A pytree key path as 'params/Dense_0/kernel'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def leaf_spec(path: str, shape: tuple[int, ...], rules, sizes: dict[str, int],
              fsdp_min_size: int) -> PartitionSpec:
  """The partition spec of one parameter-like leaf (see the module docstring)."""
  for regex, spec, text in rules:
    if regex.search(path):
      if len(spec) > len(shape):
        raise errors.UserError(
            f"mesh.rules {text!r} gives {len(spec)} dimensions but {path} has shape "
            f"{list(shape)}; write a spec with at most {len(shape)} entries")
      for dim, axes in zip(shape, spec):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        split = math.prod(sizes[a] for a in axes)
        if dim % split:
          raise errors.UserError(
              f"mesh.rules {text!r} splits a dimension of size {dim} of {path} "
              f"(shape {list(shape)}) over {split} devices; it must divide evenly")
      return spec
  if sizes["fsdp"] > 1 and math.prod(shape) >= max(fsdp_min_size, 1):
    # The largest dimension that divides: the most memory saved per leaf.
    dims = [i for i, d in sorted(enumerate(shape), key=lambda x: -x[1]) if d % sizes["fsdp"] == 0]
    if dims:
      spec = [None] * len(shape)
      spec[dims[0]] = "fsdp"
      return PartitionSpec(*spec)
  return PartitionSpec()


def tree_specs(tree, mesh_config, sizes: dict[str, int], prefix: str = "") -> Any:
  """Partition specs for a tree of parameter-like leaves (params, model state)."""
  rules = parse_rules(mesh_config.rules)

  def spec(path, leaf):
    return leaf_spec(prefix + path_str(path), tuple(np.shape(leaf)), rules, sizes,
                     mesh_config.fsdp_min_size)

  return jax.tree_util.tree_map_with_path(spec, tree)


def state_shardings(mesh, state, tx: optax.GradientTransformation, mesh_config):
  """NamedShardings for a TrainState (`state` may be abstract, from jax.eval_shape).

  params and model_state by rules / FSDP default; optimizer state leaves mirror
  their parameter; step, rng, hparams and optimizer scalars are replicated.
  """
  sizes = dict(mesh.shape)
  named = lambda spec: NamedSharding(mesh, spec)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  params = jax.tree.map(named, tree_specs(state.params, mesh_config, sizes, "params/"),
                        is_leaf=is_spec)
  model_state = jax.tree.map(
      named, tree_specs(state.model_state, mesh_config, sizes, "model_state/"), is_leaf=is_spec)
  rep = replicated(mesh)
  try:
    opt_state = optax.tree_map_params(tx, lambda _, s: s, state.opt_state, params,
                                      transform_non_params=lambda _: rep)
  except Exception:  # pylint: disable=broad-except
    # Transforms whose state is not param-shaped trees (e.g. masked): match by path.
    opt_state = _mirror_by_path(state.opt_state, state.params, params, rep)
  fields = {"params": params, "model_state": model_state, "opt_state": opt_state}
  if getattr(state, "ema_params", None) is not None:  # A copy of params: placed alike.
    fields["ema_params"] = params
  return jax.tree.map(lambda _: rep, state).replace(**fields)


def _mirror_by_path(opt_state, abstract_params, param_shardings, rep):
  """Each optimizer leaf takes the sharding of the parameter whose path ends its own
  path and whose shape it has (longest such path); others are replicated."""
  by_path = {}
  for (path, leaf), s in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                             jax.tree.leaves(param_shardings)):
    by_path[path_str(path)] = (tuple(np.shape(leaf)), s)

  def one(path, leaf):
    text, shape = path_str(path), tuple(np.shape(leaf))
    matches = [p for p, (pshape, _) in by_path.items()
               if pshape == shape and (text == p or text.endswith("/" + p))]
    return by_path[max(matches, key=len)][1] if matches else rep

  return jax.tree_util.tree_map_with_path(one, opt_state)


# --- Moving data onto the mesh (works with several processes too).

def put(tree, shardings):
  """Host values (identical on every process) onto the mesh with `shardings`.

  `jax.device_put` cannot build an array that spans other processes' devices;
  `make_array_from_callback` asks each process only for its own shards.
  """
  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), tree)
  return jax.tree.map(one, tree, shardings)


def put_batch(batch, sharding: NamedSharding):
  """This process's slice of a global batch (rows split over processes) onto the mesh."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree):
  """numpy copies of (possibly multi-process) arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def check_single_run(config) -> dict[str, int]:
  """The mesh sizes of a single run; raises UserError (sizes, devices, batch size).

  Needs the devices (call after jax.distributed.initialize), compiles nothing.
  """
  m = config.mesh
  if m.pop != 1:
    raise errors.UserError(
        f"mesh.pop={m.pop} shards a tuning population, but tune.strategy='none'; set "
        "mesh.pop=1 for a single run")
  sizes = resolve_sizes(m, len(mesh_devices(m)))
  split = sizes["data"] * sizes["fsdp"]
  batch_size = config.data.batch_size
  if batch_size % split:
    raise errors.UserError(
        f"data.batch_size={batch_size} does not divide over mesh.data * mesh.fsdp = "
        f"{sizes['data']} * {sizes['fsdp']} = {split} devices; use a multiple of {split}")
  if batch_size % jax.process_count():  # Each process reads its rows of every batch.
    raise errors.UserError(
        f"data.batch_size={batch_size} does not divide over {jax.process_count()} processes; "
        "use a multiple of the process count")
  return sizes


# --- One run's placement: built once in train.py, used where jit is called
# and where data is put on devices.

class Placement:
  """Shardings of one single-model run on its mesh.

  Attributes:
    mesh: the device mesh.
    state: NamedShardings with the TrainState's structure.
    batch: the sharding of a batch (examples over data and fsdp).
    replicated: the sharding of everything else (scalars, metric sums, keys).
  """

  def __init__(self, mesh, state_shardings_):
    self.mesh = mesh
    self.state = state_shardings_
    self.batch = batch_sharding(mesh)
    self.replicated = replicated(mesh)
    self.split = mesh.shape["data"] * mesh.shape["fsdp"]

  @classmethod
  def for_run(cls, config, tx, abstract_state) -> "Placement":
    """Validates `config.mesh` against the devices and the batch size (UserError)."""
    mesh = make_mesh(config.mesh, sizes=check_single_run(config))
    return cls(mesh, state_shardings(mesh, abstract_state, tx, config.mesh))

  def jit_train(self, fn, data_kind: str, stacked: bool = False):
    """jit of `fn(state, acc, guard, order, data, data_key) -> (state, acc, guard, order)`.

    State, metric sums and order are donated (updated in place); the guard is not,
    so the loop can keep a log step's counters while the next step runs. `data` is the whole split (replicated) for the
    device pipeline, or a batch (with a leading step axis when `stacked`).
    """
    rep = self.replicated
    if data_kind == "device":
      data = rep
    else:
      data = NamedSharding(self.mesh, PartitionSpec(None, BATCH_AXES) if stacked
                           else PartitionSpec(BATCH_AXES))
    return bounded_dispatch(jax.jit(fn, donate_argnums=(0, 1, 3),
                                    in_shardings=(self.state, rep, rep, rep, data, rep),
                                    out_shardings=(self.state, rep, rep, rep)), self.mesh)

  def jit_eval(self, fn):
    """jit of `fn(state, batch) -> sums` (sums replicated)."""
    return bounded_dispatch(jax.jit(fn, in_shardings=(self.state, self.batch),
                                    out_shardings=self.replicated), self.mesh)

  def replicate(self, tree):
    """Host or local values, the same on every process, replicated over the mesh."""
    return put(tree, self.replicated)

  def constrain_batch(self, batch):
    """Inside jit: a batch gathered on device is split like a loaded one."""
    return jax.lax.with_sharding_constraint(batch, self.batch)

  def put_batch(self, batch, stacked: bool = False):
    """A training batch read by this process (its rows of the global batch)."""
    sharding = (NamedSharding(self.mesh, PartitionSpec(None, BATCH_AXES)) if stacked
                else self.batch)
    if jax.process_count() == 1:
      return jax.device_put(batch, sharding)
    if stacked:  # Rows are the second axis; make_array_from_process_local_data splits them.
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
          sharding, x, (x.shape[0], x.shape[1] * jax.process_count()) + x.shape[2:]), batch)
    return put_batch(batch, sharding)

  def eval_batch(self, batch: dict):
    """An eval batch (same on every process), zero-padded with mask 0 so its rows
    divide over data * fsdp, split like a training batch."""
    rows = len(batch["labels"])
    pad = -rows % self.split
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    return put(batch, self.batch)


# --- Populations (the tuner).

def population_mesh(config, size: int):
  """The mesh a tuning phase of `size` members runs on, or None for one device.

  The member axis goes on `pop`. With the default mesh (data=-1, the rest 1)
  every device goes to `pop`, as a tuning run has no use for data parallelism
  inside a member; an explicit `mesh.pop` (N or -1) is used as given. The
  other axes must then be 1: the tuner shards members, not their batches.
  Members may themselves be sharded over `fsdp` and `model` (`mesh.rules`, the
  FSDP default), as a single run's state is: `population_state_shardings`.
  When `size` does not divide over `pop` (or tune.shard_population is false)
  the phase runs on one device; with several processes (jax.distributed) `pop`
  spans all of them and each process holds its slice of the members, so the
  members must divide over every device (UserError otherwise).
  """
  m = config.mesh
  devices = mesh_devices(m)
  processes = jax.process_count()
  if processes == 1 and (not config.tune.shard_population or len(devices) == 1):
    return None
  default = (m.data, m.fsdp, m.model, m.pop) == (-1, 1, 1, 1)
  sizes = (dict(data=1, fsdp=1, model=1, pop=len(devices)) if default
           else resolve_sizes(m, len(devices)))
  if sizes["data"] != 1:
    raise errors.UserError(
        f"a tuning run splits members, not their batches, but the mesh has data="
        f"{sizes['data']}; set mesh.data=1 and mesh.pop=-1 (members may also be sharded "
        "themselves over mesh.fsdp and mesh.model)")
  if processes > 1 and (not config.tune.shard_population or size % sizes["pop"]):
    # Across processes every member lives on its process's devices: none may be left out.
    raise errors.UserError(
        f"a tuning run over {processes} processes splits its members over mesh.pop="
        f"{sizes['pop']}, but this phase has {size} members"
        + ("" if config.tune.shard_population else " and tune.shard_population=False")
        + f"; make tune.population_size a multiple of {sizes['pop']}")
  if (sizes["pop"] == 1 and processes == 1) or size % sizes["pop"]:
    return None
  return make_mesh(m, sizes=sizes)


def population_state_shardings(mesh, member_state, tx: optax.GradientTransformation,
                               mesh_config):
  """NamedShardings of a population's state: the leading member axis over `pop`, and
  within a member the placement a single run's state gets on the same mesh
  (`state_shardings` of one member's abstract state: fsdp, model, rules)."""
  single = state_shardings(mesh, member_state, tx, mesh_config)
  return jax.tree.map(lambda s: NamedSharding(mesh, PartitionSpec("pop", *s.spec)), single)


def members_sharded(mesh) -> bool:
  """Whether each member of a population on `mesh` is itself split over devices."""
  return mesh is not None and mesh.shape["fsdp"] * mesh.shape["model"] > 1


def on_one_device(abstract_tree):
  """Abstract arrays (jax.eval_shape) as restore targets on this process's first device.

  Orbax restores a target without shardings with the saved ones, which fail
  when the checkpoint was written on another set of devices.
  """
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # Each process its own.
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                      abstract_tree)
