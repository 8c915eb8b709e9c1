"""The package's shape: layers imported only downwards, no import circle, short functions,
and the build recipe written once (docs/ARCHITECTURE.md describes the layers).

Everything here reads the sources (`ast`); nothing is imported or run.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxtrain"

# Module (or package) prefix -> layer; the longest matching prefix decides. A module
# may import its own layer and the layers below, never a higher one.
LAYERS = {
    "jaxtrain.errors": 0,
    "jaxtrain.config": 0,
    "jaxtrain.records": 0,
    "jaxtrain.redact": 0,
    "jaxtrain.paths": 0,
    "jaxtrain.core": 1,
    "jaxtrain.models": 1,
    "jaxtrain.data": 1,
    "jaxtrain.tune.space": 1,
    "jaxtrain.tune.population": 1,
    "jaxtrain.tune.folds": 1,
    "jaxtrain.tune.execution": 1,
    "jaxtrain.io": 2,
    "jaxtrain.parallel": 2,
    "jaxtrain.analysis": 2,
    "jaxtrain.tune.lineage": 2,
    "jaxtrain.jobs": 3,
    "jaxtrain.tune": 4,
    "jaxtrain.main": 5,
    "jaxtrain.cli": 5,
    "jaxtrain.runs": 5,
    "jaxtrain.inference": 5,  # jaxtrain.load: the public API.
    "jaxtrain.configs": 5,  # The shipped config files: user-level, like a user's own config.
    "jaxtrain": 5,  # jaxtrain/__init__.py: the public API.
}
LAYER_NAMES = ("foundation", "core", "io", "jobs", "tune", "entry")
# What the core must not import (checked in a fresh interpreter by test_core_imports.py).
CORE_FORBIDDEN = ("orbax", "tensorboardX", "ml_collections", "tensorflow_datasets", "grain",
                  "optuna", "absl")
SCHEMA_FUNCTIONS = {"jaxtrain/config.py:base_config"}  # The one function allowed > 120 lines.
MAX_FUNCTION_LINES = 120


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def layer_of(module: str) -> int:
  prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
  assert prefixes, f"{module} is in no layer; add it to LAYERS and docs/ARCHITECTURE.md"
  return LAYERS[max(prefixes, key=len)]


def is_module(name: str) -> bool:
  path = ROOT / name.replace(".", "/")
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: pathlib.Path) -> set[str]:
  """Every jaxtrain module `path` imports, at module level or inside functions."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.split(".")[0] == "jaxtrain")
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
        node.module.split(".")[0] == "jaxtrain"):
      for alias in node.names:
        child = f"{node.module}.{alias.name}"
        out.add(child if is_module(child) else node.module)
  return out


