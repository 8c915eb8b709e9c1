"""Checks of the `eval.*` config keys, run by `jaxtrain.jobs.checks.validate`.

Kept free of jax and matplotlib so that validating a config stays cheap.
"""

from __future__ import annotations

import math
import re

from jaxtrain import errors

# "package.module:function" for eval.slice_key (a user's slicing function).
FUNCTION_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def check_config(eval_config) -> None:
  """Raises a one-line `UserError` for a bad `eval.*` value (no imports, no I/O)."""
  e = eval_config
  for key in ("top_k", "calibration_bins", "pgd_steps", "ig_steps"):
    if e[key] <= 0:
      raise errors.UserError(f"eval.{key}={e[key]!r} must be > 0")
  if e.robustness_examples < 0:
    raise errors.UserError(f"eval.robustness_examples={e.robustness_examples!r} must be >= 0 "
                           "(0 = the whole eval split)")
  for key in ("noise_levels", "adversarial_epsilons"):
    values = tuple(e[key])
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
           or v < 0 for v in values):
      raise errors.UserError(f"eval.{key}={values!r} must be a tuple of numbers >= 0, "
                             "e.g. (0.0, 0.1, 0.2)")
  indices = tuple(e.attribution_examples)
  if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
    raise errors.UserError(f"eval.attribution_examples={indices!r} must be a tuple of "
                           "example indices >= 0, e.g. (0, 1, 2)")
  key = e.slice_key
  if ":" in key and not FUNCTION_SPEC.match(key):
    raise errors.UserError(f"eval.slice_key={key!r} is not of the form 'module:function' "
                           "(e.g. 'experiments.slices:by_ink'), 'label' or a dataset feature")
