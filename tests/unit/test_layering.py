"""The import arrows of STYLE.md §2, read from the source with `ast`."""

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
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else [ROOT / f"{package}.py"]


def _is_core(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("imap/commands/"):
        return False
    return rel.split("/")[0] in ("smtp", "pop3", "imap") or rel == "auth/sasl.py"


CORE_PACKAGES = ("kartero.smtp", "kartero.pop3", "kartero.imap", "kartero.auth.sasl", "kartero.mail")


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
                assert not name.startswith(("kartero.smtp", "kartero.imap", "kartero.pop3", "kartero.net")), (
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
