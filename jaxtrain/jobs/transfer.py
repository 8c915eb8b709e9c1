"""Transfer learning: start a run from another run's checkpoint (`config.init_from`).

`init_state` copies the parameters and model state (batch statistics) of
another run into a freshly initialized state; the optimizer state, step and
RNG stay fresh. Paths are '/'-joined with the collection first:
'params/Conv_0/kernel', 'batch_stats/BatchNorm_0/mean'. Each checkpoint path is
renamed by `init_from.rename` ('old_regex=new', `re.sub`, in order), then kept
if it matches an `include` regex (all when empty) and no `exclude` regex. A
kept path must exist in this model with the same shape and dtype, and every
path of this model that the filters keep must come from the checkpoint; all
violations are reported together in one `UserError` before anything is
compiled. Nothing is re-initialized or cast silently.

Only the params and model-state parts of the source checkpoint are read
(Orbax partial restore, as host numpy arrays). A source or target that uses
LoRA is seen in its base form: the source's adapters are merged first, and
the target's `lora_base` collection receives the 'params/...' paths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors, paths, redact
from jaxtrain.core import lora
from jaxtrain.core.param_groups import path_str
from jaxtrain.paths import Path

_STEP_WORDS = ("latest", "best")


# --- Config checks (no files are read beyond existence checks).

def _regexes(key: str, patterns) -> list[re.Pattern]:
  out = []
  for p in patterns:
    try:
      out.append(re.compile(str(p)))
    except re.error as e:
      raise errors.UserError(f"{key} regex {p!r} does not compile ({e}); "
                             "fix the regular expression") from None
  return out


def parse_rename(specs) -> list[tuple[re.Pattern, str]]:
  """('old_regex=new', ...) -> [(compiled, replacement)]; raises `UserError`."""
  out = []
  for spec in specs:
    old, sep, new = str(spec).rpartition("=")
    if not sep or not old:
      raise errors.UserError(
          f"init_from.rename entry {spec!r} must be 'old_regex=new', "
          "e.g. 'params/Dense_0/=params/hidden/'")
    out.extend((r, new) for r in _regexes("init_from.rename", [old]))
  return out


def check_config(init_config) -> None:
  """Raises `UserError` for a bad `init_from` section. Checks that the source
  workdir exists."""
  ic = init_config
  _regexes("init_from.include", ic.include)
  _regexes("init_from.exclude", ic.exclude)
  parse_rename(ic.rename)
  step = str(ic.step)
  if step not in _STEP_WORDS and not (step.isdigit()):
    raise errors.UserError(f"init_from.step={ic.step!r} must be 'latest' (or 0), 'best' or "
                           "a step number")
  if not ic.workdir:
    if ic.include or ic.exclude or ic.rename:
      raise errors.UserError("init_from.include/exclude/rename are set but "
                             "init_from.workdir is empty; set the run to start from")
    return
  source = paths.of(redact.resolve("init_from.workdir", ic.workdir), "init_from.workdir")
  ckpt_dir = source / "checkpoints"
  if not (source / "config.json").is_file() or not ckpt_dir.is_dir() or not any(
      p.name.isdigit() for p in ckpt_dir.iterdir()):
    raise errors.UserError(
        f"init_from.workdir={ic.workdir!r} holds no jaxtrain run with a checkpoint (it needs "
        "config.json and checkpoints/<step>); train that run first or fix the path")


# --- Restoring another run's parameters.

def _flat(tree, describe) -> dict[str, Any]:
  return {path_str(k): describe(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _base_view(params, model_state) -> dict:
  """{'params': base params, **other collections}; LoRA's frozen base weights and the
  leaves it trains whole count as params (the adapters do not)."""
  if lora.BASE in model_state:
    others = {k: v for k, v in model_state.items() if k != lora.BASE}
    return {"params": lora.base_tree(params, model_state), **others}
  return {"params": params, **model_state}


def _resolve_step(ckpt_dir: Path, wanted: str) -> int:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with errors.absl_warnings_muted():  # Orbax notes that read_only implies no saves.
    options = ocp.CheckpointManagerOptions(read_only=True, best_fn=lambda m: m["score"],
                                           best_mode="max")
    manager = ocp.CheckpointManager(ckpt_dir, options=options)
    steps = sorted(manager.all_steps())
    best = manager.best_step()
    manager.close()
  if not steps:
    raise errors.UserError(f"init_from.workdir: no checkpoint in {ckpt_dir}; train that run first")
  if wanted in ("latest", "0"):
    return steps[-1]
  if wanted == "best":
    return best if best is not None else steps[-1]
  if int(wanted) not in steps:
    raise errors.UserError(f"init_from.step={wanted} is not a checkpoint of {ckpt_dir.parent}; "
                           f"available: {', '.join(map(str, steps))}")
  return int(wanted)


def _unreadable(item: Path, e: Exception) -> errors.UserError:
  text = " ".join(str(e).split())[:300]
  return errors.UserError(f"init_from checkpoint {item.parent} cannot be read "
                          f"({type(e).__name__}: {text}); choose another init_from.step")


def _source_metadata(item: Path) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  # Closed on every exit: an open checkpointer's threads printed tracebacks at exit.
  with ocp.PyTreeCheckpointer() as checkpointer:
    try:
      with errors.absl_warnings_muted():
        meta = checkpointer.metadata(item).item_metadata["train_state"]
    except Exception as e:  # Orbax raises several types for unreadable files.
      raise _unreadable(item, e) from None
  if not isinstance(meta, dict) or "model_state" not in meta:
    raise _unreadable(item, ValueError("no train_state metadata"))
  return meta


def _read_arrays(item: Path, meta: dict) -> dict:
  """The arrays of `meta` (a part of the source's train state), as host arrays, checked
  against the checksums saved with them."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from jaxtrain.io import checkpoint  # pylint: disable=g-import-not-at-top
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), meta)
  with ocp.PyTreeCheckpointer() as checkpointer:
    try:
      with errors.absl_warnings_muted():
        restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(
            item={"train_state": abstract},
            restore_args={"train_state": restore_args}, partial_restore=True))["train_state"]
    except Exception as e:
      raise _unreadable(item, e) from None
  damaged = checkpoint.verify(item.parent, restored, prefix="train_state/")
  if damaged:
    raise errors.UserError(f"init_from checkpoint {item.parent} "
                           f"{checkpoint.damaged_text(damaged)}; choose another init_from.step")
  return restored


