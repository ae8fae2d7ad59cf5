"""The package's shape: the core at the top imports nothing of inference/, cli/ or serving, even through other modules;
no module imports one that imports it back; subpackages are one level deep."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aurora_tg"
CORE = ("model", "optim", "trainer", "finetune", "lora", "qlora", "adapters", "config")
LAUNCHERS = ("prepare", "export", "eval", "plot")  # `python -m aurora_tg.X` kept working: each only runs cli/X.py
ABOVE_THE_CORE = ("aurora_tg.inference", "aurora_tg.cli")


def module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
  return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
  """The aurora_tg modules a file imports, at the top or inside a function (`from aurora_tg.x import y` counts
  aurora_tg.x.y when that is a module, else aurora_tg.x)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import): found |= {a.name for a in node.names if a.name.split(".")[0] == "aurora_tg"}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "aurora_tg":
      for a in node.names:
        found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module)
  return found - ({module_name(path)} if path.is_relative_to(PACKAGE) else set())


def graph() -> dict[str, set[str]]:
  known = set(modules())
  return {name: imports(path, known) for name, path in modules().items()}


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), list(g[start])
  while todo:
    m = todo.pop()
    if m not in seen: seen.add(m); todo.extend(g.get(m, ()))
  return seen


def test_no_module_imports_one_that_imports_it_back():
  g = graph()
  cycles = sorted(m for m in g if m in reachable(g, m))
  assert not cycles, f"modules in an import cycle: {cycles}"


def test_the_core_reaches_nothing_of_inference_cli_or_serving():
  g = graph()
  for name in CORE:
    above = sorted(m for m in reachable(g, f"aurora_tg.{name}") if m.startswith(ABOVE_THE_CORE))
    assert not above, f"the core module {name} imports {above} (directly or through others)"


def test_the_top_holds_the_core_and_launchers_and_subpackages_are_one_level_deep():
  top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
  assert top == set(CORE) | set(LAUNCHERS)
  assert all(len(p.relative_to(PACKAGE).parts) <= 2 for p in PACKAGE.rglob("*.py")), "a subpackage inside a subpackage"


def test_the_checks_see_imports_inside_functions_and_through_other_modules(tmp_path):
  f = tmp_path / "x.py"
  f.write_text("def f():\n  from aurora_tg.cli.train import train\n  from aurora_tg.formats import checkpoint\n  from aurora_tg import UserError\n")
  assert imports(f, set(modules())) == {"aurora_tg.cli.train", "aurora_tg.formats.checkpoint", "aurora_tg"}
  g = {"aurora_tg.trainer": {"aurora_tg.formats.checkpoint"}, "aurora_tg.formats.checkpoint": {"aurora_tg.inference.quantize"}}
  assert "aurora_tg.inference.quantize" in reachable(g, "aurora_tg.trainer")
