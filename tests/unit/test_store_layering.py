"""Issue 10: outside the store, only server.py and cli.py know the SQLite backend; everyone else sees the
interfaces (store/interface.py), the criteria, ids and spool files, so a second backend changes no caller."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1].parent / "kartero"
NEUTRAL = ("kartero.store.interface", "kartero.store.criteria", "kartero.store.ids", "kartero.store.spool")


def _store_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kartero.store":
                names.update(f"kartero.store.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return {name for name in names if name.startswith("kartero.store")}


def test_issue_10_only_server_and_cli_import_the_sqlite_backend() -> None:
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("store/") or rel in ("server.py", "cli.py"):
            continue
        for name in _store_imports(path):
            assert name in NEUTRAL, f"{rel} imports {name}"


def test_issue_10_the_shared_search_evaluation_imports_no_backend() -> None:
    for module in ("search.py", "criteria.py", "holds.py", "interface.py"):
        for name in _store_imports(ROOT / "store" / module):
            assert name in NEUTRAL, f"store/{module} imports {name}"
