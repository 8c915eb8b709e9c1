"""Command line: `python -m jaxtrain.main --config=configs/NAME.py --workdir=DIR`.

Parses flags into a locked ConfigDict (`jaxtrain.cli`) and hands it to
`train.run`, `tune.run` (when the config selects a tuning strategy) or
`evaluate.run` (`--mode=eval`). Mistakes the user can fix are printed as one
line on stderr with exit code 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys

INTERRUPTED = ("error: interrupted (Ctrl-C) outside the training loop; rerun the same command "
               "to continue from the last checkpoint")


def _exit_interrupted(signum, frame):
  del signum, frame
  print(INTERRUPTED, file=sys.stderr, flush=True)
  os._exit(128 + signal.SIGINT)  # Nothing is written yet: nothing to unwind.


if __name__ == "__main__":  # Ctrl-C while the modules below load: one line, no traceback.
  signal.signal(signal.SIGINT, _exit_interrupted)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxtrain import errors, redact
from jaxtrain.io import preemption
from jaxtrain.parallel import distributed
from jaxtrain.cli import HelpRequested, parse


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv if argv is None else argv
  errors.set_command_line(True)  # Errors name flags (--allow_config_change), not keywords.
  try:
    with preemption.early_interrupts():
      return _main(argv)
  finally:
    errors.set_command_line(False)  # main() called from Python (tests, a notebook).


def _main(argv: list[str]) -> int:
  try:
    config, workdir, options = parse(argv)
  except HelpRequested as e:
    print(e, end="", file=sys.stdout)
    return 0
  except errors.JaxtrainError as e:
    print(f"error: {redact.text(str(e))}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    return _interrupted()
  # What Orbax and TFDS log, and what their threads raise, goes to WORKDIR/jaxtrain.log:
  # the terminal gets jaxtrain's progress lines and, on failure, one error line.
  with errors.library_output_to_log(workdir, clean=redact.text):
    try:
      return _run(config, workdir, options)
    except errors.JaxtrainError as e:
      print(f"error: {redact.text(str(e))}", file=sys.stderr)
      return e.exit_code
    except KeyboardInterrupt:  # Before training started or after it ended (else exit 75).
      return _interrupted()
    except Exception:  # pylint: disable=broad-except
      if preemption.interrupted_early():  # A library turned the Ctrl-C into another error.
        return _interrupted()
      raise


def _interrupted() -> int:
  print(INTERRUPTED, file=sys.stderr)
  return 128 + signal.SIGINT


def _interruptible(run, *args, **kwargs) -> dict:
  """`run`'s result; a Ctrl-C that stopped it (after its checkpoint) is the preempted
  result here (exit code 75), where from Python it raises `errors.Interrupted`."""
  try:
    return run(*args, **kwargs)
  except errors.Interrupted as e:
    return e.result


def _run(config, workdir, options) -> int:
  from jaxtrain.io import writers  # pylint: disable=g-import-not-at-top
  writers.set_verbosity(options["verbosity"])  # Every call: main() runs again in a notebook.
  # Before anything touches a device: several processes then share one mesh.
  several = distributed.initialize(*options["distributed"])
  if config is not None:  # Schema first: the dispatch below reads config.tune.
    from jaxtrain.io import compilation  # pylint: disable=g-import-not-at-top
    from jaxtrain.jobs import checks  # pylint: disable=g-import-not-at-top
    checks.validate(config)
    if not several and options["mode"] != "eval" and (config.mesh.cpu_devices
                                                      or config.tune.strategy != "none"):
      from jaxtrain.parallel import sharding  # pylint: disable=g-import-not-at-top
      from jaxtrain.tune import execution  # pylint: disable=g-import-not-at-top
      sharding.use_cpu_devices(execution.cpu_devices_for(config))  # Before JAX starts.
    compilation.enable_cache(config.compile.cache_dir)  # Every mode compiles (tuning too).
  preemption.check_early()  # A Ctrl-C during the imports above stops here.
  if options["start_over"]:  # After every check of the config: a refused run moves nothing.
    from jaxtrain.jobs import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    workdir_lib.move_aside_and_say(workdir)
  # Each entry point also validates (dataset splits too) before device work.
  if options["mode"] == "eval":
    from jaxtrain.io import writers  # pylint: disable=g-import-not-at-top
    from jaxtrain.jobs import evaluate  # pylint: disable=g-import-not-at-top
    result = evaluate.run(workdir, config, step=options["step"], report=True)
    if result.get("diverged"):
      print(f"warning: the parameters of step {result['step']} in {workdir} are not finite "
            "(the run diverged); every metric is NaN", file=sys.stderr)
    print(json.dumps(writers.json_safe(result)), file=sys.stdout)
    return 0
  if options["mode"] == "compile":  # Compile the train step, report memory and FLOPs.
    from jaxtrain.jobs import compile as compile_lib  # pylint: disable=g-import-not-at-top
    if config.tune.strategy != "none":  # The population's program, not one member's.
      from jaxtrain.tune import loop as tune_loop  # pylint: disable=g-import-not-at-top
      report = tune_loop.compile_report(config)
    else:
      report = compile_lib.run(config, workdir)
    print(compile_lib.format_report(report), file=sys.stderr)
    print(json.dumps(report), file=sys.stdout)
    return 0
  from jaxtrain.tune import cv  # pylint: disable=g-import-not-at-top
  if cv.enabled(config):  # k folds (or a holdout split) as one population.
    result = _interruptible(cv.run, config, workdir,
                            stop_after_steps=options["stop_after_steps"])
    if result["status"] != "completed":
      print(f"{result['status']} at step {result['step']}: checkpoint saved in "
            f"{workdir}/checkpoints; rerun the same command to resume", file=sys.stderr)
      return errors.EXIT_PREEMPTED if result["status"] == "preempted" else 0
    print(cv.summary_line(result, workdir), file=sys.stdout)
    return 0
  if config.tune.strategy != "none":
    from jaxtrain import tune  # pylint: disable=g-import-not-at-top
    result = _interruptible(tune.run, config, workdir,
                            stop_after_steps=options["stop_after_steps"])
    if result["status"] == "preempted":
      print(f"preempted: checkpoint saved in {workdir}/tune/checkpoints; rerun the same "
            "command to resume", file=sys.stderr)
      return errors.EXIT_PREEMPTED
    if result["best_score"] is None:  # Stopped (--stop_after_steps) before any phase ended.
      print(f"{result['status']}; rerun the same command to resume", file=sys.stderr)
      return 0
    print(f"best {result['metric']}={result['best_score']:.4f} (member "
          f"{result['best_member']}: {result['best_settings']}); {result['num_members']} "
          f"members, {result['member_steps']} member-steps; best member exported to "
          f"{workdir}/best", file=sys.stdout)
    if "pareto_front" in result:  # tune.objectives / tune.constraints.
      front = result["pareto_front"]
      print(f"Pareto front: {len(front)} members ({', '.join(str(r['id']) for r in front)}) "
            f"exported to {workdir}/front/; see {workdir}/tune/result.json and pareto.png"
            if front else "Pareto front: empty, no member meets tune.constraints "
            f"({'; '.join(result['constraints'])}); best/ holds the one closest to them",
            file=sys.stdout)
    return 0
  from jaxtrain.jobs import train  # pylint: disable=g-import-not-at-top
  result = _interruptible(train.run, config, workdir,
                          stop_after_steps=options["stop_after_steps"],
                          allow_config_change=options["allow_config_change"])
  if result["status"] == "preempted":
    print(f"preempted at step {result['step']}: checkpoint saved in {workdir}/checkpoints; "
          "rerun the same command to resume", file=sys.stderr)
    return errors.EXIT_PREEMPTED
  final = result["final"]
  print(f"{result['status']} at step {result['step']}: "
        + " ".join(f"{k}={v:.4f}" for k, v in final.items())
        + f" (best {result['best']['metric']} at step {result['best']['step']}); "
        f"results in {workdir}/final.json", file=sys.stdout)
  return 0


if __name__ == "__main__":
  code = main()
  signal.signal(signal.SIGINT, signal.SIG_DFL)  # Done: a late Ctrl-C just ends the process.
  if code == 128 + signal.SIGINT:
    # Interrupted: leave without waiting for library threads whose work was cut
    # short (jax's backend start-up warned from one after the error line). Every
    # jaxtrain writer was closed as the interrupt unwound.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)
