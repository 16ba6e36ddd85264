"""Fixtures shared by the unit tests of the IMAP handlers and the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.postgres import PgStore
from kartero.store.sqlite import SQLiteStore
from tests.pgserver import PrivatePostgres


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """The embedded store only (tests of SQLite and segment files themselves), with bob as `store`."""
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "unused")
    s.start()
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh store with one account, bob@example.test (account id 1), and nothing delivered: the
    embedded one, and one on a database of the private PostgreSQL server (the tests run on both)."""
    s: SQLiteStore
    if request.param == "postgresql":
        postgres: PrivatePostgres = request.getfixturevalue("postgres")
        url = postgres.migrated_database()
        s = PgStore(url, tmp_path / "data")  # type: ignore[assignment]
    else:
        s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "unused")
    s.start()
    yield s
    s.close()
