"""Issue 8: hostile IMAP input. Each finding's input at ten times its size must finish in a small fraction of
a second with an exact reply, and each limit is checked at its edge."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.imap.commands.mailbox import ListPattern, list_mailboxes
from kartero.imap.commands.view import Done, Session
from kartero.imap.syntax import ListCommand
from kartero.store.interface import Mailbox
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data")
    s.add_account("bob@example.test", "unused")
    s.start()
    yield s
    s.close()


def logged_in(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    return c


# -- finding 1: LIST wildcards -------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_issue_8_list_wildcards_are_linear(store: SQLiteStore) -> None:
    # The issue: 13 x "*a" + "*b" against a 34-character name took 16 s; here ten times both.
    c = logged_in(store)
    name = "a" * 340
    assert c.command(f'c CREATE "{name}"') == [b"c OK CREATE completed\r\n"]
    started = time.monotonic()
    assert c.command('l LIST "" "' + "*a" * 130 + '*b"') == [b"l OK LIST completed\r\n"]
    assert c.command('m LIST "" "' + "%a" * 130 + '%"') == [
        f'* LIST (\\HasNoChildren) "/" "{name}"\r\n'.encode(),
        b"m OK LIST completed\r\n",
    ]
    assert time.monotonic() - started < 5  # generous for a loaded CI machine; the old code took minutes


def _regex_semantics(reference: str, pattern: str, name: str) -> bool:
    """The matcher LIST used before issue 8 (a backtracking regex), as the reference semantics."""
    full = pattern if pattern.startswith("/") or not reference else reference + pattern
    regex = "".join(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch) for ch in full)
    return bool(
        re.fullmatch(regex, name) or (name.startswith("INBOX") and re.fullmatch(regex, name, re.IGNORECASE))
    )


_NAME_CHARS = st.sampled_from(list("ab/*%INBOXinbox.ü"))


@settings(max_examples=400, deadline=None)
@given(st.text(_NAME_CHARS, max_size=4), st.text(_NAME_CHARS, max_size=8), st.text(_NAME_CHARS, max_size=10))
def test_list_pattern_keeps_the_regex_semantics(reference: str, pattern: str, name: str) -> None:
    assert ListPattern(reference, pattern).matches(name) == _regex_semantics(reference, pattern, name)


class _ManyMailboxes:
    """Just what LIST asks of a store: a flat list of mailboxes and the subscriptions."""

    def __init__(self, names: list[str]) -> None:
        self.boxes = [Mailbox(i, 1, name, None, 1, 1, 1, False) for i, name in enumerate(names, 1)]

    def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        return self.boxes

    def subscriptions(self, account_id: int) -> set[str]:
        return {box.name for box in self.boxes[::2]}


def _run_list(session: Session, cmd: ListCommand) -> tuple[bytes, Done]:
    handler = list_mailboxes(session, cmd)
    out = b""
    while True:
        try:
            out += next(handler)
        except StopIteration as stop:
            return out, stop.value


def test_issue_8_list_is_not_quadratic_in_the_number_of_mailboxes() -> None:
    names = [f"Folder{i // 100}/Sub{i}" for i in range(20_000)]
    session = Session(_ManyMailboxes(names), 1, "bob@example.test", set())  # type: ignore[arg-type]
    started = time.monotonic()
    out, done = _run_list(session, ListCommand("", ("*",)))
    recursive, _ = _run_list(
        session, ListCommand("", ("*/Sub102",), selection=frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}))
    )
    assert time.monotonic() - started < 5  # generous for a loaded CI machine; the old code took minutes
    lines = out.splitlines()
    assert done.text == "LIST completed" and len(lines) == 20_200
    assert lines[0] == b'* LIST (\\Noselect \\HasChildren) "/" "Folder0"'
    assert lines[1] == b'* LIST (\\HasNoChildren) "/" "Folder0/Sub0"'
    assert recursive.splitlines() == [
        b'* LIST (\\Noselect \\HasChildren) "/" "Folder1" ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "Folder1/Sub102"',
    ]
