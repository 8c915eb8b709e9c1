"""A user's own Flax model, named by reference: `model.name = "package.module:Attr"`.

`Attr` is a `flax.linen.Module` class, a `flax.nnx.Module` class, or a function
returning a linen module. Its constructor (or the function) gets the keyword
arguments in `model.kwargs`, plus `num_classes` when it takes one and
`model.kwargs` does not set it. The module is imported like any Python module:
from the installed packages, the current directory, or the config file's
directory (the command line puts that on the path).

The call contract, for every model jaxtrain trains: `__call__(inputs, *, train)`
returns logits `[batch, num_classes]`; the `train` keyword is passed only when
`__call__` takes it, and so is each model-side hyperparameter held in the state
(`dropout_rate`), so that a tuner can change it without recompiling. An NNX class
is turned into a linen module by `flax.nnx.bridge.to_linen` (it gets its `rngs`
there), so the train step stays one pure, jitted, vmappable function.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from jaxtrain import errors


def is_reference(name: str) -> bool:
  return ":" in name


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]


def load(name: str) -> Any:
  """The object `name` ('module:Attr', Attr may be dotted) refers to.

  Raises:
    UserError: the module does not import, or has no such attribute.
  """
  module_name, _, attr = name.partition(":")
  try:
    obj = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's module)
    raise errors.UserError(
        f"model.name={name!r}: module {module_name!r} cannot be imported ({_first_line(e)}); "
        "put it on PYTHONPATH, in the current directory or beside the config file") from None
  for part in attr.split("."):
    if not hasattr(obj, part):
      if module_name == "__main__":  # A notebook's or script's own: not this process's.
        raise errors.UserError(
            f"model.name={name!r} was defined in a notebook or script; the command line cannot "
            "rebuild it: evaluate it from there (jaxtrain.evaluate.run(workdir))")
      raise errors.UserError(f"model.name={name!r}: {module_name} has no attribute {attr!r}")
    obj = getattr(obj, part)
  return obj


def _takes(fn, name: str) -> bool:
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build(name: str, kwargs: dict[str, Any], num_classes: int):
  """The linen module `name` makes with `kwargs` (and `num_classes` where taken).

  Raises:
    UserError: `name` is not a module class or a function returning a linen module,
      or its constructor refuses the keyword arguments.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  obj = load(name)
  kwargs = dict(kwargs)
  if isinstance(obj, type) and issubclass(obj, nn.Module):
    fields = {f.name for f in dataclasses.fields(obj)}
    if "num_classes" in fields and "num_classes" not in kwargs:
      kwargs["num_classes"] = num_classes
    make = obj
  elif isinstance(obj, type) and issubclass(obj, nnx.Module):
    if _takes(obj.__init__, "num_classes") and "num_classes" not in kwargs:
      kwargs["num_classes"] = num_classes
    return _nnx_as_linen(obj, kwargs, name)
  elif callable(obj) and not isinstance(obj, type):
    if _takes(obj, "num_classes") and "num_classes" not in kwargs:
      kwargs["num_classes"] = num_classes
    make = obj
  else:
    raise errors.UserError(
        f"model.name={name!r} is an object of type {type(obj).__name__}, not a flax.linen.Module "
        "class, a flax.nnx.Module class or a function returning a linen module")
  try:
    module = make(**kwargs)
  except TypeError as e:
    raise errors.UserError(f"model.name={name!r} does not take model.kwargs {sorted(kwargs)} "
                           f"({_first_line(e)}); set model.kwargs to its arguments") from None
  if not isinstance(module, nn.Module):
    raise errors.UserError(f"model.name={name!r} returned a {type(module).__name__}, not a "
                           "flax.linen.Module")
  return module


def _nnx_as_linen(cls, kwargs: dict[str, Any], name: str):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  try:
    inspect.signature(cls.__init__).bind(None, **kwargs, rngs=None)
  except TypeError as e:
    raise errors.UserError(f"model.name={name!r} does not take model.kwargs {sorted(kwargs)} "
                           f"({_first_line(e)}); set model.kwargs to its arguments") from None
  return nnx.bridge.to_linen(cls, **kwargs)


def call_keywords(module) -> set[str] | None:
  """The keyword arguments `module.__call__` takes of those jaxtrain passes ('train' and
  the model hyperparameters); None when it takes any (`**kwargs`)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  fn = type(module).__call__
  if isinstance(module, nnx.bridge.ToLinen):
    fn = module.nnx_class.__call__
  params = inspect.signature(fn).parameters
  if any(p.kind is p.VAR_KEYWORD for p in params.values()):
    return None
  return set(params)


def name_of(obj) -> str:
  """The reference ('module:QualName') of a module class or factory passed as an object
  (e.g. defined in a notebook cell: '__main__:MyMLP').

  Raises:
    UserError: an instance, or something defined inside a function, which no
      reference can name.
  """
  module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
  if not isinstance(obj, type) and not callable(obj) or qualname is None:
    raise errors.UserError(f"model={type(obj).__name__} instance: pass the module class (or a "
                           "function returning the module), with its arguments in model.kwargs")
  if not module or "<locals>" in qualname:
    raise errors.UserError(f"model={qualname}: defined inside a function, it cannot be found "
                           "again by name; define it at the top level of a module or notebook")
  name = f"{module}:{qualname}"
  if load(name) is not obj:
    raise errors.UserError(f"model={qualname}: {name} names another object; pass the class or "
                           "function that module defines")
  return name
