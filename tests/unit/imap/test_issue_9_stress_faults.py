"""Issue 9: the faults the many-session load (tests/integration/test_imap_stress.py) found, as transcripts of
two sessions (two Clients) on one real store."""

from __future__ import annotations

import pytest

from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.test_issue_9_sync import client, deliver, uidvalidity


def test_issue_9_store_answers_carry_uid_under_condstore(store: SQLiteStore) -> None:
    """RFC 7162 §3.2.4 (binding on a server offering QRESYNC): once CONDSTORE is in effect every untagged
    FETCH carries UID and MODSEQ, those a STORE by sequence number causes included."""
    deliver(store)
    deliver(store)
    c = client(store, rev2=True)
    c.command("e ENABLE CONDSTORE")
    c.select()
    assert c.command("a STORE 1 +FLAGS (\\Seen)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (4))\r\n",
        b"a OK STORE completed\r\n",
    ]
    # A FETCH that sets \Seen by itself reports the change with UID and MODSEQ too.
    assert c.command("b FETCH 2 BODY[HEADER.FIELDS (X-NONE)]") == [
        b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (X-NONE)] {2}\r\n",
        b"\r\n",
        b" FLAGS (\\Seen) MODSEQ (5))\r\n",
        b"b OK FETCH completed\r\n",
    ]
    # Without CONDSTORE, STORE answers as before.
    plain = client(store, rev2=True)
    plain.select()
    assert plain.command("c STORE 1 -FLAGS (\\Seen)") == [b"* 1 FETCH (FLAGS ())\r\n", b"c OK STORE completed\r\n"]


def test_issue_9_store_silent_does_not_hide_another_sessions_change(store: SQLiteStore) -> None:
    """B sets $X on message 1; A, not told yet, sets \\Seen on it with .SILENT. .SILENT spares A only the
    echo of its own change (RFC 9051 §6.4.6): A must still hear of $X, here or at the next NOOP."""
    deliver(store)
    a, b = client(store, rev2=True), client(store, rev2=True)
    a.select()
    b.select()
    b.command("b1 STORE 1 +FLAGS ($X)")
    heard = a.command("a1 STORE 1 +FLAGS.SILENT (\\Seen)") + a.command("a2 NOOP")
    assert [line for line in heard if b"FETCH" in line] == [b"* 1 FETCH (UID 1 FLAGS ($X \\Seen))\r\n"]
    # A .SILENT STORE on a message nobody else changed stays silent, in the STORE and at the next NOOP.
    assert a.command("a3 STORE 1 +FLAGS.SILENT (\\Flagged)") == [b"a3 OK STORE completed\r\n"]
    assert a.command("a4 NOOP") == [b"a4 OK NOOP completed\r\n"]


@pytest.mark.parametrize("verb", ["COPY", "MOVE", "UID COPY", "UID MOVE"])
def test_issue_9_copy_or_move_of_a_message_expunged_elsewhere_reports_the_expunge(store: SQLiteStore,
                                                                                   verb: str) -> None:  # fmt: skip
    """A expunges message 1; B, not told yet, copies or moves messages 1 and 2. As Dovecot 2.3 does (RFC
    2180 §4.4.1): nothing is copied, the pending EXPUNGE comes before a tagged NO [EXPUNGEISSUED]; the
    client can then try again with what is left."""
    deliver(store)
    deliver(store)
    a, b = client(store, rev2=True), client(store, rev2=True)
    a.select()
    b.select()
    a.command("a1 STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.command("a2 EXPUNGE")
    assert b.command(f"b1 {verb} 1:2 Archive") == [
        b"* 1 EXPUNGE\r\n",
        b"b1 NO [EXPUNGEISSUED] Some of the requested messages no longer exist\r\n",
    ]
    archive = store.mail.get_mailbox(1, "Archive")
    assert archive is not None and store.mail.mailbox_status(archive.id).messages == 0
    what = "2" if verb.startswith("UID") else "1"  # what is left: UID 2, now message 1
    copyuid = b"COPYUID %d 2 1" % uidvalidity(store, "Archive")
    if verb.endswith("COPY"):
        assert b.command(f"b2 {verb} {what} Archive") == [b"b2 OK [%s] %s completed\r\n" % (copyuid, verb.encode())]
    else:
        assert b.command(f"b2 {verb} {what} Archive") == [
            b"* OK [%s] Moved\r\n" % copyuid,
            b"* 1 EXPUNGE\r\n",
            b"b2 OK %s completed\r\n" % verb.encode(),
        ]


def test_issue_9_store_on_a_message_expunged_elsewhere_changes_this_sessions_view(store: SQLiteStore) -> None:
    """The load's "owned keyword lost": B cleared a keyword on a message A had expunged; the STORE was
    skipped, and B's next FETCH showed the keyword back. As Dovecot 2.3 does, the STORE now changes the
    message in B's view (RFC 2180 §4.2.1 lets it succeed) and FETCH shows that until B hears of the expunge;
    under CONDSTORE its MODSEQ moves on with each change."""
    deliver(store)
    deliver(store)
    a, b = client(store, rev2=True), client(store, rev2=True)
    a.select()
    b.command("e ENABLE CONDSTORE")
    b.select()
    b.command("b0 STORE 1 +FLAGS.SILENT ($Mine)")  # MODSEQ 4
    a.command("a1 STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.command("a2 EXPUNGE")
    assert b.command("b1 STORE 1 -FLAGS ($Mine)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Deleted) MODSEQ (6))\r\n",
        b"b1 OK STORE completed\r\n",
    ]
    assert b.command("b2 STORE 1 +FLAGS.SILENT (\\Seen)") == [b"b2 OK STORE completed\r\n"]
    assert b.command("b3 FETCH 1 (FLAGS MODSEQ)") == [
        b"* 1 FETCH (FLAGS (\\Deleted \\Seen) MODSEQ (7))\r\n",
        b"b3 OK FETCH completed\r\n",
    ]
    assert b.command("b4 STORE 1 (UNCHANGEDSINCE 6) +FLAGS ($Late)") == [b"b4 OK [MODIFIED 1] Some messages "
                                                                         b"were modified meanwhile\r\n"]  # fmt: skip
    # A UID STORE may report the expunge at once: the change shows, then the message goes.
    assert b.command("b5 UID STORE 1 +FLAGS (\\Flagged)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Flagged \\Seen) MODSEQ (8))\r\n",
        b"* 1 EXPUNGE\r\n",
        b"b5 OK UID STORE completed\r\n",
    ]
    assert b.command("b6 FETCH 1 (UID FLAGS)") == [b"* 1 FETCH (UID 2 FLAGS ())\r\n", b"b6 OK FETCH completed\r\n"]
