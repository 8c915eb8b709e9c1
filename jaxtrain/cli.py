"""Command-line parsing for `jaxtrain.main`: flags -> a locked ConfigDict.

Checks what ml_collections would otherwise report as a bare traceback (missing
config file, unknown override key, a value of the wrong type) and raises a
one-line `UserError` instead.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxtrain import config as config_lib
from jaxtrain import errors, paths

MODES = ("train", "eval", "compile")  # compile: jaxtrain/jobs/compile.py, no training.
HELP_FLAGS = ("-h", "--help", "-help", "--helpfull")
# The shipped config files (the package jaxtrain.configs); configs/ in a clone links here.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"

USAGE = """usage: python -m jaxtrain.main --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE ...]

Trains (or resumes) the run in DIR; a config with tune.strategy set tunes a population,
one with eval.cross_validation set cross-validates. Every config key, with its default,
is in jaxtrain/config.py; override any with --config.KEY=VALUE. FILE is a path, or from
any folder the name of a config shipped in jaxtrain/configs/ (e.g. --config=digits_mlp.py).

  python -m jaxtrain.main --config=configs/digits_mlp.py --workdir=runs/digits_mlp
  python -m jaxtrain.main --mode=eval --workdir=runs/digits_mlp --step=best

Exit codes: 0 done, 2 bad input (nothing changed), 3 non-finite loss, 4 a record could
not be written, 75 stopped by SIGTERM/SIGINT with a checkpoint (rerun to resume).

