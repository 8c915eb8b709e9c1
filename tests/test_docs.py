"""The commands in docs/ run: every block marked `bash test` or `python test`.

A fenced block is tested when its info string is `bash test` or `python test`,
optionally followed by `exit=N` (the exit status it must end with; default 0).
A page containing the line `<!-- test: slow -->` (pages whose commands train
populations: tens of seconds) is marked slow and runs with `pytest -m slow`.
The blocks of one page run in order, as separate processes, in one fresh
directory per page that links the repository's `configs/` and `jaxtrain/`, so
commands read like they do from the repository root (`--config=configs/...`,
`--workdir=runs/...`) and later blocks see what earlier ones wrote. Bash blocks
run with `-e -o pipefail`. XLA_FLAGS is cleared (conftest sets 8 fake devices
for the other tests): a block that wants fake devices sets it itself. The
blocks share a persistent XLA compilation cache, so the many processes that
compile the same small programs compile them once (results are unchanged).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
LINKED = ("configs", "jaxtrain")  # What a page's directory shares with the repository.
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")
TIMEOUT_S = 300


def _blocks(path: Path) -> list[dict]:
  """The fenced blocks of a markdown file: language, tested, code, expected exit, line."""
  blocks, current = [], None
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
    match = FENCE.match(line)
    if current is None:
      if match and match.group(1):
        words = match.group(2).split()
        current = {"language": match.group(1), "tested": "test" in words, "line": number,
                   "exit": 0, "code": []}
        for word in words:
          if word.startswith("exit="):
            current["exit"] = int(word.split("=", 1)[1])
      elif match:  # A fence without a language: an output block.
        current = {"language": "", "tested": False, "line": number, "code": []}
    elif line.strip() == "```":
      if current["tested"] and current["language"] not in ("bash", "python"):
        raise ValueError(f"{path}:{current['line']}: only bash and python blocks can be "
                         f"tested, not {current['language']!r}")
      blocks.append({**current, "code": "\n".join(current["code"]) + "\n"})
      current = None
    else:
      current["code"].append(line)
  if current is not None:
    raise ValueError(f"{path}:{current['line']}: code block is never closed")
  return blocks


def _tested_blocks(path: Path) -> list[dict]:
  return [b for b in _blocks(path) if b["tested"]]


PAGES = sorted(p for p in DOCS.rglob("*.md") if _tested_blocks(p))
SLOW_MARK = "<!-- test: slow -->"


def _param(page: Path):
  slow = SLOW_MARK in page.read_text(encoding="utf-8").splitlines()
  return pytest.param(page, id=str(page.relative_to(DOCS)),
                      marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("xla_cache"))


def _environment(compilation_cache: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.setdefault("JAX_COMPILATION_CACHE_DIR", compilation_cache)
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _tail(text: str, lines: int = 40) -> str:
  return "\n".join(text.strip().splitlines()[-lines:])


def test_the_docs_have_tested_blocks():
  assert PAGES, f"no `bash test` or `python test` blocks under {DOCS}"


def test_every_shell_block_of_the_guide_is_tested():
  """Commands shown in the user guide must run: a shell block without `test` is a mistake."""
  untested = [f"{page.relative_to(REPO)}:{b['line']}"
              for page in sorted((DOCS / "guide").rglob("*.md"))
              for b in _blocks(page) if b["language"] in ("bash", "sh", "shell", "console")
              and not b["tested"]]
  assert not untested, f"shell blocks not marked `bash test`: {', '.join(untested)}"


@pytest.mark.parametrize("page", [_param(p) for p in PAGES])
def test_doc_page_commands_run(page, tmp_path, compilation_cache):
  for name in LINKED:
    (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
  env = _environment(compilation_cache)
  for i, block in enumerate(_tested_blocks(page)):
    script = tmp_path / f".block{i}.{'sh' if block['language'] == 'bash' else 'py'}"
    script.write_text(block["code"], encoding="utf-8")
    command = (["bash", "-e", "-o", "pipefail", str(script)] if block["language"] == "bash"
               else [sys.executable, str(script)])
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    seconds = time.perf_counter() - start
    where = f"{page.relative_to(REPO)}:{block['line']}"
    print(f"{where}: {seconds:.1f} s")  # Shown with `pytest -s`: where the time goes.
    assert proc.returncode == block["exit"], (
        f"{where}: exit status {proc.returncode}, expected {block['exit']} "
        f"({seconds:.1f} s)\n--- block\n{block['code']}--- stdout\n{_tail(proc.stdout)}\n"
        f"--- stderr\n{_tail(proc.stderr)}")
