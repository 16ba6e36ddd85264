"""Opening the store a config names: the embedded SQLite store, or PostgreSQL (imported only then)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from kartero.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from kartero.store.postgres import PgStore

AnyStore: TypeAlias = "SQLiteStore | PgStore"


def open_store(data_dir: Path, backend: str = "sqlite", url: str = "", node: str = "",
               lease_s: float = 60.0) -> AnyStore:  # fmt: skip
    """The store under `data_dir` (SQLite), or on the database at `url` with `data_dir` as this node's
    own folder (its spool). PostgreSQL: raises pg_db.SchemaError unless `kartero db init` made the
    schema this version speaks."""
    if backend == "postgresql":
        from kartero.store.postgres import PgStore

        return PgStore(url, data_dir, node=node, lease_s=lease_s)
    return SQLiteStore(data_dir)