flags:
"""


class HelpRequested(Exception):
  """--help: the text to print (on stdout, exit 0)."""


def parse(argv: list[str]):
  """Returns (config, workdir, options) from command-line args (argv[0] = program).

  Raises:
    UserError: unknown flag, bad config file or override, missing --workdir.
    HelpRequested: --help (or -h); its message is the usage text.
  """
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    raise HelpRequested(USAGE + _flags().get_help(include_special_flags=False).rstrip() + "\n")
  # Checked before ml_collections sees them: it fails on these with a bare
  # OSError, KeyError or AttributeError that does not name the file or key.
  spec = _flag_arg(argv, "config")
  if spec is not None:
    spec = _resolve_config_path(spec)
    argv = _with_flag_arg(argv, "config", spec)
    # A user's own model (model.name='module:Attr') may live beside the config file.
    config_dir = str(Path(spec.split(":")[0]).expanduser().resolve().parent)
    if config_dir not in sys.path:
      sys.path.append(config_dir)
  _check_override_keys(argv)
  # --config.model.kwargs.NAME=VALUE may add an argument the config file does not set
  # (the locked config refuses new keys): applied here, after the file has loaded.
  kwargs_overrides = [a for a in argv[1:] if re.match(r"-{1,2}config\.model\.kwargs\.[^=]+=", a)]
  argv = [a for a in argv if a not in kwargs_overrides]

  fv = _flags(argv)
  try:
    with errors.absl_warnings_muted():  # e.g. "get_config() returned None": said below.
      positional = fv(argv)[1:]
  except flags.Error as e:
    raise errors.UserError(_flag_error_line(str(e), spec)) from None
  except (Exception, SystemExit) as e:  # A config file that fails to execute.
    space_keys = [k for k in _override_keys(argv) if k.startswith("tune.space.")]
    if space_keys and isinstance(e, (KeyError, AttributeError)):
      raise errors.UserError(
          f"cannot override {', '.join(space_keys)}: --config.tune.space.* only changes "
          "search dimensions that the config file defines") from None
    raise errors.UserError(f"--config={spec} failed to load: {_exception_line(e)}") from None
  if positional:
    raise errors.UserError(f"unexpected argument {positional[0]!r}; flags take the form "
                           "--name=value, e.g. --config=configs/digits_mlp.py")
  if fv["config"].present and not isinstance(fv.config, ml_collections.ConfigDict):
    raise errors.UserError(_not_a_config_line(fv.config, spec))
  if kwargs_overrides and fv.config is not None:
    _set_model_kwargs(fv.config, kwargs_overrides)
  if fv.config is None and fv.mode != "eval":
    raise errors.UserError("--config is required, e.g. --config=configs/digits_mlp.py")
  if not fv.workdir:
    raise errors.UserError("--workdir is required, e.g. --workdir=runs/digits_mlp")
  paths.check("--workdir", fv.workdir)
  if fv.start_over and fv.mode != "train":
    raise errors.UserError(f"--start_over starts a new run; it does not go with --mode={fv.mode}")
  if fv.quiet and fv.verbose:
    raise errors.UserError("--quiet and --verbose contradict each other; pass one")
  return fv.config, fv.workdir, {"mode": fv.mode, "stop_after_steps": fv.stop_after_steps,
                                 "allow_config_change": fv.allow_config_change,
                                 "start_over": fv.start_over,
                                 "distributed": (fv.coordinator_address, fv.num_processes,
                                                 fv.process_id),
                                 "step": _step_choice(fv.step),
                                 "verbosity": 0 if fv.quiet else 2 if fv.verbose else 1}


def _flags(argv: list[str] | None = None) -> flags.FlagValues:
  """The command line's flags, on fresh FlagValues (no global state: callable from tests)."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Path to a config file[:arg].",
                                  flag_values=fv, lock_config=True, sys_argv=argv or ["jaxtrain"])
  flags.DEFINE_string("workdir", None, "Directory of the run (created; resumed if it "
                      "holds a checkpoint).", flag_values=fv)
  flags.DEFINE_enum("mode", "train", MODES, "What to do.", flag_values=fv)
  flags.DEFINE_integer("stop_after_steps", None, "Stop (with a checkpoint) after this "
                       "step; rerun the same command to continue.", flag_values=fv)
  flags.DEFINE_string("step", None, "--mode=eval: the checkpoint, N (a step), 'latest' "
                      "(default) or 'best' (by checkpoint.best_metric).", flag_values=fv)
  flags.DEFINE_bool("allow_config_change", False, "Resume even if the config differs "
                    "from WORKDIR/config.json.", flag_values=fv)
  flags.DEFINE_bool("start_over", False, "Move a used --workdir aside (renamed "
                    "WORKDIR.old-DATE-TIME, nothing deleted) and start a new run there.",
                    flag_values=fv)
  flags.DEFINE_bool("quiet", False, "Print the result line only (no progress lines); "
                    "warnings and errors still go to stderr.", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "Also print one line per tuning member at every "
                    "evaluation.", flag_values=fv)
  # Multi-host (jaxtrain/parallel/distributed.py); a TPU pod slice needs none of these.
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a "
                      "multi-process run.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.",
                       flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                       flag_values=fv)
  return fv


def _step_choice(value: str | None) -> int | str | None:
  """--step: an int step, 'latest' or 'best' (None = latest)."""
  if value is None or value in ("latest", "best"):
    return value
  try:
    return int(value)
  except ValueError:
    raise errors.UserError(f"--step={value!r} must be a step number, 'latest' or 'best'") from None


def _flag_arg(argv: list[str], name: str) -> str | None:
  """The value of --name in argv (as --name=VALUE or --name VALUE), or None."""
  for i, arg in enumerate(argv[1:], start=1):
    flag, has_value, value = arg.lstrip("-").partition("=")
    if arg.startswith("-") and flag == name:
      if has_value:
        return value
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def _with_flag_arg(argv: list[str], name: str, value: str) -> list[str]:
  """argv with the value of --name (as --name=VALUE or --name VALUE) replaced by `value`."""
  out = list(argv)
  for i, arg in enumerate(out[1:], start=1):
    flag, has_value, _ = arg.lstrip("-").partition("=")
    if arg.startswith("-") and flag == name:
      if has_value:
        out[i] = f"{arg.split('=', 1)[0]}={value}"
      elif i + 1 < len(out):
        out[i + 1] = value
      break
  return out


def _shipped_configs() -> list[str]:
  """The file names of the configs shipped in jaxtrain/configs (read, not imported)."""
  return sorted(p.name for p in SHIPPED_CONFIGS.glob("*.py") if p.name != "__init__.py")


