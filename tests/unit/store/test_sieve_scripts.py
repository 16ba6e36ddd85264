"""Sieve script storage (store/sieve_sql.py) on both backends: the namespace ManageSieve and `kartero
sieve` work on, one active script per account, globals apart, the change counter."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.store.copy import copy_store
from kartero.store.interface import NoSuchScript, ScriptExists, ScriptIsActive, SieveScriptInfo, TooManyScripts
from kartero.store.postgres import PgStore
from kartero.store.sqlite import SQLiteStore
from tests.pgserver import PrivatePostgres

BOB = 1


def test_put_get_list_replace(store: SQLiteStore) -> None:
    sieve = store.sieve
    assert sieve.list_scripts(BOB) == []
    sieve.put_script(BOB, "b", "keep;")
    sieve.put_script(BOB, "a", "discard;")
    sieve.put_script(BOB, "a", "stop;")  # replaced, not a second one
    assert sieve.list_scripts(BOB) == [SieveScriptInfo("a", False), SieveScriptInfo("b", False)]
    assert sieve.get_script(BOB, "a") == "stop;"
    assert sieve.get_script(BOB, "c") is None


def test_one_active_script_per_account(store: SQLiteStore) -> None:
    sieve = store.sieve
    sieve.put_script(BOB, "a", "keep;")
    sieve.put_script(BOB, "b", "stop;")
    assert sieve.active_script(BOB) is None
    sieve.set_active(BOB, "a")
    sieve.set_active(BOB, "b")
    assert sieve.list_scripts(BOB) == [SieveScriptInfo("a", False), SieveScriptInfo("b", True)]
    assert sieve.active_script(BOB) == ("b", "stop;")
    sieve.put_script(BOB, "b", "discard;")  # replacing the active script keeps it active
    assert sieve.active_script(BOB) == ("b", "discard;")
    with pytest.raises(NoSuchScript):
        sieve.set_active(BOB, "nope")
    assert sieve.active_script(BOB) == ("b", "discard;")
    sieve.set_active(BOB, None)
    assert sieve.active_script(BOB) is None


def test_delete_refuses_the_active_script(store: SQLiteStore) -> None:
    sieve = store.sieve
    sieve.put_script(BOB, "a", "keep;")
    sieve.set_active(BOB, "a")
    with pytest.raises(ScriptIsActive):
        sieve.delete_script(BOB, "a")
    with pytest.raises(NoSuchScript):
        sieve.delete_script(BOB, "b")
    sieve.set_active(BOB, None)
    sieve.delete_script(BOB, "a")
    assert sieve.list_scripts(BOB) == []


def test_rename_keeps_active_and_refuses_existing(store: SQLiteStore) -> None:
    sieve = store.sieve
    sieve.put_script(BOB, "a", "keep;")
    sieve.put_script(BOB, "b", "stop;")
    sieve.set_active(BOB, "a")
    with pytest.raises(ScriptExists):
        sieve.rename_script(BOB, "a", "b")
    with pytest.raises(NoSuchScript):
        sieve.rename_script(BOB, "x", "y")
    sieve.rename_script(BOB, "a", "c")
    assert sieve.active_script(BOB) == ("c", "keep;")
    assert [s.name for s in sieve.list_scripts(BOB)] == ["b", "c"]


def test_script_limit_counts_new_scripts_only(store: SQLiteStore) -> None:
    sieve = store.sieve
    sieve.put_script(BOB, "a", "keep;", max_scripts=2)
    sieve.put_script(BOB, "b", "keep;", max_scripts=2)
    with pytest.raises(TooManyScripts):
        sieve.put_script(BOB, "c", "keep;", max_scripts=2)
    sieve.put_script(BOB, "b", "stop;", max_scripts=2)  # a replacement still fits
    assert sieve.get_script(BOB, "b") == "stop;"


def test_globals_are_apart_from_accounts(store: SQLiteStore) -> None:
    sieve = store.sieve
    sieve.put_script(None, "spam", "global;")
    sieve.put_script(BOB, "spam", "personal;")
    assert sieve.get_script(None, "spam") == "global;"
    assert sieve.get_script(BOB, "spam") == "personal;"
    assert sieve.list_scripts(None) == [SieveScriptInfo("spam", False)]
    sieve.delete_script(None, "spam")
    assert sieve.get_script(BOB, "spam") == "personal;"


def test_unicode_names_round_trip(store: SQLiteStore) -> None:
    store.sieve.put_script(BOB, "Urlaub \u00e4 \U0001f600", "keep;")
    assert store.sieve.list_scripts(BOB)[0].name == "Urlaub \u00e4 \U0001f600"


def test_every_change_raises_the_version(store: SQLiteStore) -> None:
    sieve = store.sieve
    seen = [sieve.sieve_version()]
    sieve.put_script(BOB, "a", "keep;")
    seen.append(sieve.sieve_version())
    sieve.set_active(BOB, "a")
    seen.append(sieve.sieve_version())
    sieve.rename_script(BOB, "a", "b")
    seen.append(sieve.sieve_version())
    sieve.set_active(BOB, None)
    seen.append(sieve.sieve_version())
    sieve.delete_script(BOB, "b")
    seen.append(sieve.sieve_version())
    sieve.put_script(None, "g", "keep;")
    seen.append(sieve.sieve_version())
    assert seen == sorted(set(seen))  # strictly increasing


def test_scripts_go_with_their_account(store: SQLiteStore) -> None:
    store.sieve.put_script(BOB, "a", "keep;")
    store.sieve.set_active(BOB, "a")
    store.sieve.put_script(None, "g", "keep;")
    assert store.accounts.delete_account("bob@example.test")
    bob = store.accounts.add_account("bob@example.test", "unused")
    assert store.sieve.list_scripts(bob.id) == []
    assert store.sieve.active_script(BOB) is None
    assert store.sieve.get_script(None, "g") == "keep;"


def test_db_copy_copies_scripts_once(tmp_path: Path, postgres: PrivatePostgres) -> None:
    source = SQLiteStore(tmp_path / "src")
    try:
        bob = source.accounts.add_account("bob@example.test", "unused")
        source.sieve.put_script(bob.id, "rules", "keep;")
        source.sieve.put_script(bob.id, "old", "stop;")
        source.sieve.set_active(bob.id, "rules")
        source.sieve.put_script(None, "spam", "discard;")
        url = postgres.migrated_database()
        first = copy_store(source, url)
        assert first.scripts == 3
        assert copy_store(source, url).scripts == 0  # a rerun copies nothing twice
    finally:
        source.close()
    target = PgStore(url, tmp_path / "pg")
    try:
        there = target.accounts.get_account("bob@example.test")
        assert there is not None
        assert target.sieve.active_script(there.id) == ("rules", "keep;")
        assert [s.name for s in target.sieve.list_scripts(there.id)] == ["old", "rules"]
        assert target.sieve.get_script(None, "spam") == "discard;"
    finally:
        target.close()
