"""What every study uses: the shipped config files and a markdown table."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

import ml_collections


def config_file(name: str) -> ml_collections.ConfigDict:
  """Returns `get_config()` of configs/NAME.py, the module jaxtrain.configs.NAME (a fresh
  ConfigDict on every call)."""
  return importlib.import_module(f"jaxtrain.configs.{name}").get_config()


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
  """Formats `rows` as a markdown table.

  Args:
    rows: one dict per row.
    columns: (header, key in the row, format spec such as ".3f" or ",").
  """
  lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(format(row[k], f) for _, k, f in columns) + " |")
  return "\n".join(lines)


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The flags every study's main() takes: --workdir and --quick."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--workdir", default="runs/experiments",
                      help="root directory; each run gets a subdirectory (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help="a few training steps only, to check that everything runs")
  return parser.parse_args(argv)
