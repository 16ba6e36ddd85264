"""Sieve scripts in the SQL stores (kartero.store.interface.SieveStore), SQLite and PostgreSQL alike.

One table, `sieve_scripts`: a row per script, `account_id` NULL for the global scripts. At most one
script of an account has `active = 1`: `set_active` clears the others in the same transaction. Every
change raises the `sieve_version` row of `meta` in its own transaction, so a process that caches
compiled scripts sees a change made by any other (the CLI, another node) with one read of that row.
"""

from __future__ import annotations

import time

from kartero.store.accounts_sql import bump_directory_version
from kartero.store.interface import NoSuchScript, ScriptExists, ScriptIsActive, SieveScriptInfo, TooManyScripts
from kartero.store.sql import SqlConnection, SqlDatabase

# `account_id IS ?` is SQLite only; this matches NULL (the globals) on both backends.
_OWNER = "COALESCE(account_id, 0) = ?"


class SqlSieve:
    """SieveStore over the shared database (sqlite_db.Database or pg_db.PgDatabase)."""

    def __init__(self, database: SqlDatabase) -> None:
        self._database = database

    def list_scripts(self, account_id: int | None) -> list[SieveScriptInfo]:
        rows = self._database.db().execute(
            f"SELECT name, active FROM sieve_scripts WHERE {_OWNER} ORDER BY name", (account_id or 0,)
        )
        scripts = [SieveScriptInfo(r[0], bool(r[1])) for r in rows]
        # Code point order whatever the database's collation: the listing reads the same on both.
        return sorted(scripts, key=lambda s: s.name)

    def get_script(self, account_id: int | None, name: str) -> str | None:
        row = self._database.db().execute(
            f"SELECT script FROM sieve_scripts WHERE {_OWNER} AND name = ?", (account_id or 0, name)
        ).fetchone()
        return None if row is None else str(row[0])

    def put_script(self, account_id: int | None, name: str, text: str, max_scripts: int = 0) -> None:
        now = int(time.time())
        with self._database.write() as db:
            updated = db.execute(
                f"UPDATE sieve_scripts SET script = ?, updated_at = ? WHERE {_OWNER} AND name = ?",
                (text, now, account_id or 0, name),
            ).rowcount
            if not updated:
                if max_scripts:
                    count = db.execute(f"SELECT COUNT(*) FROM sieve_scripts WHERE {_OWNER}", (account_id or 0,))
                    if int(count.fetchone()[0]) >= max_scripts:
                        raise TooManyScripts(f"at most {max_scripts} scripts")
                db.execute(
                    "INSERT INTO sieve_scripts (account_id, name, script, active, updated_at) VALUES (?, ?, ?, 0, ?)",
                    (account_id, name, text, now),
                )
            _bump_sieve_version(db)

    def delete_script(self, account_id: int | None, name: str) -> None:
        with self._database.write() as db:
            row = db.execute(
                f"SELECT id, active FROM sieve_scripts WHERE {_OWNER} AND name = ?", (account_id or 0, name)
            ).fetchone()
            if row is None:
                raise NoSuchScript(name)
            if row[1]:
                raise ScriptIsActive(name)
            db.execute("DELETE FROM sieve_scripts WHERE id = ?", (row[0],))
            _bump_sieve_version(db)

    def rename_script(self, account_id: int | None, old: str, new: str) -> None:
        with self._database.write() as db:
            row = db.execute(
                f"SELECT id FROM sieve_scripts WHERE {_OWNER} AND name = ?", (account_id or 0, old)
            ).fetchone()
            if row is None:
                raise NoSuchScript(old)
            if old == new:
                return
            taken = db.execute(
                f"SELECT 1 FROM sieve_scripts WHERE {_OWNER} AND name = ?", (account_id or 0, new)
            ).fetchone()
            if taken is not None:
                raise ScriptExists(new)
            db.execute("UPDATE sieve_scripts SET name = ?, updated_at = ? WHERE id = ?",
                       (new, int(time.time()), row[0]))  # fmt: skip
            _bump_sieve_version(db)

    def set_active(self, account_id: int, name: str | None) -> None:
        with self._database.write() as db:
            if name is not None:
                row = db.execute(
                    "SELECT id FROM sieve_scripts WHERE account_id = ? AND name = ?", (account_id, name)
                ).fetchone()
                if row is None:
                    raise NoSuchScript(name)
                db.execute("UPDATE sieve_scripts SET active = CASE WHEN id = ? THEN 1 ELSE 0 END"
                           " WHERE account_id = ?", (row[0], account_id))  # fmt: skip
            else:
                db.execute("UPDATE sieve_scripts SET active = 0 WHERE account_id = ?", (account_id,))
            _bump_sieve_version(db)

    def active_script(self, account_id: int) -> tuple[str, str] | None:
        row = self._database.db().execute(
            "SELECT name, script FROM sieve_scripts WHERE account_id = ? AND active = 1", (account_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def active_accounts(self) -> set[int]:
        rows = self._database.db().execute("SELECT account_id FROM sieve_scripts WHERE active = 1")
        return {int(r[0]) for r in rows if r[0] is not None}

    def sieve_version(self) -> int:
        row = self._database.db().execute("SELECT value FROM meta WHERE key = 'sieve_version'").fetchone()
        return int(row[0]) if row else 0


def _bump_sieve_version(db: SqlConnection) -> None:
    """Inside the write transaction of a script change (the row is made by the first change). The
    directory version moves too: delivery learns which accounts have an active script from it, and on
    PostgreSQL it arrives by the change feed, without a query on the event loop (kartero.rules)."""
    bump_directory_version(db)
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('sieve_version', '1')"
        " ON CONFLICT (key) DO UPDATE SET value = CAST(meta.value AS INTEGER) + 1"
    )