def _resolve_config_path(spec: str) -> str:
  """--config=PATH[:arg] as given, or with a bare shipped file name made a full path.

  A bare name (`digits_mlp.py`, no folder) that is not a file here names the shipped
  config, so the shipped configs run from any folder and from a plain install. Raises
  `UserError` when neither exists.
  """
  if paths.is_url(spec):  # Else read as PATH "gs" and ARG "//...": "file 'gs' not found".
    raise errors.UserError(
        f"--config={spec}: a config file is Python imported from a local path, not a URL; "
        "copy it to a local file (e.g. gcloud storage cp) and pass that path")
  path, colon, arg = spec.partition(":")
  if Path(path).is_file():
    return spec
  bare = Path(path).name == path
  if bare and path in _shipped_configs():
    return f"{SHIPPED_CONFIGS / path}{colon}{arg}"
  folder = Path(path).parent
  if folder.is_dir() and not bare:  # A typo in a name beside the intended file.
    choices = [p.name for p in folder.glob("*.py")]
  else:  # Also e.g. configs/digits_mlp.py outside a clone: the shipped name works.
    choices = _shipped_configs()
  raise errors.UserError(
      f"--config file {path!r} not found{errors.did_you_mean(Path(path).name, choices)}; "
      f"pass the path of a config file, or the name of one shipped in {SHIPPED_CONFIGS} "
      "(e.g. --config=digits_mlp.py)")


def _set_model_kwargs(config, overrides: list[str]) -> None:
  """Applies --config.model.kwargs.NAME=VALUE (VALUE a Python literal, else a string)."""
  for arg in overrides:
    key, _, text = arg.lstrip("-")[len("config.model.kwargs."):].partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    with config.unlocked():
      config.model.kwargs[key] = value


def _override_keys(argv: list[str]) -> list[str]:
  """The keys of --config.KEY=VALUE (and --[no]config.KEY) overrides in argv."""
  matches = (re.match(r"-{1,2}(?:no)?config\.([^=]+)", arg) for arg in argv[1:])
  return [m.group(1) for m in matches if m]


def _check_override_keys(argv: list[str]) -> None:
  """Raises `UserError` for an override --config.KEY=VALUE of a key not in the schema."""
  known = config_lib.flatten(config_lib.base_config())
  for key in _override_keys(argv):
    # tune.space is free-form (the config file defines its keys); parents of
    # known keys (e.g. --config.optim.schedule) are ml_collections' to check.
    if (key in known or key.startswith(config_lib.FREE_FORM)
        or any(k.startswith(key + ".") for k in known)):
      continue
    raise errors.UserError(
        f"unknown config key {key!r} in --config.{key}"
        f"{errors.did_you_mean(key, known)}; see jaxtrain/config.py for the keys that exist")


def _exception_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _flag_error_line(text: str, spec: str | None) -> str:
  """One line from an absl/ml_collections flag error, naming the config key if any."""
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  if "Error whilst parsing config file" in text:  # get_config raised; its traceback follows.
    return f"--config={spec} failed to load: {lines[-1]}"
  match = re.match(r"flag --config\.([\w.]+)=(.*?): ", text, re.DOTALL)
  default = match and config_lib.flatten(config_lib.base_config()).get(match.group(1))
  if default is not None:  # A value that does not parse as the key's type.
    key, value = match.groups()
    return (f"config key {key!r} must be of type {type(default).__name__} (like the "
            f"default {default!r}), got {value!r} from --config.{key}")
  return " ".join(lines)


def _not_a_config_line(config, spec: str) -> str:
  try:
    getattr(config, "lock", None)  # ml_collections defers an OSError from loading to here.
  except OSError as e:
    return f"--config={spec} failed to load: {_exception_line(e.__cause__ or e)}"
  returned = "None" if config is None else f"a {type(config).__name__}"
  return (f"--config={spec}: get_config() returned {returned}, not an "
          "ml_collections.ConfigDict; return jaxtrain.config.base_config() with overrides")


