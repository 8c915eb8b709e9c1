"""Reading back what a run wrote: verified, not trusted.

config.json, metrics.jsonl, tune/lineage.jsonl and a checkpoint's loop state are
read back on every resume (and config.json by --mode=eval). A record that cannot
be what jaxtrain wrote -- invalid UTF-8, invalid JSON, the wrong shape, a value of
the wrong type -- is refused with one line that names the file (and line) and the
fix, before anything is trained or written. The one damage that is expected is a
torn last line of a JSONL file, a write cut short by a crash: it is dropped, as the
resume rewrites what followed the checkpoint anyway.
"""

from __future__ import annotations

import json
from typing import Any

from jaxtrain import errors, paths
from jaxtrain.paths import Path


def _damaged(path: Path, what: str, fix: str) -> errors.UserError:
  return errors.UserError(f"{path} {what}: it was edited or damaged; {fix}")


def read_object(path: Path, fix: str) -> dict[str, Any]:
  """The JSON object in `path`; UserError naming the file and `fix` otherwise."""
  path = paths.of(path)
  try:
    text = path.read_bytes().decode("utf-8")
  except OSError as e:
    raise errors.UserError(f"cannot read {path} ({e.strerror}); {fix}") from None
  except UnicodeDecodeError as e:
    raise _damaged(path, f"is not UTF-8 text (byte {e.start})", fix) from None
  try:
    value = json.loads(text)
  except ValueError as e:
    where = f"line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
    raise _damaged(path, f"is not valid JSON ({getattr(e, 'msg', e)} at {where})"
                   if text.strip() else "is empty", fix) from None
  if not isinstance(value, dict):
    raise _damaged(path, f"holds a JSON {type(value).__name__}, not an object", fix)
  return value


def read_lines(path: Path, fix: str, required: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
  """(line, record) for each record of a JSONL file ([] when there is no file).

  Every line must be a JSON object with the `required` keys, except a last line
  with no newline after it (torn by a crash), which is dropped.
  """
  path = paths.of(path)
  if not path.exists():
    return []
  try:
    data = path.read_bytes()
  except OSError as e:
    raise errors.UserError(f"cannot read {path} ({e.strerror}); {fix}") from None
  raw_lines = data.split(b"\n")
  torn = raw_lines.pop()  # b"" when the file ends with a newline, as every write does.
  del torn  # A partial record: dropped.
  out = []
  for number, raw in enumerate(raw_lines, start=1):
    if not raw.strip():
      continue
    try:
      line = raw.decode("utf-8")
      record = json.loads(line)
    except UnicodeDecodeError:
      raise _damaged(path, f"line {number} is not UTF-8 text", fix) from None
    except ValueError:
      raise _damaged(path, f"line {number} is not a JSON record", fix) from None
    if not isinstance(record, dict) or any(key not in record for key in required):
      raise _damaged(path, f"line {number} is not a record of this file (keys "
                     f"{', '.join(required)} expected)", fix)
    out.append((line, record))
  return out


def _kind(value) -> str:
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, (int, float)):
    return "number"
  return {str: "string", list: "list", dict: "object"}.get(type(value), "null")


def check_like(record: dict[str, Any], template: dict[str, Any]) -> list[str]:
  """Keys of `record` missing or of another JSON type than in `template` (whose None
  values accept anything; a number is int or float). [] when `record` fits."""
  problems = []
  for key, want in template.items():
    if key not in record:
      problems.append(f"{key} missing")
    elif want is not None and _kind(record[key]) != _kind(want):
      problems.append(f"{key} is a {_kind(record[key])}, not a {_kind(want)}")
  return problems

