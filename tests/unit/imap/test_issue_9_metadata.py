"""Issue 9, METADATA (RFC 5464): GETMETADATA and SETMETADATA on the server and on mailboxes, as
transcripts in the shapes of the RFC's examples, the limits and their response codes, and how entries
follow their mailbox in the store."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kartero.imap.metadata import MAX_ENTRIES, MAX_ENTRY_NAME, MAX_VALUE
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client, play


def open_store(root: Path) -> SQLiteStore:
    store = SQLiteStore(root)
    if store.accounts.get_account("bob@example.test") is None:
        store.accounts.add_account("bob@example.test", "unused")
    store.start()
    return store


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[[], Client]]:
    """A factory of logged-in clients, each over a store of its own (a transcript is played twice)."""
    stores: list[SQLiteStore] = []
    numbers = itertools.count()

    def make() -> Client:
        stores.append(open_store(tmp_path / str(next(numbers))))
        c = Client(store=stores[-1])
        c.greeting += b"".join(c.command("a LOGIN bob@example.test pw"))
        return c

    yield make
    for store in stores:
        store.close()


LOGIN = r"""
    S~ \* OK \[CAPABILITY .*\] imap.example.test Kartero IMAP4rev2 ready
    S~ a OK \[CAPABILITY .* METADATA METADATA-SERVER .*\] Logged in
