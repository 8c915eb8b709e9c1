"""The numbers the docs quote come from docs/results.json (scripts/reproduce.py).

A quoted number carries its record's id: `0.997<!-- r:digits_mlp.accuracy -->` in
markdown, `0.997 [r:digits_mlp.accuracy]` in a config's docstring (`ID:min`, `ID:max`:
the spread over seeds). It must equal the recorded value to the digits it shows (a
percentage: the value times 100). Tables
announced by `<!-- results-table -->` must mark every number in their measured
columns. The slow test re-runs the cheap records' commands and compares accuracies.
"""

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import reproduce  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

RESULTS = json.loads((REPO / "docs" / "results.json").read_text())
MARKER = reproduce.MARKER
MEASURED_COLUMNS = ("accuracy", "measured", "time", "wall", "bits")


def mismatches(text: str, results: dict, where: str) -> list[str]:
  """Every quoted number in `text` that differs from its record (or names none)."""
  bad = []
  for match in MARKER.finditer(text):
    shown, percent, key = match.group(1), match.group(2), match.group(3) or match.group(4)
    line = text.count("\n", 0, match.start()) + 1
    value = reproduce.quoted_value(results, key, bool(percent))
    if value is None:
      bad.append(f"{where}:{line}: {key!r} is not in docs/results.json")
      continue
    decimals = len(shown.partition(".")[2])
    if round(value, decimals) != float(shown.replace(",", "")):
      bad.append(f"{where}:{line}: {shown}{percent} quotes {key}, recorded {value:.{decimals}f}")
  return bad


def unmarked_table_cells(text: str, where: str) -> list[str]:
  """Numbers in the measured columns of `<!-- results-table -->` tables without a marker."""
  bad, lines = [], text.splitlines()
  for i, line in enumerate(lines):
    if line.strip() != "<!-- results-table -->":
      continue
    header = [c.strip().lower() for c in lines[i + 1].strip("|").split("|")]
    columns = [j for j, c in enumerate(header) if any(w in c for w in MEASURED_COLUMNS)]
    for k in range(i + 3, len(lines)):
      if not lines[k].startswith("|"):
        break
      cells = lines[k].strip().strip("|").split("|")
      for j in columns:
        numbers = re.findall(r"\d[\d,]*(?:\.\d+)?", re.sub(r"<!--.*?-->", "", cells[j]))
        if len(numbers) > len(MARKER.findall(cells[j])):
          bad.append(f"{where}:{k + 1}: {cells[j].strip()!r} has a number without its record")
  return bad


def test_every_quoted_number_is_the_recorded_one():
  bad, quoted = [], 0
  for path in reproduce.sources():
    text = path.read_text(encoding="utf-8")
    quoted += len(MARKER.findall(text))
    bad += mismatches(text, RESULTS, str(path.relative_to(REPO)))
    bad += unmarked_table_cells(text, str(path.relative_to(REPO)))
  assert quoted >= 20, f"only {quoted} quoted numbers: the markers were lost"
  assert not bad, "\n".join(bad)


def test_a_changed_number_fails_the_check():
  """The check can fail: one digit changed in the README is caught."""
  text = (REPO / "README.md").read_text(encoding="utf-8")
  match = next(MARKER.finditer(text))
  shown = match.group(1)
  changed = shown[:-1] + str((int(shown[-1]) + 1) % 10)
  altered = text[:match.start(1)] + changed + text[match.end(1):]
  assert mismatches(text, RESULTS, "README.md") == []
  (problem,) = mismatches(altered, RESULTS, "README.md")
  assert changed in problem and "recorded" in problem


def test_every_record_says_how_it_was_obtained():
  for key, record in RESULTS.items():
    assert {"value", "command", "commit", "date", "machine", "seeds", "load"} <= set(record), key
    assert record["command"].startswith("python -m jaxtrain.main --config="), key
    if len(record["seeds"]) > 1 and not key.endswith(("_sec",)):
      low, high = record["spread"]
      assert low <= record["value"] <= high and len(record["per_seed"]) == len(record["seeds"])


CHEAP = sorted(k.rpartition(".")[0] for k, r in RESULTS.items() if r.get("cheap"))


@pytest.mark.slow
@pytest.mark.parametrize("name", CHEAP)
def test_a_cheap_record_reproduces(name, tmp_path, data_dir):
  """The recorded command, run again here, gives the recorded accuracy (within the
  record's tolerance: a different CPU may round differently)."""
  import os  # pylint: disable=g-import-not-at-top
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAXTRAIN_DATA_DIR": data_dir}
  env.pop("XLA_FLAGS", None)
  after = reproduce.RUNS[name].after
  if after:
    reproduce.measure(after, tmp_path, env)
  measured = reproduce.measure(name, tmp_path, env)
  for key, record in measured.items():
    if key.endswith((".accuracy", ".bits_per_char")):
      assert record["value"] == pytest.approx(RESULTS[key]["value"],
                                              abs=RESULTS[key]["tolerance"]), key
