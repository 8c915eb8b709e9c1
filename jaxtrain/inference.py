"""`jaxtrain.load(workdir)`: a trained model from any workdir, ready to predict.

    run = jaxtrain.load("runs/digits_mlp")          # The latest checkpoint.
    inputs, labels = run.data()                     # data.eval_split, as the dataset stores it.
    probs = run.predict(inputs, probabilities=True)

Every kind of workdir loads: a single run (`which` = "latest", "best" or a step),
a tuning run (its exported best member, WORKDIR/best/, or `member=ID` out of the
population's latest checkpoint), a cross-validation run (`fold=K`), and a LoRA
run as trained or with `merged=True` (the adapters folded into the base weights).
The model is rebuilt from the workdir's config.json by the one build recipe
(jaxtrain/jobs/setup.py) and its checkpoint read by `jaxtrain.jobs.evaluate`;
nothing in the workdir is written. A mistake (no such workdir, step, member or
fold; inputs of the wrong shape) is one `UserError` line that says what to pass.

The module is `inference`, not `load`: a submodule `jaxtrain.load` would replace
the function `jaxtrain.load` on the package once anything imported it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain import errors, models, paths, records
from jaxtrain.core import ema as ema_lib, lora, state as state_lib, step as step_lib
from jaxtrain.data import catalog, pipeline
from jaxtrain.io import checkpoint
from jaxtrain.jobs import checks, evaluate, setup, workdir as workdir_lib
from jaxtrain.models import padded as padded_lib
from jaxtrain.tune import phase as phase_lib, population as pop_lib, space as space_lib
from jaxtrain.paths import Path


@dataclasses.dataclass(repr=False)
class LoadedRun:
  """A trained model as `load` reads it.

  `model.apply(variables, {"inputs": x}, rng, False, hparams)` is how jaxtrain calls
  every model (a LoRA-wrapped one included); `module` is the Flax module behind it
  (`module.apply(variables, x, train=False)`), None for a LoRA model as trained.
  """
  config: ml_collections.ConfigDict  # The loaded model's config (a member's own settings).
  model: models.Model
  variables: dict[str, Any]  # {"params": ..., **model state (e.g. batch_stats)}.
  step: int
  workdir: Path  # The directory whose checkpoint was read (a tuning run's: WORKDIR/best).
  which: str  # "latest", "best" or "step".
  weights: str  # "ema" (train.ema_decay > 0 with eval.use_ema, as --mode=eval scores) or "raw".
  info: catalog.DatasetInfo
  member: int | None = None
  fold: int | None = None
  merged: bool = False
  _state: state_lib.TrainState | None = None  # `variables` as the jitted step takes them.

  def __post_init__(self):
    # One jitted program per batch shape: `predict` feeds it fixed-size batches.
    self._predict = jax.jit(functools.partial(step_lib.predict, self.model))

  @property
  def module(self):
    return self.model.module

  def __repr__(self) -> str:
    where = "".join(f", {k}={getattr(self, k)}" for k in ("member", "fold")
                    if getattr(self, k) is not None)
    return (f"LoadedRun(workdir='{self.workdir}', step={self.step}, which={self.which!r}"
            f"{where}, model={self.config.model.name!r}, weights={self.weights!r}"
            f"{', merged=True' if self.merged else ''})")

  def data(self, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of `split` (default data.eval_split), the inputs as the dataset
    stores them: what `predict` takes."""
    return pipeline.load_eval_arrays(self.config.data, split, raw=True)

  def predict(self, inputs, probabilities: bool = False) -> np.ndarray:
    """The model's logits (softmax probabilities with `probabilities`) for a batch of
    inputs in the dataset's format ([N, *input shape], e.g. uint8 images unscaled),
    converted as the eval pipeline converts them. Batches of data.eval_batch_size (or
    N, when smaller), the last one zero-padded, so each batch shape compiles once.

    Raises:
      UserError: inputs that are not a batch of the dataset's shape and kind.
    """
    x = pipeline.model_inputs(self._checked(inputs), self.config.data)
    size = min(self.config.data.eval_batch_size, len(x))
    # The padded batches of the eval pipeline (its labels unused here): the shapes an
    # evaluation compiled, so the logits are those the run scored.
    outputs = [(self._predict(self._state, batch["inputs"]), int(batch["mask"].sum()))
               for batch in pipeline.eval_batches(x, np.zeros(len(x), np.int32), size)]
    logits = np.concatenate([np.asarray(out, np.float32)[:n] for out, n in outputs])
    if not probabilities:
      return logits
    shifted = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    return (shifted / shifted.sum(-1, keepdims=True)).astype(np.float32)

  def _checked(self, inputs) -> np.ndarray:
    info = self.info
    want = tuple(info.input_shape)
    batch = f"(N, {', '.join(map(str, want))})"
    try:
      x = np.asarray(inputs)
    except ValueError as e:  # Ragged nested lists.
      raise errors.UserError(f"predict: inputs are not one array ({' '.join(str(e).split())}); "
                             f"pass a numpy batch of shape {batch}") from None
    if x.shape == want:
      raise errors.UserError(f"predict: inputs of shape {x.shape} are one example; pass a "
                             f"batch of shape {batch}, e.g. inputs[None]")
    if x.shape[1:] != want or x.ndim != len(want) + 1:
      stored = f"; stored as: {info.description}" if info.description else ""
      raise errors.UserError(f"predict: inputs have shape {x.shape}; {info.name} inputs come "
                             f"in batches of shape {batch} (as run.data() returns them"
                             f"{stored})")
    if not len(x):
      raise errors.UserError("predict: inputs hold no example; pass at least one")
    stored = np.dtype(info.input_dtype)
    if stored == np.uint8 and x.dtype != np.uint8:  # Scaled here: scaled twice otherwise.
      raise errors.UserError(f"predict: inputs are {x.dtype}; {info.name} stores uint8 images: "
                             "pass them unscaled as uint8, predict scales them as training did")
    allowed = "iu" if stored.kind in "iu" else "fiu"
    if x.dtype.kind not in allowed:
      raise errors.UserError(f"predict: inputs are {x.dtype}; {info.name} inputs are "
                             f"{stored.name} {'integers' if allowed == 'iu' else 'numbers'}")
    return x