def filter_of(init_config) -> Callable[[str], bool]:
  """Whether a path ('params/Dense_1/kernel') is to come from the checkpoint: it matches
  an `include` regex (all do when there is none) and no `exclude` regex."""
  include = _regexes("init_from.include", init_config.include)
  exclude = _regexes("init_from.exclude", init_config.exclude)

  def wanted(path: str) -> bool:
    return ((not include or any(r.search(path) for r in include))
            and not any(r.search(path) for r in exclude))
  return wanted


def plan(source: dict[str, tuple], target: dict[str, tuple], init_config) -> dict[str, str]:
  """{target path: source path} to copy; raises one `UserError` listing every problem.

  `source` and `target` map paths to (shape, dtype name).
  """
  wanted = filter_of(init_config)
  rename = parse_rename(init_config.rename)

  copies, problems = {}, []
  for src in sorted(source):
    dst = src
    for pattern, new in rename:
      dst = pattern.sub(new, dst)
    if not wanted(dst):
      continue
    named = dst if dst == src else f"{dst} (renamed from {src})"
    if dst not in target:
      problems.append(f"{named} is in the checkpoint but not in this model")
    elif dst in copies:
      problems.append(f"{named} is also the target of {copies[dst]}")
    elif source[src] != target[dst]:
      (s_shape, s_dtype), (t_shape, t_dtype) = source[src], target[dst]
      what = "shape" if s_shape != t_shape else "dtype"
      problems.append(f"{named} {what} differs: {s_dtype}{list(s_shape)} in the checkpoint, "
                      f"{t_dtype}{list(t_shape)} here")
      copies[dst] = src
    else:
      copies[dst] = src
  problems += [f"{dst} is in this model but not in the checkpoint"
               for dst in sorted(target) if wanted(dst) and dst not in copies]
  if problems:
    raise errors.UserError(
        f"init_from {init_config.workdir} does not fit this model ({len(problems)} problems: "
        f"{'; '.join(problems)}); leave paths that are new on purpose (e.g. a new head) to "
        "init_from.exclude, map moved ones with init_from.rename, or restrict "
        "init_from.include")
  if not copies:
    raise errors.UserError(f"init_from.include/exclude select no array of {init_config.workdir}; "
                           "loosen the regexes")
  return copies


