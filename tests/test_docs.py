"""The commands in README.md and docs/ run: every block marked `bash test` or `python test`.

A fenced block is tested when its info string is `bash test` or `python test`,
optionally followed by `exit=N` (the exit status it must end with; default 0).
Every other bash or python block must say why it does not run here:
`bash norun: REASON` (a benchmark that takes minutes, a fragment of a config
file, the whole test suite). README.md's set-up block, `bash test venv`, runs
in a fresh virtual environment (with the system's packages) on a copy of the
repository, as on a new machine.
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
        tested = bool(words) and words[0] == "test"
        current = {"language": match.group(1), "tested": tested, "line": number,
                   "exit": 0, "code": [], "venv": tested and "venv" in words,
                   "norun": match.group(2).partition("norun:")[2].strip()
                   if words and words[0] == "norun:" else None}
        for word in words if tested else ():
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


README = REPO / "README.md"
PAGES = sorted(p for p in [*DOCS.rglob("*.md"), README] if _tested_blocks(p))
SLOW_MARK = "<!-- test: slow -->"


def _param(page: Path):
  slow = SLOW_MARK in page.read_text(encoding="utf-8").splitlines()
  return pytest.param(page, id=str(page.relative_to(DOCS if page != README else REPO)),
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


def test_every_command_block_runs_or_says_why_not():
  """A bash or python block in README.md or docs/ is tested, or marked `norun: REASON`;
  an unmarked one is a mistake (a command nobody runs goes stale)."""
  unmarked = [f"{page.relative_to(REPO)}:{b['line']}"
              for page in sorted([*DOCS.rglob("*.md"), README])
              for b in _blocks(page)
              if b["language"] in ("bash", "sh", "shell", "console", "python", "py")
              and not b["tested"] and not b["norun"]]
  assert not unmarked, ("command blocks neither `test` nor `norun: REASON`: "
                        f"{', '.join(unmarked)}")


def test_the_readme_test_command_is_what_ci_runs():
  """README's second set-up command is run by CI verbatim (.ci/run), not by this file."""
  (block,) = [b for b in _blocks(README) if "pytest" in b["code"] and b["norun"]]
  command = block["code"].strip()
  ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
  assert command in ci, (command, ci)


def _fresh_checkout(tmp_path: Path) -> Path:
  """A copy of the repository's tracked files (as they are in the working tree)."""
  import shutil  # pylint: disable=g-import-not-at-top
  files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                         check=True).stdout.decode().split("\0")
  copy = tmp_path / "checkout"
  for name in filter(None, files):
    source, target = REPO / name, copy / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
      target.symlink_to(os.readlink(source))
    elif source.is_file():
      shutil.copy2(source, target)
  return copy


def _venv(tmp_path: Path, env: dict) -> dict:
  """A virtual environment that sees the system's packages (jax, flax, ... are not
  downloaded again) but not jaxtrain: `pip install -e .` installs the copy."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                 check=True)
  env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
         "VIRTUAL_ENV": str(venv)}
  env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep)
                                      if Path(p).resolve() != REPO.resolve())
  return env


@pytest.mark.parametrize("page", [_param(p) for p in PAGES])
def test_doc_page_commands_run(page, local_tmp_path, compilation_cache):
  # Local on purpose under either scheme: the blocks run in a shell whose current
  # folder this is, with workdirs relative to it (runs/...), as a reader runs them.
  tmp_path = local_tmp_path
  for name in LINKED:
    (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
  env = _environment(compilation_cache)
  for i, block in enumerate(_tested_blocks(page)):
    if block["venv"]:  # README's set-up: a new machine's install, then the main job.
      checkout = _fresh_checkout(tmp_path)
      proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]],
                            cwd=checkout, env=_venv(tmp_path, env), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
      assert proc.returncode == 0, (f"{page.name}:{block['line']}: exit {proc.returncode}\n"
                                    f"{_tail(proc.stdout)}\n{_tail(proc.stderr)}")
      assert "completed at step" in proc.stdout, _tail(proc.stdout)
      continue
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