def load(workdir: str | Path, which: int | str | None = None, *, member: int | None = None,
         fold: int | None = None, merged: bool | None = None) -> LoadedRun:
  """The model of a workdir's checkpoint, ready to predict.

  Args:
    workdir: a run's --workdir (single run, tuning or cross-validation).
    which: "latest" (a single run's default), "best" (the best checkpoint by
      checkpoint.best_metric; for a tuning workdir, its default, the exported best
      member WORKDIR/best) or a step number.
    member: a tuning run's member id: that member of the population's latest
      checkpoint (or of step `which`), with its own settings.
    fold: a cross-validation run's fold (0 .. folds-1; 0 for a holdout split).
    merged: a LoRA run's adapters merged into the base weights: a plain model that
      predicts the same logits (default: the LoRA model as trained).

  Raises:
    UserError: no such workdir, step, member or fold, or a choice that does not fit
      the kind of run (one line, naming what to pass).
  """
  workdir = _run_directory(workdir)
  which = _which(which)
  workdir_lib.add_model_paths(workdir)  # A model of the user's own (model.name='module:Attr').
  config = config_lib.load_snapshot(workdir)
  kind = workdir_lib.kind_of(config.to_dict())
  for name, value, wanted in (("member", member, "tuning run"),
                              ("fold", fold, "cross-validation run")):
    if value is not None and kind != wanted:
      raise errors.UserError(f"{name}={value!r} chooses a model of a {wanted}, but {workdir} is "
                             f"a {kind}; load it without {name}=")
  if kind == "tuning run" and member is None:
    best = workdir / "best"
    if not evaluate.has_checkpoints(best / "checkpoints"):
      raise errors.UserError(
          f"{workdir} is a tuning run without an exported best member ({best} has no "
          "checkpoint: the search has not finished a phase); load a member of its latest "
          "checkpoint with member=ID")
    loaded = load(best, "best" if which is None else which, merged=merged)
    return loaded
  if kind == "tuning run":
    config, info, model, state, step, which = _member(workdir, config, which, member)
  elif kind == "cross-validation run":
    config, info, model, state, step, which = _fold(workdir, config, which, fold)
  else:
    r = evaluate.restore(workdir, "latest" if which is None else which, config=config)
    config, info, model, state, step, which = (r.config, r.info, r.recipe.model, r.state,
                                               r.step, r.which)
  return _loaded(config, info, model, state, step, "step" if which == "--step" else which,
                 workdir, member=member, fold=fold, merged=bool(merged))


