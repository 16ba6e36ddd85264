"""Accounts and aliases in the SQLite store (kartero.store.interface.AccountStore).

Every change to them raises the `directory_version` counter (a row of `meta`) in its own transaction, so
a running server sees a change the CLI made in another process with one read of that row
(kartero.auth.accounts.DirectoryCache). An account gets its special-use mailboxes when it is created.
"""

from __future__ import annotations

import time

from kartero.store.commit import Committer
from kartero.store.ids import new_mailbox_objectid
from kartero.store.interface import SPECIAL_MAILBOXES, Account, AccountExists, ApiToken, WebSession
from kartero.store.sql import SqlConnection, SqlDatabase
from kartero.store.sqlite_db import drop_unreferenced_blobs, next_uidvalidity


class SQLiteAccounts:
    """AccountStore over the shared Database; deleting an account asks the committer to compact."""

    def __init__(self, database: SqlDatabase, committer: Committer) -> None:
        self._database = database
        self._committer = committer

    def add_account(self, address: str, password_hash: str, scram: str = "") -> Account:
        now = int(time.time())
        with self._database.write() as db:
            try:
                row = db.execute(
                    "INSERT INTO accounts (address, password_hash, created_at, scram) VALUES (?, ?, ?, ?)"
                    " RETURNING id",
                    (address, password_hash, now, scram),
                ).fetchone()
            except self._database.IntegrityError:
                raise AccountExists(f"account {address} already exists") from None
            account_id = int(row[0])
            for name, special_use in SPECIAL_MAILBOXES:
                db.execute(
                    "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, objectid)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (account_id, name, special_use, next_uidvalidity(db), new_mailbox_objectid()),
                )
                db.execute("INSERT INTO subscriptions (account_id, name) VALUES (?, ?)", (account_id, name))
            bump_directory_version(db)
        return Account(account_id, address, password_hash, now, scram)


    def get_account(self, address: str) -> Account | None:
        row = self._database.db().execute(f"SELECT {_ACCOUNT} FROM accounts WHERE address = ?", (address,)).fetchone()
        return _account(row) if row else None

    def get_account_by_id(self, account_id: int) -> Account | None:
        row = self._database.db().execute(f"SELECT {_ACCOUNT} FROM accounts WHERE id = ?", (account_id,)).fetchone()
        return _account(row) if row else None

    def list_accounts(self) -> list[Account]:
        rows = self._database.db().execute(f"SELECT {_ACCOUNT} FROM accounts ORDER BY address")
        return [_account(row) for row in rows]

    def set_admin(self, address: str, is_admin: bool) -> bool:
        with self._database.write() as db:
            cur = db.execute("UPDATE accounts SET admin = ? WHERE address = ?", (int(is_admin), address))
        return bool(cur.rowcount == 1)

    # -- the HTTP side's credentials ----------------------------------------------------------------

    def add_token(self, name: str, token_hash: str, account_id: int | None) -> bool:
        with self._database.write() as db:
            cur = db.execute(
                "INSERT INTO api_tokens (name, token_hash, account_id, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (name, token_hash, account_id, int(time.time())),
            )
        return bool(cur.rowcount == 1)

    def list_tokens(self) -> list[ApiToken]:
        rows = self._database.db().execute("SELECT name, account_id, created_at FROM api_tokens ORDER BY name")
        return [ApiToken(r[0], r[1], r[2]) for r in rows]

    def delete_token(self, name: str) -> bool:
        with self._database.write() as db:
            cur = db.execute("DELETE FROM api_tokens WHERE name = ?", (name,))
        return bool(cur.rowcount == 1)

    def find_token(self, token_hash: str) -> ApiToken | None:
        row = self._database.db().execute(
            "SELECT name, account_id, created_at FROM api_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return ApiToken(row[0], row[1], row[2]) if row else None

    def add_web_session(self, session_hash: str, session: WebSession) -> None:
        with self._database.write() as db:
            db.execute("DELETE FROM web_sessions WHERE expires_at < ?", (int(time.time()),))
            db.execute(
                "INSERT INTO web_sessions (session_hash, account_id, csrf, expires_at) VALUES (?, ?, ?, ?)",
                (session_hash, session.account_id, session.csrf, session.expires_at),
            )

    def get_web_session(self, session_hash: str, now: int) -> WebSession | None:
        row = self._database.db().execute(
            "SELECT account_id, csrf, expires_at FROM web_sessions WHERE session_hash = ? AND expires_at >= ?",
            (session_hash, now),
        ).fetchone()
        return WebSession(row[0], row[1], row[2]) if row else None

    def delete_web_session(self, session_hash: str) -> None:
        with self._database.write() as db:
            db.execute("DELETE FROM web_sessions WHERE session_hash = ?", (session_hash,))

    def delete_web_sessions(self, account_id: int) -> None:
        with self._database.write() as db:
            db.execute("DELETE FROM web_sessions WHERE account_id = ?", (account_id,))

    def set_password(self, address: str, password_hash: str, scram: str = "") -> bool:
        with self._database.write() as db:
            cur = db.execute(
                "UPDATE accounts SET password_hash = ?, scram = ? WHERE address = ?", (password_hash, scram, address)
            )
            bump_directory_version(db)
        return bool(cur.rowcount == 1)

    def set_quota(self, address: str, limit_bytes: int | None) -> bool:
        with self._database.write() as db:
            cur = db.execute("UPDATE accounts SET quota_bytes = ? WHERE address = ?", (limit_bytes, address))
            bump_directory_version(db)
        return bool(cur.rowcount == 1)

    def set_scram(self, address: str, scram: str) -> None:
        with self._database.write() as db:
            db.execute("UPDATE accounts SET scram = ? WHERE address = ?", (scram, address))

    def delete_account(self, address: str) -> bool:
        with self._database.write() as db:
            row = db.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
            if row is None:
                return False
            blob_ids = [
                r[0]
                for r in db.execute(
                    "SELECT blob_id FROM messages JOIN mailboxes ON mailboxes.id = messages.mailbox_id"
                    " WHERE mailboxes.account_id = ? UNION SELECT blob_id FROM expunged"
                    " JOIN mailboxes ON mailboxes.id = expunged.mailbox_id"
                    " WHERE mailboxes.account_id = ? AND blob_id IS NOT NULL",
                    (row[0], row[0]),
                )
            ]
            db.execute("DELETE FROM accounts WHERE id = ?", (row[0],))
            # Bodies nothing else shares become dead space in their segments; compaction (at the next
            # server start, or `compact()`) reclaims it.
            drop_unreferenced_blobs(db, blob_ids)
            bump_directory_version(db)
        self._committer.compact()
        return True

    def add_alias(self, source: str, destination: str) -> bool:
        with self._database.write() as db:
            cur = db.execute("INSERT INTO aliases (source, destination) VALUES (?, ?) ON CONFLICT DO NOTHING",
                             (source, destination))  # fmt: skip
            bump_directory_version(db)
        return bool(cur.rowcount == 1)

    def delete_alias(self, source: str) -> int:
        with self._database.write() as db:
            count = int(db.execute("DELETE FROM aliases WHERE source = ?", (source,)).rowcount)
            bump_directory_version(db)
        return count

    def list_aliases(self) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in self._database.db().execute("SELECT source, destination FROM aliases ORDER BY source, destination")
        ]

    def load_directory(self) -> tuple[dict[str, int], dict[str, tuple[str, ...]], int | None]:
        db = self._database.db()
        db.execute("BEGIN")  # one consistent snapshot of both tables
        try:
            accounts = dict(db.execute("SELECT address, id FROM accounts"))
            aliases: dict[str, list[str]] = {}
            for source, destination in db.execute(
                "SELECT source, destination FROM aliases ORDER BY source, destination"
            ):
                aliases.setdefault(source, []).append(destination)
            first = db.execute("SELECT MIN(id) FROM accounts").fetchone()[0]
        finally:
            db.execute("COMMIT")
        return accounts, {k: tuple(v) for k, v in aliases.items()}, first

    def directory_version(self) -> int:
        """The counter every account and alias change raises in its own transaction: one read of one row
        (a few µs, about twice a `stat`), so the server sees the CLI's changes at the next RCPT."""
        row = self._database.db().execute("SELECT value FROM meta WHERE key = 'directory_version'").fetchone()
        return int(row[0]) if row else 0

    def server_secret(self, name: str, candidate: str) -> str:
        key = f"secret:{name}"
        with self._database.write() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, candidate))
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])


_ACCOUNT = "id, address, password_hash, created_at, scram, admin"


def _account(row: tuple[object, ...]) -> Account:
    return Account(int(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]), bool(row[5]))  # type: ignore[call-overload]


def bump_directory_version(db: SqlConnection) -> None:
    """Inside the write transaction of an account or alias change: a running server's next directory
    check sees a new version and reloads its snapshot (auth.accounts.DirectoryCache)."""
    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'directory_version'")