def import_graph() -> dict[str, set[str]]:
  return {module_name(p): imports_of(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def upward_imports(graph: dict[str, set[str]], layer=layer_of) -> list[str]:
  return sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_every_module_has_a_layer_and_imports_only_downwards():
  graph = import_graph()
  assert len(graph) > 60  # Sanity: the whole package was read.
  assert upward_imports(graph) == []


def test_no_import_circle():
  assert cycles(import_graph()) == []


def test_the_checks_catch_a_circle_and_an_upward_import():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": set()}
  assert cycles(graph) == [["a", "b", "c"]]
  layers = {"a": 1, "b": 1, "c": 1, "d": 0, "e": 3}
  assert upward_imports(graph, layers.get) == ["d (layer 0) imports e (layer 3)"]
  with pytest.raises(AssertionError, match="in no layer"):
    layer_of("elsewhere.module")


def test_the_core_imports_no_io_library():
  """By source, for imports inside functions too (a fresh interpreter cannot see those)."""
  found = []
  for path in sorted((PACKAGE / "core").rglob("*.py")) + sorted((PACKAGE / "models").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
      found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                if n.split(".")[0] in CORE_FORBIDDEN]
  assert found == []


def test_no_function_is_longer_than_one_screen():
  long = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        where = f"{path.relative_to(ROOT)}:{node.name}"
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES and where not in SCHEMA_FUNCTIONS:
          long.append(f"{where} ({lines} lines)")
  assert long == []


def test_the_loops_share_one_shape():
  """train, tune and cv: check -> workdir -> build -> start -> loop -> record, in that order."""
  for rel in ("jobs/train.py", "tune/loop.py", "tune/cv.py"):
    tree = ast.parse((PACKAGE / rel).read_text())
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    source = ast.get_source_segment((PACKAGE / rel).read_text(), run)
    sections = re.findall(r"# --- (\w+)", source)
    assert [s for s in sections if s in ("Check", "Build", "Start", "Loop", "Record")] == [
        "Check", "Build", "Start", "Loop", "Record"], (rel, sections)
    assert "workdir_lib.prepare(" in source, rel


# The build recipe: a model (LoRA-wrapped), its optimizer and the hyperparameters in the
# state. Calling two of these pieces in one function assembles (part of) the recipe.
RECIPE_PIECES = ("models.build", "optim.build", "lora.maybe_wrap", "ema.hparams",
                 "ema_lib.hparams")


def _dotted(node) -> str:
  if isinstance(node, ast.Attribute):
    return f"{_dotted(node.value)}.{node.attr}"
  return node.id if isinstance(node, ast.Name) else ""


def recipe_copies(source: str, where: str) -> list[str]:
  """Functions of `source` (and its top-level statements, e.g. a notebook cell's) that
  call two or more recipe pieces, or write the state's hyperparameter dict by hand."""
  tree = ast.parse(source)
  scopes = [("<top level>", [n for n in tree.body
                             if not isinstance(n, (ast.FunctionDef, ast.ClassDef))])]
  scopes += [(n.name, n.body) for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  out = []
  for name, body in scopes:
    calls, by_hand = set(), False
    for inner in (n for b in body for n in ast.walk(b)):
      if isinstance(inner, ast.Call) and _dotted(inner.func) in RECIPE_PIECES:
        calls.add(_dotted(inner.func).replace("ema_lib.", "ema."))
      if isinstance(inner, ast.Dict) and {"dropout_rate", "label_smoothing"} <= {
          k.value for k in inner.keys if isinstance(k, ast.Constant)}:
        by_hand = True
    if len(calls) >= 2 or by_hand:
      out.append(f"{where}:{name} ({', '.join(sorted(calls)) or 'hyperparameters by hand'})")
  return out


def _sources():
  # Not configs/: it links to jaxtrain/configs, read with jaxtrain/.
  for folder in ("jaxtrain", "scripts", "experiments", "tests"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      yield str(path.relative_to(ROOT)), path.read_text()
  for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
    cells = json.loads(path.read_text())["cells"]
    for i, cell in enumerate(cells):
      if cell["cell_type"] == "code":
        yield f"{path.relative_to(ROOT)}[cell {i}]", "".join(cell["source"]).replace("%", "#")


def test_the_build_recipe_exists_once():
  copies = []
  for where, source in _sources():
    if where in ("jaxtrain/jobs/setup.py", "tests/test_layers.py"):
      continue
    copies += recipe_copies(source, where)
  assert copies == []


def test_the_recipe_check_finds_a_copy():
  source = ("def build(c, info):\n"
            "  model = models.build(c.model, 10, (8,))\n"
            "  tx, _ = optim.build(c.optim, 10)\n"
            "  return model, tx\n"
            "def hp(c):\n"
            "  return {'dropout_rate': 0.0, 'label_smoothing': 0.0}\n")
  assert recipe_copies(source, "x.py") == [
      "x.py:build (models.build, optim.build)", "x.py:hp (hyperparameters by hand)"]


def test_the_architecture_page_lists_the_layers():
  """docs/ARCHITECTURE.md's table names every prefix of LAYERS in its layer's row."""
  text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
  rows = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 3 and cells[0].isdigit():
      rows[int(cells[0])] = cells[2]
  assert sorted(rows) == list(range(len(LAYER_NAMES)))
  for prefix, layer in LAYERS.items():
    written = prefix.replace("jaxtrain.", "").replace(".", "/") if prefix != "jaxtrain" else (
        "__init__")
    assert re.search(rf"`{re.escape(written)}[`/.]", rows[layer]), (prefix, rows[layer])
