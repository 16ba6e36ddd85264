"""Recipient resolution: aliases, plus-addressing, catch-all, postmaster; canonical addresses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.auth.accounts import Directory, DirectoryError, parse_address
from kartero.auth.passwords import verify_password
from kartero.store.sqlite import SQLiteStore


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Directory]:
    store = SQLiteStore(tmp_path / "data")
    yield Directory(store.accounts, ("example.test", "xn--bcher-kva.example"))
    store.close()


def ids(directory: Directory, *addresses: str) -> tuple[int, ...]:
    return tuple(directory.store.get_account(a).id for a in addresses)  # type: ignore[union-attr]


def test_canonical_addresses() -> None:
    assert parse_address("Bob@Example.TEST") == "bob@example.test"
    assert parse_address("anna@B\u00fccher.example") == "anna@xn--bcher-kva.example"
    with pytest.raises(DirectoryError):
        parse_address("no-at-sign")


def test_issue_14_a_canonical_address_parses_to_itself() -> None:
    """The web admin sends an account's canonical address back in its forms: one whose local part
    needed quotes must still name the same account."""
    for typed in ('"<b>x"@example.test', '"a b"@Example.test', '"q\\"x"@example.test'):
        canonical = parse_address(typed)
        assert parse_address(canonical) == canonical
    assert parse_address('"a b"@example.test') == "a b@example.test"
    for bad in ("@example.test", "a@", "a b", "<>@", "a@bad..domain"):
        with pytest.raises(DirectoryError):
            parse_address(bad)


def test_resolution_order(directory: Directory) -> None:
    directory.add_user("bob@example.test", "pw")
    directory.add_user("carol@example.test", "pw")
    directory.add_user("anna@b\u00fccher.example", "pw")
    bob, carol = ids(directory, "bob@example.test", "carol@example.test")
    r = directory.resolve
    assert r("bob@example.test").account_ids == (bob,)
    assert r("bob+news@example.test").account_ids == (bob,)
    assert r("nobody@example.test").account_ids == ()
    assert r("postmaster@example.test").account_ids == (bob,)  # the first account created
    assert r("postmaster@example.test").is_postmaster_fallback
    directory.add_alias("team@example.test", "bob@example.test")
    directory.add_alias("team@example.test", "carol+work@example.test")
    assert r("team@example.test").account_ids == (bob, carol)
    directory.add_alias("@example.test", "carol@example.test")
    assert r("nobody@example.test").account_ids == (carol,)
    assert r("postmaster@example.test").account_ids == (carol,)  # catch-all comes first
    directory.add_alias("bob@example.test", "carol@example.test")  # an alias overrides the account
    assert r("bob@example.test").account_ids == (carol,)
    assert r("anna@xn--bcher-kva.example").account_ids == ids(directory, "anna@xn--bcher-kva.example")


def test_alias_loops_end(directory: Directory) -> None:
    directory.add_user("bob@example.test", "pw")
    directory.add_alias("a@example.test", "b@example.test")
    directory.add_alias("b@example.test", "a@example.test")
    directory.add_alias("b@example.test", "bob@example.test")
    assert directory.resolve("a@example.test").account_ids == ids(directory, "bob@example.test")


def test_postmaster_without_accounts(directory: Directory) -> None:
    resolution = directory.resolve("postmaster@example.test")
    assert resolution.account_ids == () and resolution.is_postmaster_fallback


def test_admin_mistakes(directory: Directory) -> None:
    with pytest.raises(DirectoryError, match="not one of the local domains"):
        directory.add_user("x@elsewhere.test", "pw")
    with pytest.raises(DirectoryError, match="password is empty"):
        directory.add_user("x@example.test", "")
    with pytest.raises(DirectoryError, match="cannot point to itself"):
        directory.add_alias("x@example.test", "x@example.test")
    with pytest.raises(DirectoryError, match="no account"):
        directory.set_password("ghost@example.test", "pw")
    with pytest.raises(DirectoryError, match="no alias"):
        directory.delete_alias("@example.test")


def test_password_is_hashed(directory: Directory) -> None:
    account = directory.add_user("bob@example.test", "correct horse")
    assert account.password_hash.startswith("$argon2id$")
    assert verify_password(account.password_hash, "correct horse")
    assert not verify_password(account.password_hash, "wrong")
    assert not verify_password("garbage", "correct horse")


def test_directory_cache_sees_new_users_at_once_and_deletions_within_a_second(tmp_path: Path) -> None:
    import asyncio

    from kartero.auth.accounts import DirectoryCache

    store = SQLiteStore(tmp_path / "data")
    directory = Directory(store.accounts, ("example.test",))

    async def scenario() -> None:
        cache = DirectoryCache(store.accounts, ("example.test",))

        async def lookup(address: str) -> tuple[int, ...]:
            return (await cache.resolve(address)).account_ids

        assert await lookup("bob@example.test") == ()
        bob = directory.add_user("bob@example.test", "pw")
        assert await lookup("bob@example.test") == (bob.id,)  # a negative answer always rechecks
        assert await lookup("bob+x@example.test") == (bob.id,)  # answered from memory
        directory.delete_user("bob@example.test")
        assert await lookup("bob@example.test") == (bob.id,)  # within the second: not rechecked yet
        cache._checked_at -= DirectoryCache.RECHECK_S  # as if a second had passed
        assert await lookup("bob@example.test") == ()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
