"""Warm starts: a Bayesian search that begins from an earlier search's finished trials.

`tune.warm_start_from` names the earlier search: its WORKDIR (a Bayesian search's
Optuna study, wherever its tune.storage kept it; or a random, grid or halving
search's completed members, WORKDIR/tune/result.json), or an Optuna storage URL
with `tune.warm_start_study`. Before the first round is asked, its finished
trials that fit this search's space are added to this search's study
(`optuna.Study.add_trials`), marked with WARM_ATTR: the sampler ranks them like its
own, and `strategies.ask_round` never asks a setting the study already holds.

A PBT search is no source: its members changed their settings while they trained,
so no member's final settings were a trial. Starting the members from the earlier
search's best (or soup) parameters is `init_from.workdir=WORKDIR/best`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import ml_collections

from jaxtrain import config as config_lib
from jaxtrain import errors, paths, records, redact
from jaxtrain.paths import Path
from jaxtrain.io import writers
from jaxtrain.tune import phase as phase_lib
from jaxtrain.tune import space as space_lib
from jaxtrain.tune import storage as storage_lib

WARM_ATTR = "jaxtrain_warm_start"  # Trial user attribute: the search a trial came from.
_SOURCES = ("bayes", "random", "grid", "halving")


def check(c) -> None:
  """tune.warm_start_from and tune.warm_start_study, before anything is written.

  Raises:
    UserError: a strategy without a sampler, a source that is no tuning workdir or
      storage, a source that ranked another metric, a PBT source.
  """
  source = c.tune.warm_start_from
  if not source:
    for key in ("warm_start_study", "warm_start_params"):
      if c.tune[key]:
        raise errors.UserError(f"tune.{key}={c.tune[key]!r} needs tune.warm_start_from, which "
                               "is empty; name the earlier search there")
    return
  if c.tune.warm_start_params:
    _check_params(c)
  if c.tune.strategy != "bayes":
    raise errors.UserError(
        f"tune.warm_start_from seeds a Bayesian search's sampler, but tune.strategy="
        f"{c.tune.strategy!r} has none; use tune.strategy='bayes', or start the members from "
        "the earlier best member with init_from.workdir=EARLIER_WORKDIR/best")
  if _workdir(c) is not None:
    _source_config(c, _workdir(c))
  else:
    storage_lib.target(_as_storage(c))  # Its form, directory or driver; nothing opened.


def _check_params(c) -> None:
  """tune.warm_start_params: a source workdir with an exported best/, and no init_from."""
  workdir = _workdir(c)
  if workdir is None or not (workdir / "best" / "config.json").is_file():
    raise errors.UserError(
        f"tune.warm_start_params=True starts members from the earlier search's best/, but "
        f"tune.warm_start_from={c.tune.warm_start_from!r} is no workdir with one; name a "
        "finished search's --workdir, or set tune.warm_start_params=False")
  if c.init_from.workdir:
    raise errors.UserError(
        f"tune.warm_start_params=True and init_from.workdir={c.init_from.workdir!r} both "
        "choose the members' initial parameters; keep one")


def phase_config(c, settings: dict[str, Any], info, sample_batch):
  """The search config a phase with `settings` is built from: with
  tune.warm_start_params, `c` with init_from.workdir = the earlier search's best/
  when the phase's model fits that checkpoint (checked from its metadata), else `c`
  (said on stdout: its members start fresh)."""
  if not c.tune.warm_start_params:
    return c
  out = copy.deepcopy(c)
  with out.unlocked():
    out.init_from.workdir = str(_workdir(c) / "best")
  try:
    phase_lib.check_init_from(out, settings, info, sample_batch)
  except errors.UserError as e:
    writers.say(f"warm start: {out.init_from.workdir} does not fit the model of "
                f"{space_lib.static_part(settings) or 'this phase'} ({e}); its members start "
                "fresh")
    return c
  return out


def _workdir(c) -> Path | None:
  """tune.warm_start_from as an earlier search's workdir (None: a storage URL)."""
  text = redact.resolve("tune.warm_start_from", c.tune.warm_start_from)
  if paths.is_url(text) and paths.scheme(text) not in paths.SUPPORTED_SCHEMES:
    return None  # An Optuna storage URL (sqlite:///, postgresql://, ...).
  path = paths.of(text, "tune.warm_start_from")
  return path if path.is_dir() else None


def _as_storage(c):
  """`c` with tune.storage = the warm start's storage (to reuse storage.py's checks)."""
  out = copy.deepcopy(c)
  with out.unlocked():
    out.tune.storage = c.tune.warm_start_from
  return out


def _source_config(c, workdir: Path):
  """The earlier search's config (WORKDIR/config.json), checked as a source."""
  key = f"tune.warm_start_from={str(workdir)!r}"
  if not (workdir / "tune").is_dir():
    raise errors.UserError(f"{key} is not a tuning workdir (it has no tune/); name the "
                           "--workdir of an earlier search, or an Optuna storage URL")
  earlier = config_lib.load_snapshot(workdir)
  strategy = earlier.tune.strategy
  if strategy not in _SOURCES:
    raise errors.UserError(
        f"{key} is a tune.strategy={strategy!r} search, whose members changed settings while "
        f"they trained (no member's settings were a trial); warm-start from a "
        f"{', '.join(_SOURCES)} search, or start from its best member with "
        f"init_from.workdir={str(workdir / 'best')!r}")
  if earlier.tune.metric != c.tune.metric:
    raise errors.UserError(f"{key} ranked {earlier.tune.metric}, but this search ranks "
                           f"{c.tune.metric}; warm-start from a search of the same tune.metric")
  return earlier