def load(init_config, params, model_state, *, read: bool = True
         ) -> tuple[dict[str, np.ndarray], dict]:
  """Checks `init_config` against a model and reads the arrays to copy.

  `params` and `model_state` are one model's trees (arrays or ShapeDtypeStructs:
  only shapes and dtypes are used). Returns ({target path: host array}, record),
  the record being what WORKDIR/init_from.json holds (source, step, copied and
  fresh paths). With `read=False` only the checkpoint's metadata is read: the
  check alone, and no arrays.

  Raises:
    UserError: the checkpoint does not fit (every problem listed), or cannot be read.
  """
  # Orbax wants absolute paths (or gs:// URLs).
  source_dir = paths.absolute(redact.resolve("init_from.workdir", init_config.workdir),
                              "init_from.workdir")
  source_config = config_lib.load_snapshot(source_dir)
  step = _resolve_step(source_dir / "checkpoints", str(init_config.step))
  item = source_dir / "checkpoints" / str(step) / "state"
  meta = _source_metadata(item)
  # The source's average of its parameters stands in for them with init_from.use_ema.
  key = "ema_params" if init_config.use_ema else "params"
  if init_config.use_ema and (not source_config.train.ema_decay > 0
                              or meta.get("ema_params") is None):
    raise errors.UserError(
        f"init_from.use_ema=True but {source_dir} kept no EMA of its parameters (its "
        "train.ema_decay is 0); set init_from.use_ema=False or start from a run with EMA")
  meta = {key: meta[key], "model_state": meta["model_state"]}
  describe = lambda m: (tuple(m.shape), np.dtype(m.dtype).name)
  source_scale = (lora.scale_of(source_config.model)
                  if source_config.model.lora_rank > 0 else None)
  source_view = _flat(_base_view(meta[key], meta["model_state"]), describe)
  target = _flat(_base_view(params, model_state), describe)
  copies = plan(source_view, target, init_config)
  record = {"workdir": str(source_dir), "step": step,
            "copied": {dst: src for dst, src in sorted(copies.items())},
            "fresh": sorted(p for p in target if p not in copies)}
  if not read:
    return {}, record

  restored = _read_arrays(item, meta)
  if source_scale is not None:
    restored_params, restored_state = lora.merge(
        restored[key], restored["model_state"], source_scale)
  else:
    restored_params, restored_state = restored[key], restored["model_state"]
  arrays = _flat(_base_view(restored_params, restored_state), np.asarray)
  return {dst: arrays[src] for dst, src in copies.items()}, record


def _with_copies(params, model_state, copies: dict[str, np.ndarray], leading: tuple[int, ...]):
  """(params, model_state) with the copied paths replaced, broadcast over `leading` axes."""
  def pick(key_path, fresh):
    array = copies.get(path_str(key_path))
    return fresh if array is None else jnp.broadcast_to(jnp.asarray(array),
                                                        leading + array.shape)

  new = jax.tree_util.tree_map_with_path(pick, _base_view(params, model_state))
  other = {k: v for k, v in new.items() if k != "params"}
  if lora.BASE in model_state:
    params, lora_state = lora.with_base_tree(params, model_state, new["params"])
    return params, {**other, lora.BASE: lora_state[lora.BASE]}
  return new["params"], other


def write_record(workdir: Path | None, record: dict) -> None:
  """WORKDIR/init_from.json: what `load` copied from where."""
  if workdir is not None:
    (paths.of(workdir) / "init_from.json").write_text(json.dumps(record, indent=2) + "\n")


def init_state(init_config, state, workdir: Path | None = None):
  """`state` with params and model state copied from `init_config.workdir`.

  Writes WORKDIR/init_from.json (source, step, which paths were copied and
  which kept their fresh initialization) when `workdir` is given.

  Raises:
    UserError: the checkpoint does not fit (every problem listed), or cannot be read.
  """
  copies, record = load(init_config, state.params, state.model_state)
  params, model_state = _with_copies(state.params, state.model_state, copies, ())
  state = state.replace(params=params, model_state=model_state)
  if state.ema_params is not None:  # The average starts from the loaded parameters.
    state = state.replace(ema_params=jax.tree.map(jnp.copy, params))  # Own buffers: donated.
  write_record(workdir, record)
  return state


def init_population(copies: dict[str, np.ndarray], pop):
  """A population (leading member axis) whose every member starts from `copies`
  (from `load` on one member's shapes); paths not copied keep each member's own
  fresh initialization."""
  leading = jax.tree.leaves(pop.params)[0].shape[:1]
  params, model_state = _with_copies(pop.params, pop.model_state, copies, leading)
  pop = pop.replace(params=params, model_state=model_state)
  if pop.ema_params is not None:  # The averages start from the loaded parameters.
    pop = pop.replace(ema_params=jax.tree.map(jnp.copy, params))
  return pop
