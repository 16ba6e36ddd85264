"""Issue 14: what the HTTP side keeps in the store (both backends): the admin flag, API tokens and browser
sessions by the SHA-256 of their secret, and the PostgreSQL migration that adds them to an older database."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from kartero.auth.tokens import secret_hash
from kartero.store import pg_db
from kartero.store.interface import ApiToken, WebSession
from kartero.store.postgres import PgStore
from kartero.store.sqlite import SQLiteStore
from tests.pgserver import PrivatePostgres

BOB = "bob@example.test"  # the fixture's account, id 1


def test_issue_14_admin_flag_and_account_by_id(store: SQLiteStore) -> None:
    bob = store.accounts.get_account(BOB)
    assert bob is not None and bob.is_admin is False
    assert store.accounts.set_admin(BOB, True) is True
    assert store.accounts.set_admin("nobody@example.test", True) is False
    by_id = store.accounts.get_account_by_id(bob.id)
    assert by_id is not None and (by_id.address, by_id.is_admin) == (BOB, True)
    assert [a.is_admin for a in store.accounts.list_accounts()] == [True]
    assert store.accounts.set_admin(BOB, False) is True
    assert store.accounts.get_account(BOB).is_admin is False  # type: ignore[union-attr]
    assert store.accounts.get_account_by_id(bob.id + 1000) is None


def test_issue_14_api_tokens(store: SQLiteStore) -> None:
    bob = store.accounts.get_account(BOB)
    assert bob is not None
    assert store.accounts.add_token("ci", secret_hash("kt_one"), None) is True
    assert store.accounts.add_token("bobs", secret_hash("kt_two"), bob.id) is True
    assert store.accounts.add_token("ci", secret_hash("kt_three"), None) is False  # the name is taken
    assert store.accounts.add_token("other", secret_hash("kt_one"), None) is False  # so is the hash
    listed = store.accounts.list_tokens()
    assert [(t.name, t.account_id) for t in listed] == [("bobs", bob.id), ("ci", None)]
    found = store.accounts.find_token(secret_hash("kt_two"))
    assert found == ApiToken("bobs", bob.id, listed[0].created_at) and found.created_at > 1_700_000_000
    assert store.accounts.find_token(secret_hash("kt_three")) is None
    assert store.accounts.find_token("kt_one") is None  # only the hash finds a token
    assert store.accounts.delete_token("ci") is True
    assert store.accounts.delete_token("ci") is False
    assert store.accounts.find_token(secret_hash("kt_one")) is None
    # An account's tokens go with it.
    assert store.accounts.delete_account(BOB) is True
    assert store.accounts.list_tokens() == [] and store.accounts.find_token(secret_hash("kt_two")) is None


def test_issue_14_web_sessions(store: SQLiteStore) -> None:
    bob = store.accounts.get_account(BOB)
    carol = store.accounts.add_account("carol@example.test", "unused")
    assert bob is not None
    far = 4_000_000_000
    store.accounts.add_web_session("h1", WebSession(bob.id, "csrf-1", far))
    store.accounts.add_web_session("h2", WebSession(bob.id, "csrf-2", far))
    store.accounts.add_web_session("h3", WebSession(carol.id, "csrf-3", far))
    assert store.accounts.get_web_session("h1", 1_800_000_000) == WebSession(bob.id, "csrf-1", far)
    assert store.accounts.get_web_session("h1", far) is not None  # valid up to its second
    assert store.accounts.get_web_session("h1", far + 1) is None  # expired
    assert store.accounts.get_web_session("nope", 1_800_000_000) is None
    store.accounts.delete_web_session("h1")
    assert store.accounts.get_web_session("h1", 1_800_000_000) is None
    assert store.accounts.get_web_session("h2", 1_800_000_000) is not None
    store.accounts.delete_web_sessions(bob.id)  # every browser of bob, none of carol's
    assert store.accounts.get_web_session("h2", 1_800_000_000) is None
    assert store.accounts.get_web_session("h3", 1_800_000_000) is not None
    # Adding a session drops the expired ones (sessions need no other cleaning).
    store.accounts.add_web_session("old", WebSession(carol.id, "csrf-old", 1_000_000_000))
    store.accounts.add_web_session("h4", WebSession(carol.id, "csrf-4", far))
    assert store.accounts.get_web_session("old", 0) is None
    # An account's sessions go with it.
    assert store.accounts.delete_account("carol@example.test") is True
    assert store.accounts.get_web_session("h3", 1_800_000_000) is None


def test_issue_14_the_postgresql_migration_keeps_the_accounts(postgres: PrivatePostgres, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A database made before the HTTP side: its accounts stay, none an admin, and the new tables work."""
    (index,) = [i for i, m in enumerate(pg_db.MIGRATIONS) if "CREATE TABLE api_tokens" in m]
    url = postgres.new_database()
    monkeypatch.setattr(pg_db, "SCHEMA_VERSION", index)
    assert pg_db.migrate(url) == (0, index)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts (address, password_hash, created_at) VALUES (%s, 'x', 1)", (BOB,))
    monkeypatch.undo()
    assert pg_db.migrate(url) == (index, pg_db.SCHEMA_VERSION)
    store = PgStore(url, tmp_path / "node")
    try:
        bob = store.accounts.get_account(BOB)
        assert bob is not None and bob.is_admin is False
        assert store.accounts.set_admin(BOB, True) and store.accounts.get_account_by_id(bob.id).is_admin  # type: ignore[union-attr]
        assert store.accounts.add_token("ci", secret_hash("kt_x"), bob.id)
        store.accounts.add_web_session("h", WebSession(bob.id, "c", 4_000_000_000))
        assert store.accounts.get_web_session("h", 0) == WebSession(bob.id, "c", 4_000_000_000)
    finally:
        store.close()