def earlier_trials(c, dims: list[space_lib.Dimension]) -> tuple[list[dict[str, Any]], int]:
  """([{settings, value}], skipped): the earlier search's finished trials, as settings of
  this search's space, and how many were left out (a key this space does not search, a
  value outside its range, a non-finite score)."""
  source = _workdir(c)
  if source is not None:
    earlier = _source_config(c, source)
    if earlier.tune.strategy == "bayes":
      found = _study_trials(earlier, source, _earlier_dims(source))
    else:
      fix = "restore it, or warm-start from another search"
      result = records.read_object(source / "tune" / "result.json", fix)
      found = [(row["settings"], (row.get("eval") or {}).get(c.tune.metric))
               for row in result.get("members", []) if row.get("status") == "completed"]
  else:
    found = _study_trials(c, None, dims)
  kept = []
  for settings, value in found:
    fitted = _fit(settings, dims)
    if fitted is not None and value is not None and math.isfinite(value):
      kept.append({"settings": fitted, "value": float(value)})
  return kept, len(found) - len(kept)


def _earlier_dims(workdir: Path) -> list[space_lib.Dimension]:
  """The earlier search's space (its config.json: a snapshot keeps the free-form
  tune.space apart from the schema's keys)."""
  saved = records.read_object(workdir / "config.json", "restore it, or warm-start from "
                                                        "another search")
  space = ml_collections.ConfigDict(saved.get("tune", {}).get("space", {}))
  return space_lib.parse_space(space, config_lib.flatten(config_lib.base_config()))


def _study_trials(config, workdir: Path | None, dims) -> list[tuple[dict, float]]:
  """(settings, value) of the COMPLETE trials of a study: the earlier search's own
  (`workdir` given: its tune.storage or WORKDIR/tune/optuna.db, its tune.study_name), or
  tune.warm_start_from's (tune.warm_start_study, else tune.study_name). Choice values
  are decoded with `dims` (the space the trials were asked in)."""
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  if workdir is not None:
    name = config.tune.study_name
    if config.tune.storage:
      storage = storage_lib.open_storage(config, *storage_lib.target(config))
      where = f"{storage_lib.shown(config)}, study {name!r}"
    else:
      path = workdir / "tune" / "optuna.db"
      storage, where = f"sqlite:///{path}", str(path)
      if not path.is_file():
        raise errors.UserError(f"tune.warm_start_from: {path} is missing; it holds the earlier "
                               "search's trials: restore it, or warm-start from another search")
  else:
    storage_config = _as_storage(config)
    storage = storage_lib.open_storage(storage_config, *storage_lib.target(storage_config))
    name = config.tune.warm_start_study or config.tune.study_name
    where = f"tune.warm_start_from={storage_lib.shown(storage_config)[len('tune.storage='):]}"
    where += f", study {name!r}"
  try:
    study = optuna.load_study(study_name=name, storage=storage)
  except KeyError:
    raise errors.UserError(f"{where} does not exist; name the earlier search's study with "
                           "tune.warm_start_study") from None
  metric = study.user_attrs.get(storage_lib.METRIC_ATTR)
  if metric is not None and metric != config.tune.metric:
    raise errors.UserError(f"{where} holds values of {metric}, but this search ranks "
                           f"{config.tune.metric}; warm-start from a study of the same metric")
  by_key = {d.key: d for d in dims}
  out = []
  for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
    settings = {}
    for key, value in t.params.items():
      d = by_key.get(key)
      if d is not None and d.kind == "choice":  # Asked as an index into the choices.
        value = d.choices[value] if 0 <= value < len(d.choices) else None
      settings[key] = value
    out.append((settings, t.value))
  return out


def _fit(settings: dict[str, Any], dims) -> dict[str, Any] | None:
  """`settings` as a point of this space (None: a key missing, or a value outside it)."""
  out = {}
  for d in dims:
    if d.key not in settings or settings[d.key] is None:
      return None
    value = settings[d.key]
    if d.kind == "choice":
      value = tuple(value) if isinstance(value, list) else value
      if value not in d.choices:
        return None
    elif not isinstance(value, (int, float)) or not d.low <= value <= d.high:
      return None
    elif d.kind == "int" and value != int(value):
      return None
    out[d.key] = int(value) if d.kind == "int" else value
  return out


def seed_study(study, c, dims, distribution) -> int:
  """Adds the earlier search's trials to `study` (a `strategies.Study`) unless an
  earlier start of this search did; returns how many it holds from the warm start.
  `distribution(dim)` is the Optuna distribution a dimension is asked with."""
  import optuna  # pylint: disable=g-import-not-at-top
  source = c.tune.warm_start_from
  held = [t for t in study.optuna.get_trials(deepcopy=False)
          if t.user_attrs.get(WARM_ATTR) == source]
  if held:  # Added before a restart (or by another process of a shared search).
    return len(held)
  kept, skipped = earlier_trials(c, dims)
  writers.say(f"warm start: {len(kept)} finished trials of {source} added to the study"
              + (f" ({skipped} outside this search space or without a score, left out)"
                 if skipped else ""))
  trials = []
  for k in kept:
    params = {d.key: (d.choices.index(k["settings"][d.key]) if d.kind == "choice"
                      else k["settings"][d.key]) for d in dims}
    trials.append(optuna.trial.create_trial(
        params=params, distributions={d.key: distribution(d) for d in dims},
        value=k["value"], user_attrs={WARM_ATTR: source}))
  study.optuna.add_trials(trials)
  return len(trials)
