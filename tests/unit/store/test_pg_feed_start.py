"""A PostgreSQL node's change feed has read the directory version when `start()` returns, so the
directory cache primed next compares against the database's version, not 0 (found in issue 14: a node
that lost its database in its first second took the feed's first reading for a change, reloaded, failed,
and answered RCPT 451 for a known user)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from kartero.store.pg_db import migrate
from kartero.store.postgres import PgStore
from tests.pgserver import PrivatePostgres


def test_feed_has_read_the_directory_version_when_the_store_has_started(
    tmp_path: Path, postgres: PrivatePostgres
) -> None:
    url = postgres.new_database()
    migrate(url)
    store = PgStore(url, tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.accounts.add_account("carol@example.test", "unused")
    in_database = store.database.directory_version()  # no feed yet: None
    assert in_database is None
    store.database.start_feed()  # what PgStore.start() does first
    try:
        assert store.database.feed is not None and store.database.feed.is_live
        heard = store.accounts.directory_version()
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'directory_version'").fetchone()
        assert heard == int(row[0]) >= 3  # the first version and two account changes
    finally:
        store.close()
