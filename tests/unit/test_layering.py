"""The import arrows: STYLE.md §2 for the cores, and every arrow of the table in docs/architecture.md,
read from the source with `ast`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "kartero"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from kartero.store import sqlite` imports the module kartero.store.sqlite
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module.startswith("kartero"))
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else [ROOT / f"{package}.py"]


def _is_core(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("imap/commands/"):
        return False
    return rel.split("/")[0] in ("smtp", "pop3", "imap", "managesieve") or rel == "auth/sasl.py"


CORE_PACKAGES = ("kartero.smtp", "kartero.pop3", "kartero.imap", "kartero.managesieve", "kartero.auth.sasl",
                 "kartero.mail")  # fmt: skip


def test_protocol_cores_import_only_the_stdlib_and_each_other() -> None:
    cores = [p for p in ROOT.rglob("*.py") if _is_core(p)]
    assert cores, "no core modules found"
    for path in cores:
        for name in _imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names and top not in ("asyncio", "socket", "ssl", "time", "selectors"):
                continue
            assert name.startswith(CORE_PACKAGES) and not name.startswith("kartero.imap.commands"), (
                f"{path.relative_to(ROOT)} imports {name}"
            )


def test_store_and_queue_never_import_protocols_or_network() -> None:
    for package in ("store", "queue"):
        for path in _modules(package) if (ROOT / package).exists() else []:
            for name in _imports(path):
                assert not name.startswith(
                    ("kartero.smtp", "kartero.imap", "kartero.pop3", "kartero.managesieve", "kartero.net")
                ), (
                    f"{path.relative_to(ROOT)} imports {name}"
                )


def test_nothing_imports_cli_or_server() -> None:
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("cli.py", "__main__.py"):
            continue
        for name in _imports(path):
            assert name not in ("kartero.cli", "kartero.server"), f"{rel} imports {name}"


def test_policy_stays_off_the_network() -> None:
    for path in _modules("policy"):
        for name in _imports(path):
            assert not name.startswith(("kartero.net", "asyncio", "socket")), f"{path.name} imports {name}"


# -- the table of docs/architecture.md -----------------------------------------------------------------

DOCS = ROOT.parent / "docs" / "architecture.md"


def _unit(path: Path) -> str:
    """The table row a module belongs to: `imap.commands`, `smtp`, `intake`, ..."""
    rel = path.relative_to(ROOT).with_suffix("").as_posix().split("/")
    if rel[:2] == ["imap", "commands"]:
        return "imap.commands"
    return rel[0]


def _table() -> dict[str, frozenset[str] | None]:
    """Row -> the Kartero packages it may import (None: anything), read from the "Packages" table."""
    text = DOCS.read_text()
    section = text[text.index("## Packages") :]
    section = section[: section.index("\n## ", 4)]
    rows: dict[str, frozenset[str] | None] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.replace("\\|", "/").strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = [n.strip("`").removeprefix("kartero/").rstrip("/").removesuffix(".py").replace("/", ".")
                 for n in cells[0].split(", ")]  # fmt: skip
        allowed = None if cells[2].startswith("everything") else frozenset(
            token for i, token in enumerate(cells[2].split("`")) if i % 2 == 1
        )  # fmt: skip
        for name in names:
            rows[name] = allowed
    return rows


def test_every_package_has_a_row_in_the_architecture_table() -> None:
    rows = _table()
    assert {"smtp", "imap", "imap.commands", "intake", "store", "mail"} <= rows.keys()
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        assert _unit(path) in rows, f"{path.relative_to(ROOT)} belongs to no row of docs/architecture.md"


def test_every_import_follows_an_arrow_of_the_architecture_table() -> None:
    rows = _table()
    wrong = []
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        unit = _unit(path)
        allowed = rows.get(unit)
        if allowed is None:
            continue
        for name in _imports(path):
            if not name.startswith("kartero."):
                continue
            target = name.removeprefix("kartero.")
            if target == unit or target.startswith(unit + ".") or unit.startswith(target.split(".")[0] + "."):
                continue  # its own modules (imap.commands may use the imap core: listed anyway)
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports the table of docs/architecture.md does not allow:\n" + "\n".join(wrong)


# -- the store's backends (issue 10) -------------------------------------------------------------------

# What every caller of the store may use: the interfaces, the criteria, ids and spool files. The backend
# (SQLite now, PostgreSQL later) is known to server.py and cli.py only, so a second one changes no caller.
STORE_NEUTRAL = ("kartero.store.interface", "kartero.store.criteria", "kartero.store.ids", "kartero.store.spool")


def _store_modules(path: Path) -> set[str]:
    return {n for n in _imports(path) if n.startswith("kartero.store.") and n.count(".") == 2}


def test_issue_10_only_server_and_cli_import_the_sqlite_backend() -> None:
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("store/") or rel in ("server.py", "cli.py"):
            continue
        for name in _store_modules(path):
            assert name in STORE_NEUTRAL, f"{rel} imports {name}"


def test_issue_10_the_shared_search_evaluation_imports_no_backend() -> None:
    for module in ("search.py", "criteria.py", "holds.py", "interface.py"):
        for name in _store_modules(ROOT / "store" / module):
            assert name in STORE_NEUTRAL, f"store/{module} imports {name}"