def _run_directory(workdir: str | Path) -> Path:
  path = paths.of(workdir, "workdir")
  if not path.exists():
    raise errors.UserError(f"{path} does not exist; pass the --workdir of a jaxtrain run")
  if not path.is_dir():
    raise errors.UserError(f"{path} is a file; pass the --workdir of a jaxtrain run (a "
                           "directory holding config.json)")
  if not (path / "config.json").is_file():
    raise errors.UserError(f"{path} is not a jaxtrain run (it has no config.json); pass the "
                           "--workdir a run wrote")
  return path


def _which(which):
  """`which` checked: None, "latest", "best" or a step number (an int)."""
  if which is None or which in ("latest", "best"):
    return which
  if isinstance(which, (int, np.integer)) and not isinstance(which, bool) and which >= 0:
    return int(which)
  raise errors.UserError(f"which={which!r} is not a checkpoint; use 'latest', 'best' or a "
                         "step number")


def _member(workdir: Path, config, which, member: int):
  """(config, info, model, state, step, which) of tuning member `member` in the latest
  population checkpoint (or step `which`): the members, their settings and the
  population's shapes come from that checkpoint's loop state (jaxtrain/tune/loop.py)."""
  directory = workdir / "tune" / "checkpoints"
  if not evaluate.has_checkpoints(directory):
    raise errors.UserError(f"no checkpoint in {directory}; the search has saved none yet")
  with checkpoint.Checkpoints(directory, keep=config.checkpoint.keep) as ckpts:
    step, which = evaluate.choose_step(ckpts, which, "latest", workdir)
    members = ckpts.restore_loop(step).get("members") or []
  ids = [m["id"] for m in members]
  if member not in ids:
    raise errors.UserError(
        f"member={member!r} is not in the population of {directory / str(step)}; its members: "
        f"{', '.join(map(str, ids)) or 'none'} (every member's score: "
        f"{workdir / 'tune' / 'result.json'})")
  index = ids.index(member)
  settings = members[index]["settings"]
  member_config = phase_lib.member_config(config, settings)
  checks.validate(member_config)
  _, info = catalog.split_of(member_config.data, member_config.data.eval_split)
  # Built as its phase built it: the searched dynamic keys exist in every member; with
  # tune.pad_widths every width of its depth is padded to the widest (no LoRA there).
  searched = tuple(sorted(k for k in settings if k in space_lib.DYNAMIC_KEYS))
  choices = _width_choices(workdir, config, settings)
  if not choices:
    return _member_of_phase(workdir, directory, config, member_config, info, members, index,
                            searched, step, which)
  phase_config = phase_lib.member_config(
      config, {**settings, phase_lib.WIDTHS: padded_lib.widest(choices)})
  r, padded = phase_lib.recipe(phase_config, info, searched, choices,
                               evaluate.sample_batch(info))
  pop, step, _, _ = evaluate.restore_population(
      directory, member_config, _population_shape(r, info, len(members)), step,
      workdir=workdir)
  state = pop_lib.take(pop, index)
  if padded is None:
    return member_config, info, r.model, state, step, which
  state = phase_lib.unpad(padded, r.tx, evaluate.sample_batch(info), jax.device_get(state))
  model = padded.solo[padded.choices.index(tuple(settings[phase_lib.WIDTHS]))]
  return member_config, info, model, state, step, which