"""


def test_issue_9_server_metadata_as_in_rfc_5464(fresh: Callable[[], Client]) -> None:
    play(fresh, LOGIN + """
        C: b GETMETADATA "" /shared/comment
        S: * METADATA "" (/shared/comment NIL)
        S: b OK GETMETADATA completed
        C: c SETMETADATA "" (/shared/comment "Shared comment" /private/comment "Mine")
        S: c OK SETMETADATA completed
        C: d GETMETADATA "" /shared/comment
        S: * METADATA "" (/shared/comment "Shared comment")
        S: d OK GETMETADATA completed
        C: e getmetadata "" (/Shared/Comment /PRIVATE/comment)
        S: * METADATA "" (/shared/comment "Shared comment" /private/comment "Mine")
        S: e OK GETMETADATA completed
    """)  # fmt: skip


def test_issue_9_mailbox_metadata_as_in_rfc_5464(fresh: Callable[[], Client]) -> None:
    play(fresh, LOGIN + """
        C: b SETMETADATA INBOX (/private/comment {33}
        S: + Ready for literal data
        C: My new comment across
        C: two lines.)
        S: b OK SETMETADATA completed
        C: c GETMETADATA INBOX (/shared/comment /private/comment)
        S: * METADATA "INBOX" (/shared/comment NIL /private/comment {33}
        S: My new comment across
        S: two lines.)
        S: c OK GETMETADATA completed
        C: d SETMETADATA INBOX (/private/comment "My own comment" /shared/comment "Shared")
        S: d OK SETMETADATA completed
        C: e GETMETADATA (MAXSIZE 10) INBOX (/private/comment /shared/comment)
        S: * METADATA "INBOX" (/shared/comment "Shared")
        S: e OK [METADATA LONGENTRIES 14] GETMETADATA completed
        C: f SETMETADATA INBOX (/private/comment NIL)
        S: f OK SETMETADATA completed
        C: g GETMETADATA INBOX /private/comment
        S: * METADATA "INBOX" (/private/comment NIL)
        S: g OK GETMETADATA completed
    """)  # fmt: skip


def test_issue_9_metadata_depth_as_in_rfc_5464(fresh: Callable[[], Client]) -> None:
    """RFC 5464 §4.2.2: DEPTH 1 gives the children that have a value, infinity every descendant; an entry
    without a value is left out under DEPTH (and answered NIL alone)."""
    play(fresh, LOGIN + r"""
        C: b SETMETADATA INBOX (/private/filters/values/small "SMALLER 5000" /private/filters/values/boss "FROM \"boss@example.com\"" /private/filters/values/boss/deep "x")
        S: b OK SETMETADATA completed
        C: c GETMETADATA (DEPTH 1) INBOX (/private/filters/values)
        S: * METADATA "INBOX" (/private/filters/values/boss "FROM \"boss@example.com\"" /private/filters/values/small "SMALLER 5000")
        S: c OK GETMETADATA completed
        C: d GETMETADATA (DEPTH infinity MAXSIZE 5) INBOX /private/filters
        S: * METADATA "INBOX" (/private/filters/values/boss/deep "x")
        S: d OK [METADATA LONGENTRIES 23] GETMETADATA completed
        C: e GETMETADATA (DEPTH 1) INBOX /private/vendor
        S: e OK GETMETADATA completed
        C: f GETMETADATA (DEPTH 2) INBOX /private
        S: f BAD DEPTH is 0, 1 or infinity
    """)  # fmt: skip  # noqa: E501


def test_issue_9_metadata_names_and_mailboxes_refused(fresh: Callable[[], Client]) -> None:
    """RFC 5464 §3.2: names start with /private or /shared and hold no `*`, `%`, `//` or trailing `/`."""
    long_name = "/private/vendor/" + "x" * MAX_ENTRY_NAME
    play(fresh, LOGIN + f"""
        C: b SETMETADATA INBOX (/comment "x")
        S: b BAD entry name must begin with /private or /shared
        C: c SETMETADATA INBOX (/private/a*b "x")
        S: c BAD invalid entry name
        C: d GETMETADATA INBOX /private//comment
        S: d BAD invalid entry name
        C: e SETMETADATA INBOX (/private "x")
        S: e BAD invalid entry name
        C: f GETMETADATA INBOX {long_name}
        S: f BAD entry name too long ({MAX_ENTRY_NAME} octets at most)
        C: g SETMETADATA INBOX (/private/comment)
        S: g BAD SETMETADATA takes entry and value pairs
        C: h SETMETADATA INBOX (/private/comment value)
        S: h BAD a metadata value is a string or NIL
        C: i GETMETADATA Nowhere /private/comment
        S: i NO [NONEXISTENT] No such mailbox
        C: j SETMETADATA Nowhere (/private/comment "x")
        S: j NO [NONEXISTENT] No such mailbox
        C: k GETMETADATA (COLOUR red) INBOX /private/comment
        S: k BAD unknown GETMETADATA option COLOUR
    """)  # fmt: skip


def test_issue_9_metadata_value_limits(fresh: Callable[[], Client]) -> None:
    """A value over MAX_VALUE: NO [METADATA MAXSIZE n] before the literal is sent (RFC 5464 §4.3); one of
    MAX_VALUE octets is kept; a value holding NUL comes back as a literal8."""
    c = fresh()
    assert c.command(f"b SETMETADATA INBOX (/private/vendor/big {{{MAX_VALUE + 1}}}") == [
        b"b NO [METADATA MAXSIZE %d] Value too large\r\n" % MAX_VALUE
    ]
    value = b"v" * MAX_VALUE
    assert c.send(b"c SETMETADATA INBOX (/private/vendor/big {%d+}\r\n" % MAX_VALUE + value + b")\r\n") == (
        b"c OK SETMETADATA completed\r\n"
    )
    assert c.command("d GETMETADATA INBOX /private/vendor/big")[0] == (
        b'* METADATA "INBOX" (/private/vendor/big {%d}\r\n' % MAX_VALUE
    )
    assert c.send(b"e SETMETADATA INBOX (/shared/vendor/bin ~{3+}\r\na\x00b)\r\n") == b"e OK SETMETADATA completed\r\n"
    assert c.send(b"f GETMETADATA INBOX /shared/vendor/bin\r\n") == (
        b'* METADATA "INBOX" (/shared/vendor/bin ~{3}\r\na\x00b)\r\nf OK GETMETADATA completed\r\n'
    )


def test_issue_9_metadata_entry_limit_is_all_or_nothing(fresh: Callable[[], Client]) -> None:
    c = fresh()
    first = " ".join(f'/private/vendor/k{i} "v"' for i in range(MAX_ENTRIES - 1))
    assert c.command(f"b SETMETADATA INBOX ({first})") == [b"b OK SETMETADATA completed\r\n"]
    assert c.command('c SETMETADATA INBOX (/shared/comment "one" /private/comment "two")') == [
        b"c NO [METADATA TOOMANY] Too many entries (100 at most)\r\n"
    ]
    assert c.command("d GETMETADATA INBOX (/shared/comment /private/comment)")[0] == (
        b'* METADATA "INBOX" (/shared/comment NIL /private/comment NIL)\r\n'
    )
    # Replacing one and removing one in the same command stays within the limit.
    assert c.command('e SETMETADATA INBOX (/private/vendor/k0 NIL /shared/comment "one" /private/comment "2")') == [
        b"e OK SETMETADATA completed\r\n"
    ]
    # The server's entries are counted apart from the mailbox's.
    assert c.command('f SETMETADATA "" (/shared/comment "server")') == [b"f OK SETMETADATA completed\r\n"]


def test_issue_9_metadata_goes_with_its_mailbox(tmp_path: Path) -> None:
    """Entries are deleted with their mailbox (and not inherited by a new one of the same name) and follow
    it through RENAME, its children's too; renaming INBOX leaves INBOX's entries on INBOX."""
    store = open_store(tmp_path / "data")
    try:
        c = Client(store=store)
        c.login()
        for command in ("b CREATE Work/Old", 'c SETMETADATA Work (/private/comment "w")',
                        'd SETMETADATA Work/Old (/shared/comment "o")', 'e SETMETADATA INBOX (/private/comment "i")',
                        "f RENAME Work Projects", "g RENAME INBOX Archive2024"):  # fmt: skip
            assert c.command(command)[-1].split()[1] == b"OK", command
        assert c.command("h GETMETADATA Projects /private/comment")[0] == (
            b'* METADATA "Projects" (/private/comment "w")\r\n'
        )
        assert c.command("i GETMETADATA Projects/Old /shared/comment")[0] == (
            b'* METADATA "Projects/Old" (/shared/comment "o")\r\n'
        )
        assert c.command("j GETMETADATA INBOX /private/comment")[0] == b'* METADATA "INBOX" (/private/comment "i")\r\n'
        assert c.command("k DELETE Projects/Old")[-1] == b"k OK DELETE completed\r\n"
        assert c.command("l CREATE Projects/Old")[-1].startswith(b"l OK")
        assert c.command("m GETMETADATA Projects/Old /shared/comment")[0] == (
            b'* METADATA "Projects/Old" (/shared/comment NIL)\r\n'
        )
        assert store.database.db().execute("SELECT COUNT(*) FROM metadata").fetchone() == (2,)
        assert store.accounts.delete_account("bob@example.test")
        assert store.database.db().execute("SELECT COUNT(*) FROM metadata").fetchone() == (0,)
    finally:
        store.close()


def test_issue_9_a_database_from_before_metadata_gets_the_table(tmp_path: Path) -> None:
    open_store(tmp_path / "data").close()
    db = sqlite3.connect(tmp_path / "data" / "kartero.db")
    db.execute("DROP TABLE metadata")
    db.commit()
    db.close()
    store = open_store(tmp_path / "data")
    try:
        assert store.mail.set_metadata(1, None, [("/private/comment", b"x")], MAX_ENTRIES)
        assert store.mail.metadata(1, None) == {"/private/comment": b"x"}
    finally:
        store.close()


def test_issue_9_list_metadata_as_in_rfc_9590(fresh: Callable[[], Client]) -> None:
    """RFC 9590 §4: each listed mailbox's LIST is followed by its METADATA (NIL for an entry it lacks);
    a \\NonExistent parent gets none; MAXSIZE and DEPTH work as in GETMETADATA."""
    play(fresh, LOGIN + r"""
        C: b CREATE foo/bar
        S~ b OK \[MAILBOXID \(\w+\)\] CREATE completed
        C: c SETMETADATA INBOX (/private/comment "Really useful ideas")
        S: c OK SETMETADATA completed
        C: d SETMETADATA foo/bar (/shared/comment "Shared comment on bar" /shared/vendor/x/colour "#000000")
        S: d OK SETMETADATA completed
        C: e LIST "" % RETURN (METADATA (/shared/comment /private/comment))
        S: * LIST (\HasNoChildren) "/" "INBOX"
        S: * METADATA "INBOX" (/shared/comment NIL /private/comment "Really useful ideas")
        S: * LIST (\HasNoChildren \Archive) "/" "Archive"
        S: * METADATA "Archive" (/shared/comment NIL /private/comment NIL)
        S~ \* LIST \(\\HasNoChildren \\Drafts\) .*
        S~ \* METADATA "Drafts" .*
        S~ \* LIST .* "Junk"
        S~ \* METADATA "Junk" .*
        S~ \* LIST .* "Sent"
        S~ \* METADATA "Sent" .*
        S~ \* LIST .* "Trash"
        S~ \* METADATA "Trash" .*
        S: * LIST (\HasChildren) "/" "foo"
        S: * METADATA "foo" (/shared/comment NIL /private/comment NIL)
        S: e OK LIST completed
        C: f LIST "" foo/% RETURN (CHILDREN METADATA (MAXSIZE 10 /shared/comment))
        S: * LIST (\HasNoChildren) "/" "foo/bar"
        S: f OK [METADATA LONGENTRIES 21] LIST completed
        C: g LIST "" foo/% RETURN (METADATA (/shared DEPTH infinity MAXSIZE 10))
        S: * LIST (\HasNoChildren) "/" "foo/bar"
        S: * METADATA "foo/bar" (/shared/vendor/x/colour "#000000")
        S: g OK [METADATA LONGENTRIES 21] LIST completed
        C: h LIST "" % RETURN (METADATA)
        S: h BAD METADATA needs a list of entries
        C: i LIST "" % RETURN (METADATA ())
        S: i BAD METADATA takes 1 to 100 entries
    """)  # fmt: skip


def test_issue_9_entry_names_that_are_no_atoms_go_out_quoted(fresh: Callable[[], Client]) -> None:
    """RFC 5464 §3.2 allows SP, `{`, `)` or `"` in an entry name; a response that wrote it bare could be read
    as a literal announcement or the end of the list. Such names go out as quoted strings."""
    c = fresh()
    set_lines = c.command('s SETMETADATA INBOX ("/private/x {5}" "v" "/private/q\\"z) y" "w" /private/plain "p")')
    assert set_lines == [b"s OK SETMETADATA completed\r\n"]
    lines = c.command('g GETMETADATA INBOX ("/private/x {5}" "/private/q\\"z) y" /private/plain)')
    assert lines[0] == b'* METADATA "INBOX" ("/private/x {5}" "v" "/private/q\\"z) y" "w" /private/plain "p")\r\n'
