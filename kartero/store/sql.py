"""What the store classes need of a database, whichever backend: SQLite (`sqlite_db`) or PostgreSQL
(`pg_db`). They speak one SQL to both: `?` placeholders, `INSERT ... ON CONFLICT`, `RETURNING`, `COALESCE`,
`CASE`, `instr()` (PostgreSQL gets it as a function), and a column named "offset" always quoted."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from kartero.store.sqlite_db import Listeners


class SqlConnection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class SqlDatabase(Protocol):
    """A connection provider: `sqlite_db.Database` or `pg_db.PgDatabase`."""

    listeners: Listeners

    @property
    def IntegrityError(self) -> type[Exception]: ...  # the DB-API name

    def db(self) -> Any: ...

    def connect(self) -> Any: ...

    def write(self, *, durable: bool = True, db: Any = None) -> AbstractContextManager[Any]: ...