def _member_of_phase(workdir, directory, config, member_config, info, members, index,
                     searched, step, which):
  """`_member` of an unpadded phase: a LoRA phase pads its members to the largest
  searched rank and holds its base once."""
  # (The snapshot's schema drops tune.space; config.json still holds it.)
  saved = records.read_object(workdir / "config.json", "restore it from the run")
  searched_config = config_lib.with_settings(config, {})
  with searched_config.unlocked():
    searched_config.tune.space = ml_collections.ConfigDict(
        (saved.get("tune") or {}).get("space") or {})
  lora_keys = tuple(space_lib.member_key_dims(searched_config.tune.space))
  padded = phase_lib.padded_config(searched_config, member_config)
  r = setup.recipe(padded, info, searched=searched + lora_keys)
  shape = _population_shape(r, info, len(members))
  if padded.model.lora_rank <= 0:
    pop, step, _, _ = evaluate.restore_population(directory, member_config, shape, step,
                                                  workdir=workdir)
    return member_config, info, r.model, pop_lib.take(pop, index), step, which
  shared = {lora.BASE: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                    shape.model_state[lora.BASE])}
  (pop, shared), step, _, _ = evaluate.restore_population(
      directory, member_config, pop_lib.without_shared(shape, tuple(shared)), step,
      workdir=workdir, shared=shared)
  model = setup.recipe(member_config, info, searched=searched).model  # Its own rank.
  state = phase_lib.single_state(pop_lib.take(pop, index), shared)
  return member_config, info, model, state, step, which


def _width_choices(workdir: Path, config, settings) -> tuple:
  """The widths padded together with a member of `settings` (tune.pad_widths), from the
  search space in WORKDIR/config.json (the schema's snapshot leaves tune.space out)."""
  if not config.tune.pad_widths:
    return ()
  saved = records.read_object(workdir / "config.json", "pass the --workdir a search wrote")
  space = ml_collections.ConfigDict(saved.get("tune", {}).get("space", {}))
  dims = space_lib.parse_space(space, config_lib.flatten(config_lib.base_config()))
  return phase_lib.width_choices(config, dims, settings)


def _population_shape(r: setup.Recipe, info: catalog.DatasetInfo, size: int):
  """The abstract state of `size` members made by recipe `r`, as the tuner creates them."""
  rngs = jax.ShapeDtypeStruct((size, *setup.RNG_SHAPE.shape), setup.RNG_SHAPE.dtype)
  return jax.eval_shape(lambda keys: pop_lib.create(
      r.model, r.tx, evaluate.sample_batch(info), r.hparams, keys), rngs)


def _fold(workdir: Path, config, which, fold: int | None):
  """(config, info, model, state, step, which) of fold `fold` of a cross-validation run."""
  cv = config.eval.cross_validation
  size = cv.folds or 1  # A holdout split trains one member.
  folds = f"fold=0..{size - 1}" if size > 1 else "fold=0 (its holdout split)"
  if fold is None or isinstance(fold, bool) or fold not in range(size):
    what = "which fold" if fold is None else f"fold={fold!r} is not one of them"
    raise errors.UserError(f"{workdir} is a cross-validation run of {size} model(s), one per "
                           f"fold: {what}; pass {folds} (per-fold scores in "
                           f"{workdir / 'cv.json'})")
  checks.validate(config)
  _, info = catalog.split_of(config.data, config.data.train_split)
  r = setup.recipe(config, info)
  pop, step, which, _ = evaluate.restore_population(
      workdir / "checkpoints", config, _population_shape(r, info, size), which,
      workdir=workdir)
  return config, info, r.model, pop_lib.take(pop, int(fold)), step, which


def _loaded(config, info, model, state, step, which, workdir, *, member, fold,
            merged) -> LoadedRun:
  """The `LoadedRun` of a restored state: the weights --mode=eval scores, merged if asked."""
  use_ema = bool(config.eval.use_ema) and state.ema_params is not None
  params, model_state = (state.ema_params if use_ema else state.params), state.model_state
  if merged:
    if config.model.lora_rank <= 0:
      raise errors.UserError(f"merged=True merges LoRA adapters, but {workdir} is not a LoRA "
                             "run (model.lora_rank=0); load it without merged=")
    params, model_state = jax.jit(lora.merge, static_argnums=2)(
        params, model_state, lora.scale_of(config.model))
    config = workdir_lib.merged_config(config)
    model = setup.recipe(config, info).model
  hparams = {k: v for k, v in state.hparams.items() if k != ema_lib.KEY}
  slim = state_lib.TrainState(step=state.step, params=params, model_state=model_state,
                              opt_state=None, hparams=hparams, rng=state.rng)
  return LoadedRun(config=config, model=model, variables={"params": params, **model_state},
                   step=int(step), workdir=paths.of(workdir), which=which,
                   weights="ema" if use_ema else "raw", info=info, member=member, fold=fold,
                   merged=merged, _state=slim)
