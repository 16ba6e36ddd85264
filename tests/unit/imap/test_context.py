"""ESORT, CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267): RETURN options on SORT, PARTIAL windows, UPDATE
with ADDTO/REMOVEFROM as the mailbox changes under another session, CANCELUPDATE. The transcripts follow
the RFC's examples (§3.3, §4.2, §4.3, §4.4) over a small mailbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.imap.commands.search import MAX_CONTEXTS, format_ordered, position_pairs
from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client, play


def message(day: int, subject: str = "hello") -> bytes:
    return f"Subject: {subject}\r\nDate: Mon, {day:02d} Mar 2026 10:00:00 +0000\r\n\r\nbody\r\n".encode()


def deliver(store: SQLiteStore, day: int, flags: frozenset[str] = frozenset()) -> None:
    account = store.accounts.get_account("bob@example.test")
    assert account is not None
    target = DeliveryTarget(account.id, "INBOX", flags)
    store.mail.deliver(Delivery(new_message_id(), message(day), (target,), 1795687200)).result(10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """Messages 1 to 8 sent on March 1 to 8 (UIDs as their numbers); 2 is \\Deleted, 6 is $Junk, 1 and 5
    are \\Seen."""
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "unused")
    s.start()
    flags = {1: {"\\Seen"}, 2: {"\\Deleted"}, 5: {"\\Seen"}, 6: {"$Junk"}}
    for day in range(1, 9):
        deliver(s, day, frozenset(flags.get(day, ())))
    yield s
    s.close()


def selected(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    c.select()
    c.greeting = b""
    return c


def test_format_ordered_keeps_the_order() -> None:
    assert format_ordered([8, 7, 5, 4, 3, 1]) == "8,7,5,4,3,1"
    assert format_ordered([1, 2, 3, 7, 5, 6]) == "1:3,7,5:6"
    assert format_ordered([]) == ""


def test_capabilities(store: SQLiteStore) -> None:
    capabilities = selected(store).command("a CAPABILITY")[0].decode().split()
    assert {"ESORT", "CONTEXT=SEARCH", "CONTEXT=SORT", "SORT"} <= set(capabilities)


def test_esort_return_options(store: SQLiteStore) -> None:
    # RFC 5267 §3.3: results in sort order; a range only where the numbers rise ("8,7", not "8:7").
    play(
        lambda: selected(store),
        """
        C: E01 UID SORT RETURN () (REVERSE DATE) UTF-8 UNDELETED UNKEYWORD $Junk
        S: * ESEARCH (TAG "E01") UID ALL 8,7,5,4,3,1
        S: E01 OK UID SORT completed
        C: E02 SORT RETURN (MIN MAX COUNT) (REVERSE DATE) UTF-8 ALL
        S: * ESEARCH (TAG "E02") MIN 8 MAX 1 COUNT 8
        S: E02 OK SORT completed
        C: E03 SORT RETURN (ALL) (DATE) UTF-8 ALL
        S: * ESEARCH (TAG "E03") ALL 1:8
        S: E03 OK SORT completed
        C: E04 SORT RETURN (COUNT MIN) (SUBJECT) UTF-8 NOT ALL
        S: * ESEARCH (TAG "E04") COUNT 0
        S: E04 OK SORT completed
        C: E05 UID SORT RETURN (SAVE MIN) (REVERSE DATE) UTF-8 SEEN
        S: * ESEARCH (TAG "E05") UID MIN 5
        S: E05 OK UID SORT completed
        C: E06 FETCH $ (UID)
        S: * 5 FETCH (UID 5)
        S: E06 OK FETCH completed
        C: E07 SORT RETURN (SAVE) (DATE) UTF-8 UNSEEN
        S: E07 OK SORT completed
        C: E08 UID SEARCH $
        S: * SEARCH 2 3 4 6 7 8
        S: E08 OK UID SEARCH completed
        C: E09 SORT (DATE) UTF-8 SEEN
        S: * SORT 1 5
        S: E09 OK SORT completed
        C: E10 SORT RETURN (BOGUS) (DATE) UTF-8 ALL
        S: E10 BAD unknown return option
        """,
    )


def test_context_hint_and_partial_results(store: SQLiteStore) -> None:
    # RFC 5267 §4.2 (CONTEXT is a hint) and §4.4: positions from 1, a window past the end gives what
    # there is, and NIL when nothing; the range is echoed as sent; SORT windows follow the sort order.
    play(
        lambda: selected(store),
        """
        C: A01 SEARCH RETURN (CONTEXT COUNT) UNDELETED UNKEYWORD $Junk
        S: * ESEARCH (TAG "A01") COUNT 6
        S: A01 OK SEARCH completed
        C: A02 UID SEARCH RETURN (PARTIAL 1:3) UNDELETED
        S: * ESEARCH (TAG "A02") UID PARTIAL (1:3 1,3:4)
        S: A02 OK UID SEARCH completed
        C: A03 UID SEARCH RETURN (PARTIAL 6:10) UNDELETED
        S: * ESEARCH (TAG "A03") UID PARTIAL (6:10 7:8)
        S: A03 OK UID SEARCH completed
        C: A04 UID SEARCH RETURN (PARTIAL 24000:24500) UNDELETED
        S: * ESEARCH (TAG "A04") UID PARTIAL (24000:24500 NIL)
        S: A04 OK UID SEARCH completed
        C: A05 SEARCH RETURN (partial 5:2 MIN COUNT) ALL
        S: * ESEARCH (TAG "A05") MIN 1 COUNT 8 PARTIAL (5:2 2:5)
        S: A05 OK SEARCH completed
        C: A06 SORT RETURN (PARTIAL 2:4) (REVERSE DATE) UTF-8 ALL
        S: * ESEARCH (TAG "A06") PARTIAL (2:4 7,6,5)
        S: A06 OK SORT completed
        C: A07 SEARCH RETURN (CONTEXT) SEEN
        S: * ESEARCH (TAG "A07") ALL 1,5
        S: A07 OK SEARCH completed
        C: A08 SEARCH RETURN (ALL PARTIAL 1:2) ALL
        S: A08 BAD one PARTIAL or ALL at most
        C: A09 SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL
        S: A09 BAD one PARTIAL or ALL at most
        C: A10 SEARCH RETURN (PARTIAL 0:5) ALL
        S: A10 BAD partial ranges start at 1
        C: A11 SEARCH RETURN (PARTIAL *:5) ALL
        S: A11 BAD partial range must be a number
        C: A12 SEARCH RETURN (PARTIAL) ALL
        S: A12 BAD PARTIAL needs a range low:high
        """,
    )


def test_search_update_follows_flags_deliveries_and_expunges(store: SQLiteStore) -> None:
    # RFC 5267 §4.3: ADDTO after EXISTS, REMOVEFROM before EXPUNGE; a SEARCH context uses position 0.
    # `a` selected first as an IMAP4rev1 client, so the messages are \Recent to it (RFC 3501 §2.3.2).
    a, b = selected(store), selected(store)
    assert a.command("B01 UID SEARCH RETURN (UPDATE) UNSEEN") == [
        b'* ESEARCH (TAG "B01") UID ALL 2:4,6:8\r\n',
        b"B01 OK UID SEARCH completed\r\n",
    ]
    assert a.command("B02 SEARCH RETURN (UPDATE COUNT) UNSEEN UNDELETED") == [
        b'* ESEARCH (TAG "B02") COUNT 5\r\n',
        b"B02 OK SEARCH completed\r\n",
    ]
    b.command("x STORE 3 +FLAGS (\\Seen)")
    assert a.command("n1 NOOP") == [
        b"* 3 FETCH (UID 3 FLAGS (\\Recent \\Seen))\r\n",
        b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 3)\r\n',
        b'* ESEARCH (TAG "B02") REMOVEFROM (0 3)\r\n',
        b"n1 OK NOOP completed\r\n",
    ]
    deliver(store, 20)
    assert a.command("n2 NOOP") == [
        b"* 9 EXISTS\r\n",
        b"* 9 RECENT\r\n",
        b'* ESEARCH (TAG "B01") UID ADDTO (0 9)\r\n',
        b'* ESEARCH (TAG "B02") ADDTO (0 9)\r\n',
        b"n2 OK NOOP completed\r\n",
    ]
    b.command("x STORE 4 +FLAGS (\\Deleted)")
    b.command("y EXPUNGE")  # 2 and 4
    assert a.command("n3 NOOP") == [
        b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 2,4)\r\n',
        b'* ESEARCH (TAG "B02") REMOVEFROM (0 4)\r\n',
        b"* 4 EXPUNGE\r\n",
        b"* 2 EXPUNGE\r\n",
        b"* 7 RECENT\r\n",
        b"n3 OK NOOP completed\r\n",
    ]
    # The session's own changes count too; .SILENT hides the FETCH, not the update. Message 4 is UID 6.
    assert a.command("s1 STORE 4 +FLAGS.SILENT (\\Seen)") == [
        b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 6)\r\n',
        b'* ESEARCH (TAG "B02") REMOVEFROM (0 4)\r\n',
        b"s1 OK STORE completed\r\n",
    ]
    assert a.command("B01 SEARCH RETURN (UPDATE) ALL") == [b"B01 BAD Tag reuse\r\n"]
    assert a.command('c1 CANCELUPDATE "B01" "B02"') == [b"c1 OK No further updates\r\n"]
    assert a.command('c2 CANCELUPDATE "B01"') == [b"c2 BAD No updating search has that tag\r\n"]
    b.command("x UID STORE 9 +FLAGS (\\Seen)")
    deliver(store, 21)
    assert a.command("n4 NOOP") == [
        b"* 8 EXISTS\r\n",
        b"* 8 RECENT\r\n",
        b"* 7 FETCH (UID 9 FLAGS (\\Recent \\Seen))\r\n",
        b"n4 OK NOOP completed\r\n",
    ]
    # The tag may be used again once its context is gone.
    assert a.command("B01 UID SEARCH RETURN (UPDATE COUNT) UID 10") == [
        b'* ESEARCH (TAG "B01") UID COUNT 1\r\n',
        b"B01 OK UID SEARCH completed\r\n",
    ]


def test_sort_update_reports_positions(store: SQLiteStore) -> None:
    # RFC 5267 §4.3.3: "ADDTO (1 2731:2733)" puts three results first. Here a DATE context holds 4 5 7 8
    # (undeleted, unseen or not, not junk, sent March 4 on); messages sent earlier and later arrive, and
    # results leave from the middle.
    a, b = selected(store), selected(store)
    criteria = "UNDELETED UNKEYWORD $Junk SINCE 1-Jan-2020 NOT UID 1,3"
    assert a.command(f"C01 UID SORT RETURN (UPDATE) (DATE) UTF-8 {criteria}") == [
        b'* ESEARCH (TAG "C01") UID ALL 4:5,7:8\r\n',
        b"C01 OK UID SORT completed\r\n",
    ]
    for day in (1, 2, 3, 6, 30):  # UIDs 9 to 13
        deliver(store, day)
    # Sorted: 9 10 11 4 5 12 7 8 13; inserted in ascending positions, each at its final place.
    assert a.command("n1 NOOP") == [
        b"* 13 EXISTS\r\n",
        b"* 13 RECENT\r\n",
        b'* ESEARCH (TAG "C01") UID ADDTO (1 9:11 6 12 9 13)\r\n',
        b"n1 OK NOOP completed\r\n",
    ]
    # 5 and 12 (positions 5 and 6) and 8 (position 8, then 6) leave.
    b.command("x STORE 5,8 +FLAGS (\\Deleted)")
    b.command("y UID STORE 12 +FLAGS ($Junk)")
    assert a.command("n2 NOOP") == [
        b"* 5 FETCH (UID 5 FLAGS (\\Deleted \\Recent \\Seen))\r\n",
        b"* 8 FETCH (UID 8 FLAGS (\\Deleted \\Recent))\r\n",
        b"* 12 FETCH (UID 12 FLAGS ($Junk \\Recent))\r\n",
        b'* ESEARCH (TAG "C01") UID REMOVEFROM (5 5,12 6 8)\r\n',
        b"n2 OK NOOP completed\r\n",
    ]
    # A context in sequence numbers: 13 7 6 12 4 3 11 10 1 9 (equal dates in mailbox order).
    assert a.command("C02 SORT RETURN (UPDATE MIN) (REVERSE DATE) UTF-8 UNDELETED") == [
        b'* ESEARCH (TAG "C02") MIN 13\r\n',
        b"C02 OK SORT completed\r\n",
    ]
    b.command("z EXPUNGE")  # 2, 5 and 8, in neither context
    assert a.command("n3 NOOP") == [b"* 8 EXPUNGE\r\n", b"* 5 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n",
                                    b"* 10 RECENT\r\n", b"n3 OK NOOP completed\r\n"]  # fmt: skip
    # UID 13, message 10 now, is first in C02 and last in C01; REMOVEFROM comes before the EXPUNGE.
    b.command("x UID STORE 13 +FLAGS (\\Deleted)")
    b.command("y EXPUNGE")
    assert a.command("n4 NOOP") == [
        b'* ESEARCH (TAG "C01") UID REMOVEFROM (6 13)\r\n',
        b'* ESEARCH (TAG "C02") REMOVEFROM (1 10)\r\n',
        b"* 10 EXPUNGE\r\n",
        b"* 9 RECENT\r\n",
        b"n4 OK NOOP completed\r\n",
    ]


def test_updates_stop_when_the_mailbox_is_deselected_and_are_limited(store: SQLiteStore) -> None:
    a, b = selected(store), selected(store)
    for i in range(MAX_CONTEXTS):
        assert a.command(f"u{i} SEARCH RETURN (UPDATE COUNT) UNSEEN")[-1] == f"u{i} OK SEARCH completed\r\n".encode()
    assert a.command("u9 SEARCH RETURN (UPDATE COUNT) UNSEEN") == [
        b'* ESEARCH (TAG "u9") COUNT 6\r\n',
        b'* NO [NOUPDATE "u9"] Too many updating searches\r\n',
        b"u9 OK SEARCH completed\r\n",
    ]
    a.select()
    b.command("x STORE 2 +FLAGS (\\Seen)")
    assert a.command("n1 NOOP") == [b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Seen))\r\n", b"n1 OK NOOP completed\r\n"]
    assert a.command('c1 CANCELUPDATE "u1"') == [b"c1 BAD No updating search has that tag\r\n"]
    # A tag given as a literal may hold CRLF: it is not echoed, so it cannot forge a response line.
    assert a.send(b"c2 CANCELUPDATE {14+}\r\nx\r\n* OK forged\r\n").splitlines(keepends=True) == [
        b"c2 BAD No updating search has that tag\r\n"
    ]
    assert a.command("u1 SEARCH RETURN (UPDATE COUNT) UNSEEN") == [
        b'* ESEARCH (TAG "u1") COUNT 5\r\n',
        b"u1 OK SEARCH completed\r\n",
    ]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_sort_update_pairs_turn_the_old_list_into_the_new(data: st.DataObject) -> None:
    # RFC 5267 §4.3.2: a client applying REMOVEFROM then ADDTO pairs in order ends with the server's list.
    old = data.draw(st.lists(st.integers(1, 10_000), unique=True, max_size=40))
    kept = [n for n in old if data.draw(st.booleans())]
    new = list(kept)
    for n in data.draw(st.lists(st.integers(10_001, 20_000), unique=True, max_size=20)):
        new.insert(data.draw(st.integers(0, len(new))), n)
    removed = [(i, n) for i, n in enumerate(old) if n not in set(kept)]
    added = [(i, n) for i, n in enumerate(new) if n not in set(old)]
    client = list(old)
    for position, run in position_pairs(removed, removing=True):
        assert client[position - 1 : position - 1 + len(run)] == run
        del client[position - 1 : position - 1 + len(run)]
    for position, run in position_pairs(added, removing=False):
        client[position - 1 : position - 1] = run
    assert client == new
