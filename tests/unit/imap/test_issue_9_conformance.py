"""Issue 9: differences from Dovecot 2.3 that bench/imap_conformance.py found, each where the RFC (or, where
it leaves a choice, Dovecot) says Kartero answered wrong; byte transcripts over a real store."""

from __future__ import annotations

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client
from tests.unit.mime import corpus

WHEN = 1795687200  # 2026-11-26 10:00:00 UTC


def deliver(store: SQLiteStore, data: bytes = corpus.PLAIN) -> None:
    target = DeliveryTarget(1, "INBOX", frozenset())
    store.mail.deliver(Delivery(new_message_id(), data, (target,), WHEN)).result(10)


def client(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    return c


# -- CLOSED ---------------------------------------------------------------------------------------------


def test_issue_9_select_while_selected_sends_closed_without_qresync(store: SQLiteStore) -> None:
    # RFC 9051 §6.3.2 and RFC 7162 §3.2.11: a SELECT or EXAMINE that closes the selected mailbox sends
    # "* OK [CLOSED]" first, so the client knows where the old mailbox's untagged responses end; Dovecot
    # sends it whether or not QRESYNC was enabled, and a client that does not know the code ignores it.
    deliver(store)
    c = client(store)
    c.select()
    lines = c.command("a EXAMINE INBOX")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert lines[-1] == b"a OK [READ-ONLY] EXAMINE completed\r\n"
    assert c.command("b SELECT nosuch") == [b"* OK [CLOSED] Previous mailbox closed\r\n",
                                            b"b NO [NONEXISTENT] No such mailbox\r\n"]  # fmt: skip
    # nothing is selected now: no CLOSED
    assert c.command("c SELECT nosuch") == [b"c NO [NONEXISTENT] No such mailbox\r\n"]
    assert c.command("d SELECT a[b") == [b"d NO [NONEXISTENT] No such mailbox\r\n"]
    c.select()
    assert c.command("e SELECT a[b")[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"


# -- body-fld-lines ---------------------------------------------------------------------------------------

MULTIPART = (b"From: a@example.org\r\nSubject: lines\r\nMIME-Version: 1.0\r\n"
             b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
             b"--b\r\nContent-Type: text/plain\r\n\r\none line, its CRLF is the boundary's\r\n"
             b"--b\r\nContent-Type: text/plain\r\n\r\ntwo\r\nlines\r\n\r\n--b--\r\n")  # fmt: skip


def test_issue_9_body_lines_count_line_ends_as_dovecot_does(store: SQLiteStore) -> None:
    # body-fld-lines (RFC 9051 §7.5.2) is the part's "size in text lines"; the CRLF before a boundary belongs
    # to the boundary (RFC 2046 §5.1.1), so a part whose text has no line end of its own holds 0 lines, as
    # Dovecot counts them (LFs in the body), and "two\r\nlines\r\n" holds 2. The first was 1.
    deliver(store, MULTIPART)
    c = client(store)
    c.select()
    assert c.command("a FETCH 1 BODY") == [
        b'* 1 FETCH (BODY (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 36 0)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 2) "mixed"))\r\n',
        b"a OK FETCH completed\r\n",
    ]


# -- RFC 2231 parameter continuations --------------------------------------------------------------------

CONTINUED = (b"From: a@example.org\r\nSubject: 2231\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: application/pdf; name*=utf-8''caf%C3%A9.pdf\r\n"
             b'Content-Disposition: attachment; filename*0="long"; filename*1="name.pdf"; size=3\r\n'
             b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n")  # fmt: skip


def test_issue_9_bodystructure_joins_rfc_2231_continuations(store: SQLiteStore) -> None:
    # RFC 2231 §3: filename*0 and filename*1 are two pieces of one filename; Dovecot sends them joined, so a
    # client that reads "filename" from BODYSTRUCTURE finds it. An extended value (name*) stays as sent.
    deliver(store, CONTINUED)
    c = client(store)
    c.select()
    assert c.command("a FETCH 1 BODYSTRUCTURE") == [
        b"* 1 FETCH (BODYSTRUCTURE (\"application\" \"pdf\" (\"name*\" \"utf-8''caf%C3%A9.pdf\") NIL NIL \"base64\" 14"
        b' NIL ("attachment" ("filename" "longname.pdf" "size" "3")) NIL NIL))\r\n',
        b"a OK FETCH completed\r\n",
    ]


def test_issue_9_continuations_extended_gaps_and_repeats() -> None:
    from kartero.mime.imapform import join_continuations

    # an extended first piece makes the joined value extended; a plain piece after it is %-encoded
    assert join_continuations(((b"title*0*", b"us-ascii'en'This%20is"), (b"title*1", b" it; ok"))) == [
        (b"title*", b"us-ascii'en'This%20is%20it%3B%20ok")
    ]
    # a gap, a leading zero or a name without a base stays as sent
    kept = ((b"a*0", b"1"), (b"a*2", b"3"), (b"b*00", b"x"), (b"*0", b"y"), (b"c*", b"z"))
    assert join_continuations(kept) == list(kept)
    # a repeated piece keeps its first value, as a repeated parameter does
    assert join_continuations(((b"f*1", b"B"), (b"F*0", b"A"), (b"f*1", b"C"))) == [(b"f", b"AB")]


# -- INTERNALDATE ---------------------------------------------------------------------------------------


def test_issue_9_internaldate_day_has_two_digits(store: SQLiteStore) -> None:
    # date-day-fixed (RFC 9051 §9) allows " 1" and "01"; Dovecot sends "01", and parsers that split on spaces
    # or read "%d" without a leading blank (several client libraries do) only read that one.
    c = client(store)
    assert c.command('a APPEND INBOX " 1-Jan-2020 00:00:00 +0000" {6+}\r\nA: b\r\n')[-1].startswith(b"a OK")
    c.select()
    assert c.command("b FETCH 1 INTERNALDATE") == [b'* 1 FETCH (INTERNALDATE "01-Jan-2020 00:00:00 +0000")\r\n',
                                                   b"b OK FETCH completed\r\n"]  # fmt: skip


# -- the default transfer encoding ------------------------------------------------------------------------


def test_issue_9_default_transfer_encoding_is_written_as_dovecot_writes_it(store: SQLiteStore) -> None:
    # A part without Content-Transfer-Encoding is 7bit (RFC 2045 §6.1); Dovecot writes the default "7bit",
    # the way the header itself is usually written; one given in the header is sent as written.
    deliver(store, b"From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n")
    deliver(store, b"From: a@example.org\r\nContent-Transfer-Encoding: 8BIT\r\n\r\nbody\r\n")
    c = client(store)
    c.select()
    assert c.command("a FETCH 1:2 BODY") == [
        b'* 1 FETCH (BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1))\r\n',
        b'* 2 FETCH (BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "8BIT" 6 1))\r\n',
        b"a OK FETCH completed\r\n",
    ]


# -- RECENT after expunges -------------------------------------------------------------------------------


def test_issue_9_rev1_expunge_of_recent_messages_sends_recent(store: SQLiteStore) -> None:
    # RFC 3501 §7.3.2: RECENT is sent when the mailbox's size changes; after expunging recent messages a rev1
    # client is told the new count (Dovecot sends it), with EXPUNGE and with VANISHED alike (test_commands). Expunging
    # a message that is not recent in this session changes nothing and sends none.
    for _ in range(3):
        deliver(store)
    c = client(store)
    assert b"* 3 RECENT\r\n" in c.select()
    assert c.command("a STORE 1 +FLAGS.SILENT (\\Deleted)") == [b"a OK STORE completed\r\n"]
    assert c.command("b EXPUNGE") == [b"* 1 EXPUNGE\r\n", b"* 2 RECENT\r\n", b"b OK EXPUNGE completed\r\n"]
    other = client(store)  # sees no message as recent: this session has claimed them
    assert b"* 0 RECENT\r\n" in other.select()
    assert other.command("c UID EXPUNGE 1:*") == [b"c OK EXPUNGE completed\r\n"]  # nothing \Deleted
    assert other.command("d STORE 1 +FLAGS.SILENT (\\Deleted)") == [b"d OK STORE completed\r\n"]
    assert other.command("e EXPUNGE") == [b"* 1 EXPUNGE\r\n", b"e OK EXPUNGE completed\r\n"]
    # the first session hears of that expunge, of one of its recent messages, at its next command
    assert c.command("g NOOP") == [b"* 1 EXPUNGE\r\n", b"* 1 RECENT\r\n", b"g OK NOOP completed\r\n"]


# -- body-fld-lang ------------------------------------------------------------------------------------------


def test_issue_9_one_content_language_is_sent_as_a_list(store: SQLiteStore) -> None:
    # body-fld-lang is nstring or a list of strings (RFC 9051 §9); Dovecot always sends the list, so a client
    # reads one form whether the part names one language or several.
    deliver(store, b"From: a@example.org\r\nContent-Language: en\r\n\r\nbody\r\n")
    c = client(store)
    c.select()
    assert c.command("a FETCH 1 BODYSTRUCTURE") == [
        b'* 1 FETCH (BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL ("en") NIL))\r\n',
        b"a OK FETCH completed\r\n",
    ]
