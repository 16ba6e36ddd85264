"""Issue 8, finding 8: stored SCRAM-SHA-256 keys use >= 100,000 PBKDF2 rounds (configurable), and keys
made with fewer rounds are replaced at the next successful password login."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.auth.accounts import Authenticator, Directory, needs_new_scram
from kartero.auth.passwords import hash_password
from kartero.auth.sasl import SCRAM_ITERATIONS, ScramCredentials, scram_credentials
from kartero.store.sqlite import SQLiteStore

PASSWORD = "correct horse"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "data")
    yield store
    store.close()


def keys(store: SQLiteStore, address: str) -> ScramCredentials:
    account = store.accounts.get_account(address)
    assert account is not None
    return ScramCredentials.decode(account.scram)


def test_issue_8_new_scram_keys_use_100000_rounds_or_the_configured_count(store: SQLiteStore) -> None:
    assert SCRAM_ITERATIONS >= 100_000
    Directory(store.accounts, ("example.test",)).add_user("bob@example.test", PASSWORD)
    assert keys(store, "bob@example.test").iterations == SCRAM_ITERATIONS
    directory = Directory(store.accounts, ("example.test",), scram_iterations=150_000)
    directory.add_user("carol@example.test", PASSWORD)
    assert keys(store, "carol@example.test").iterations == 150_000
    directory.set_password("bob@example.test", "new password")
    assert keys(store, "bob@example.test").iterations == 150_000


def test_issue_8_old_4096_round_keys_are_replaced_at_the_next_successful_login(store: SQLiteStore) -> None:
    old = scram_credentials(PASSWORD, b"0123456789abcdef", 4096)
    store.accounts.add_account("bob@example.test", hash_password(PASSWORD), old.encode())
    authenticator = Authenticator(store.accounts)
    assert authenticator.verify("bob@example.test", "wrong") is None
    assert keys(store, "bob@example.test") == old  # a wrong password changes nothing
    assert authenticator.verify("Bob@Example.TEST", PASSWORD) is not None
    new = keys(store, "bob@example.test")
    assert new.iterations == SCRAM_ITERATIONS and new.salt != old.salt
    assert scram_credentials(PASSWORD, new.salt, new.iterations) == new  # the keys of the same password
    assert authenticator.scram("bob@example.test")[0] == new


def test_issue_8_keys_are_kept_when_good_and_made_when_missing(store: SQLiteStore) -> None:
    store.accounts.add_account("bob@example.test", hash_password(PASSWORD), "")
    authenticator = Authenticator(store.accounts, scram_iterations=4096)
    assert authenticator.verify("bob@example.test", PASSWORD) is not None
    made = keys(store, "bob@example.test")
    assert made.iterations == 4096
    Authenticator(store.accounts, scram_iterations=4096).verify("bob@example.test", PASSWORD)
    assert keys(store, "bob@example.test") == made  # not re-derived at every login
    assert needs_new_scram("garbage", 4096) and needs_new_scram("", 4096)
    assert not needs_new_scram(made.encode(), 4096) and needs_new_scram(made.encode(), 4097)


def test_issue_8_unknown_users_get_fake_keys_with_the_same_round_count(store: SQLiteStore) -> None:
    credentials, account = Authenticator(store.accounts, scram_iterations=120_000).scram("nobody@example.test")
    assert account is None and credentials.iterations == 120_000
