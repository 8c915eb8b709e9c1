"""Command line: `python -m jaxtrain.main --config=configs/NAME.py --workdir=DIR`.

Parses flags into a locked ConfigDict and hands it to `train.run`. Mistakes
the user can fix are printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from jaxtrain import errors

MODES = ("train", "eval")


def parse(argv: list[str]):
  """Returns (config, workdir, options) from command-line args (argv[0] = program).

  Raises:
    UserError: unknown flag, bad config file or override, missing --workdir.
  """
  fv = flags.FlagValues()  # Fresh flags per call: no global state, callable from tests.
  config_flags.DEFINE_config_file("config", None, "Path to a config file[:arg].",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory of the run (created; resumed if it "
                      "holds a checkpoint).", flag_values=fv)
  flags.DEFINE_enum("mode", "train", MODES, "What to do.", flag_values=fv)
  flags.DEFINE_integer("stop_after_steps", None, "Stop (with a checkpoint) after this "
                       "step; rerun the same command to continue.", flag_values=fv)
  flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: latest).",
                       flag_values=fv)
  flags.DEFINE_bool("allow_config_change", False, "Resume even if the config differs "
                    "from WORKDIR/config.json.", flag_values=fv)
  try:
    fv(argv)
  except flags.Error as e:
    raise errors.UserError(_flag_error_line(str(e))) from None
  except (Exception, SystemExit) as e:  # A config file that fails to execute.
    raise errors.UserError(f"config file failed to load: {type(e).__name__}: "
                           f"{_first_line(str(e))}") from None
  if fv.config is None and fv.mode != "eval":
    raise errors.UserError("--config is required, e.g. --config=configs/digits_mlp.py")
  if not fv.workdir:
    raise errors.UserError("--workdir is required, e.g. --workdir=runs/digits_mlp")
  return fv.config, fv.workdir, {"mode": fv.mode, "stop_after_steps": fv.stop_after_steps,
                                 "allow_config_change": fv.allow_config_change,
                                 "step": fv.step}


def _first_line(text: str) -> str:
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  return lines[0] if lines else text


def _flag_error_line(text: str) -> str:
  """One line from absl/ml_collections flag errors, with a hint for config keys."""
  line = " ".join(text.split())
  if "Could not override" in line or "override" in line.lower():
    import re  # pylint: disable=g-import-not-at-top
    match = re.search(r"--?(config\.[\w.]+)", line)
    key = match.group(1)[len("config."):] if match else None
    if key is not None:
      from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
      known = config_lib.flatten(config_lib.base_config())
      if key not in known:
        return (f"unknown config key {key!r}{errors.did_you_mean(key, known)}; "
                "see jaxtrain/config.py for the keys that exist")
  return line


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv if argv is None else argv
  try:
    config, workdir, options = parse(argv)
    if options["mode"] == "eval":
      from jaxtrain import evaluate  # pylint: disable=g-import-not-at-top
      result = evaluate.run(workdir, config, step=options["step"])
      print(json.dumps(result), file=sys.stdout)
      return 0
    if config.tune.strategy != "none":
      from jaxtrain import tune  # pylint: disable=g-import-not-at-top
      result = tune.run(config, workdir)
      print(f"best {result['metric']}={result['best_score']:.4f} (member "
            f"{result['best_member']}: {result['best_settings']}); {result['num_members']} "
            f"members, {result['member_steps']} member-steps; best member exported to "
            f"{workdir}/best", file=sys.stderr)
      return 0
    from jaxtrain import train  # pylint: disable=g-import-not-at-top
    result = train.run(config, workdir, stop_after_steps=options["stop_after_steps"],
                       allow_config_change=options["allow_config_change"])
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  final = result["final"]
  print(f"{result['status']} at step {result['step']}: "
        + " ".join(f"{k}={v:.4f}" for k, v in final.items())
        + f" (best {result['best']['metric']} at step {result['best']['step']}); "
        f"results in {workdir}/final.json", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
