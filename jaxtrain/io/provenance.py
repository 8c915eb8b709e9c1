"""What produced a run: command line, code version, packages, devices."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from jaxtrain import redact

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "grain", "tensorboardX", "ml-collections", "numpy", "jaxtrain")


def git_commit(directory: Path) -> str | None:
  """The commit checked out in `directory` (+ '-dirty' with local changes), or None."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                            text=True, timeout=5, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=directory, capture_output=True, text=True, timeout=5).stdout
    return commit + ("-dirty" if dirty.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return None


def collect() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {
      "command_line": redact.argv(sys.argv),
      "cwd": str(Path.cwd()),
      "git_commit": git_commit(Path(__file__).resolve().parent.parent),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "hostname": platform.node(),
      "packages": versions,
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
  }
