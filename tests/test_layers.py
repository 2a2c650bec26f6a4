"""The package's layers, read from its source (no servers): only the command line prints, and no module
imports one that imports it back (lazy imports inside functions count: they are cycles all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "migrate"
PRINTERS = {"migrate.cli", "migrate.console"}  # the only modules that may write for people


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it, as absolute names (`from . import x` counts x too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {other for other in imports(path) if other in modules and other != name}
            for name, path in modules.items()}


def test_only_the_command_line_prints():
    printing = {"click", "tqdm", "migrate.console", "migrate.output"}
    offenders = {name: sorted(found & printing) for name, found in
                 ((module_name(path), imports(path)) for path in PACKAGE.rglob("*.py"))
                 if found & printing and name not in PRINTERS}
    assert offenders == {}, f"library modules that print or pull in the console: {offenders}"


def test_the_import_graph_has_no_cycles():
    edges = graph()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for other in sorted(edges[name]):
            if other in path:
                cycles.append(path[path.index(other):] + [other])
            elif other not in done:
                visit(other, path + [other])
        done.add(name)

    done: set[str] = set()
    for name in sorted(edges):
        if name not in done:
            visit(name, [name])
    assert cycles == [], f"import cycles: {cycles}"


def test_the_command_layer_is_on_top():
    """Nothing below imports the commands or the command line back."""
    users = {name for name, found in graph().items() if found & {"migrate.commands", "migrate.cli"}}
    assert users <= {"migrate.cli"}, users
