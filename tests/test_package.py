"""The package's shape: each module imports only modules below it, so no two import each other, even through others."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aurora_tg"


def imports(path: Path) -> set[str]:
  """The aurora_tg modules a file imports, at the top or inside a function."""
  modules = {p.stem for p in PACKAGE.glob("*.py")}
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("aurora_tg.")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "aurora_tg":
      parts = node.module.split(".")
      found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names if a.name in modules} | {"__init__"}
  return found - {path.stem}


def test_no_module_imports_one_that_imports_it_back():
  graph = {p.stem: imports(p) for p in PACKAGE.glob("*.py")}
  def reachable(start):
    seen, todo = set(), list(graph[start])
    while todo:
      m = todo.pop()
      if m not in seen: seen.add(m); todo.extend(graph.get(m, ()))
    return seen
  cycles = sorted(m for m in graph if m in reachable(m))
  assert not cycles, f"modules in an import cycle: {cycles}"


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
  f = tmp_path / "x.py"
  f.write_text("def f():\n  from aurora_tg.run import train\n  from aurora_tg import checkpoint, UserError\n")
  assert imports(f) == {"run", "checkpoint", "__init__"}
