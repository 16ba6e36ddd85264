"""IMAP commands over a real store: exact responses for SELECT, FETCH, SEARCH, STORE, COPY/MOVE, EXPUNGE,
CONDSTORE/QRESYNC, LIST, STATUS, APPEND, RENAME, and two sessions seeing each other's changes."""

from __future__ import annotations

import re
from pathlib import Path

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client
from tests.unit.mime import corpus

# 2026-11-26 10:00:00 UTC
WHEN = 1795687200


def deliver(store: SQLiteStore, data: bytes, mailbox: str = "INBOX", flags: frozenset[str] = frozenset()) -> None:
    account = store.accounts.get_account("bob@example.test")
    assert account is not None
    target = DeliveryTarget(account.id, mailbox, flags)
    store.mail.deliver(Delivery(new_message_id(), data, (target,), WHEN)).result(10)


def client(store: SQLiteStore) -> Client:
    c = Client(store=store)
    c.login()
    return c


def text(lines: list[bytes]) -> str:
    return b"".join(lines).decode("utf-8", "replace")


def test_select_responses(store: SQLiteStore) -> None:
    deliver(store, corpus.PLAIN, flags=frozenset({"\\Seen", "$Label1"}))
    deliver(store, corpus.ALTERNATIVE)
    c = client(store)
    lines = c.select()
    uidvalidity = store.mail.get_mailbox(1, "INBOX").uidvalidity  # type: ignore[union-attr]
    assert lines == [
        b"* 2 EXISTS\r\n",
        b"* 2 RECENT\r\n",  # IMAP4rev1: this session is the first to see them (RFC 3501 §2.3.2)
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] Flags permitted\r\n",
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % uidvalidity,
        b"* OK [UIDNEXT 3] Predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ 3] Highest\r\n",
        b"* OK [MAILBOXID (%s)] Ok\r\n" % store.mail.get_mailbox(1, "INBOX").objectid.encode(),  # type: ignore[union-attr]
        b"* OK [UNSEEN 2] First unseen\r\n",
        b"s1 OK [READ-WRITE] SELECT completed\r\n",
    ]
    examine = c.command("e1 EXAMINE INBOX")
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n" in examine
    assert examine[-1] == b"e1 OK [READ-ONLY] EXAMINE completed\r\n"
    assert c.command("e2 STORE 1 +FLAGS (\\Flagged)") == [b"e2 NO [READ-ONLY] Mailbox is read-only\r\n"]
    assert c.command("e3 SELECT Nonexistent") == [b"* OK [CLOSED] Previous mailbox closed\r\n",
                                                  b"e3 NO [NONEXISTENT] No such mailbox\r\n"]  # fmt: skip
    assert c.command("e4 FETCH 1 FLAGS") == [b"e4 BAD FETCH not allowed now\r\n"]  # a failed SELECT deselects


def test_fetch_metadata_envelope_and_bodystructure(store: SQLiteStore) -> None:
    for message in (corpus.PLAIN, corpus.MIXED, corpus.FORWARDED):
        deliver(store, message)
    c = client(store)
    c.select()
    lines = c.command("f1 FETCH 1:3 (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert lines[0] == (
        b'* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE %d INTERNALDATE "26-Nov-2026 10:00:00 +0000" ENVELOPE '
        b'("Mon, 02 Nov 2026 09:30:00 +0100" "Quarterly report" (("Alice Example" NIL "alice" "example.org")) '
        b'(("Alice Example" NIL "alice" "example.org")) (("Alice Example" NIL "alice" "example.org")) '
        b'(("Bob" NIL "bob" "example.test")(NIL NIL "carol" "example.test")) '
        b'(("Team, Dev" NIL "dev" "example.test")) NIL NIL "<plain-1@example.org>"))\r\n' % len(corpus.PLAIN)
    )
    assert lines[-1] == b"f1 OK FETCH completed\r\n"
    bs = c.command("f2 FETCH 2 BODYSTRUCTURE")[0]
    assert bs == (
        b'* 2 FETCH (BODYSTRUCTURE ((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 33 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 40 0 NIL NIL NIL NIL) "alternative" '
        b'("boundary" "inner alt") NIL NIL NIL)("application" "pdf" ("name" "invoice 2026-11.pdf") '
        b'"<inv@example.test>" NIL "base64" 372 NIL ("attachment" ("filename" "invoice 2026-11.pdf" "size" "275")) '
        b'NIL NIL)("image" "png" NIL NIL NIL "base64" 12 NIL ("inline" NIL) ("en" "de") NIL) "mixed" '
        b'("boundary" "mixed") NIL NIL NIL))\r\n'
    )
    body = c.command("f3 FETCH 3 BODY")[0]
    assert body.startswith(b'* 3 FETCH (BODY (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0)("message"')


def test_fetch_body_sections(store: SQLiteStore) -> None:
    deliver(store, corpus.MIXED)
    deliver(store, corpus.FORWARDED)
    c = client(store)
    c.select()

    def section(seq: int, spec: str) -> bytes:
        out = c.send(f"x FETCH {seq} (BODY.PEEK[{spec}])\r\n".encode())
        m = re.match(rb"\* \d+ FETCH \(BODY\[[^\]]*\](?:<\d+>)? \{(\d+)\}\r\n", out)
        assert m, out[:200]
        return out[m.end() : m.end() + int(m.group(1))]

    assert section(1, "") == corpus.MIXED
    assert section(1, "1.1") == b"Please find the invoice attached."
    assert section(1, "1.2.MIME") == b"Content-Type: text/html; charset=us-ascii\r\n\r\n"
    assert section(1, "2") == corpus.PDF_B64[:-2]
    assert section(1, "HEADER.FIELDS (subject FROM)") == (
        b"From: Carol <carol@example.test>\r\nSubject: Invoice attached\r\n\r\n"
    )
    assert section(1, "HEADER.FIELDS.NOT (From To Date MIME-Version Content-Type)") == (
        b"Subject: Invoice attached\r\n\r\n"
    )
    inner = corpus.ALTERNATIVE[:-2]  # the CRLF before the next delimiter belongs to the delimiter
    assert section(2, "2") == inner
    assert section(2, "2.HEADER") == inner[: inner.index(b"\r\n\r\n") + 4]
    assert section(2, "2.TEXT") == inner[inner.index(b"\r\n\r\n") + 4 :]
    assert section(2, "2.1").startswith(b"Gr=C3=BC=C3=9Fe")
    assert section(2, "9") == b""
    partial = c.send(b"p FETCH 1 (BODY.PEEK[]<10.20>)\r\n")
    assert partial.startswith(b"* 1 FETCH (BODY[]<10> {20}\r\n" + corpus.MIXED[10:30] + b")\r\n")
    binary = c.send(b"b FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])\r\n")
    assert binary.startswith(b"* 1 FETCH (BINARY[2] ~{%d}\r\n" % len(corpus.PDF) + corpus.PDF)
    assert b"BINARY.SIZE[2] %d)" % len(corpus.PDF) in binary
    # None of these set \Seen (all PEEK); a plain BODY[] does, and says so.
    assert c.command("s FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"
    assert c.send(b"t FETCH 1 BODY[TEXT]\r\n").split(b"\r\n")[-3].endswith(b" FLAGS (\\Recent \\Seen))")


def test_search_keys_over_the_corpus(store: SQLiteStore) -> None:
    for message in (corpus.PLAIN, corpus.ALTERNATIVE, corpus.MIXED, corpus.FORWARDED, corpus.LATIN1):
        deliver(store, message)
    c = client(store)
    c.select()
    c.command("a STORE 2 +FLAGS (\\Flagged)")

    def search(criteria: str) -> str:
        lines = c.command(f"s SEARCH {criteria}")
        assert lines[-1] == b"s OK SEARCH completed\r\n", lines
        return lines[0].decode().strip()

    assert search("ALL") == "* SEARCH 1 2 3 4 5"
    assert search('SUBJECT "quarterly"') == "* SEARCH 1 4"
    assert search("SUBJECT grüße") == "* SEARCH 2"  # decoded encoded-word, case-folded
    assert search('FROM "müller"') == "* SEARCH 2"
    assert search("TO carol") == "* SEARCH 1"
    assert search("CC dev") == "* SEARCH 1"
    assert search("BODY straßenbahn") == "* SEARCH 2 4"  # quoted-printable UTF-8 decoded, also when forwarded
    assert search("BODY crème") == "* SEARCH 5"  # windows-1252 body decoded
    assert search('TEXT "invoice attached"') == "* SEARCH 3"
    assert search("BODY köln") == "* SEARCH 2 4"  # the html part too
    assert search("FLAGGED") == "* SEARCH 2"
    assert search("NOT FLAGGED UNSEEN") == "* SEARCH 1 3 4 5"
    assert search("OR FLAGGED SUBJECT invoice") == "* SEARCH 2 3"
    assert search("HEADER Content-Transfer-Encoding 8bit") == "* SEARCH 5"
    assert search("HEADER Message-ID plain-1") == "* SEARCH 1"
    assert search(f"LARGER {len(corpus.ALTERNATIVE)}") == "* SEARCH 3 4"
    assert search(f"SMALLER {len(corpus.PLAIN) + 1}") == "* SEARCH 1 5"
    assert search("SENTBEFORE 4-Nov-2026") == "* SEARCH 1 2"
    assert search("SENTON 4-Nov-2026") == "* SEARCH 3"
    assert search("ON 26-Nov-2026") == "* SEARCH 1 2 3 4 5"
    assert search("BEFORE 26-Nov-2026") == "* SEARCH"
    assert search("2:4 NOT 3") == "* SEARCH 2 4"
    assert search("UID 4:*") == "* SEARCH 4 5"
    assert search("NEW") == "* SEARCH 1 2 3 4 5"  # \Recent (this IMAP4rev1 session saw them first), unseen
    assert search("RECENT SUBJECT report") == "* SEARCH 1 4"
    assert search("OLD") == "* SEARCH"
    assert c.command("u UID SEARCH SUBJECT report")[0] == b"* SEARCH 1 4\r\n"
    esearch = c.command("e SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert c.command("e2 UID SEARCH RETURN (COUNT ALL) FLAGGED")[0] == b'* ESEARCH (TAG "e2") UID COUNT 1 ALL 2\r\n'
    assert esearch[0] == b'* ESEARCH (TAG "e") MIN 1 MAX 5 COUNT 5 ALL 1:5\r\n'
    assert c.command("c SEARCH CHARSET KOI8-R ALL") == [b"c NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"]
    # SEARCHRES: save, then use $.
    assert c.command("v SEARCH RETURN (SAVE) SUBJECT report") == [b"v OK SEARCH completed\r\n"]
    assert c.command("w FETCH $ (UID)")[:2] == [b"* 1 FETCH (UID 1)\r\n", b"* 4 FETCH (UID 4)\r\n"]


def test_sort(store: SQLiteStore) -> None:
    for message in (corpus.MIXED, corpus.PLAIN, corpus.LATIN1, corpus.ALTERNATIVE):
        deliver(store, message)
    c = client(store)
    c.select()
    assert c.command("a SORT (SUBJECT) UTF-8 ALL")[0] == b"* SORT 3 4 1 2\r\n"  # Café, Grüße, Invoice, Quarterly
    assert c.command("b SORT (REVERSE SIZE) UTF-8 ALL")[0] == b"* SORT 1 4 2 3\r\n"
    assert c.command("c SORT (DATE) UTF-8 NOT SUBJECT invoice")[0] == b"* SORT 2 4 3\r\n"
    assert c.command("d UID SORT (FROM) UTF-8 ALL")[0] == b"* SORT 2 1 3 4\r\n"


def test_store_copy_move_expunge_with_uidplus(store: SQLiteStore) -> None:
    for _ in range(4):
        deliver(store, corpus.PLAIN)
    c = client(store)
    c.select()
    assert c.command("a STORE 1:2 +FLAGS (\\Deleted)") == [
        b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Deleted \\Recent))\r\n",
        b"a OK STORE completed\r\n",
    ]
    assert c.command("b UID STORE 3 FLAGS.SILENT ($Work \\Seen)") == [  # a new keyword: FLAGS even when silent
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] Flags permitted\r\n",
        b"b OK UID STORE completed\r\n",
    ]
    assert c.command("c FETCH 3 FLAGS")[0] == b"* 3 FETCH (FLAGS ($Work \\Recent \\Seen))\r\n"
    archive = store.mail.get_mailbox(1, "Archive")
    assert archive is not None
    assert c.command("d COPY 3:4 Archive") == [b"d OK [COPYUID %d 3:4 1:2] COPY completed\r\n" % archive.uidvalidity]
    assert c.command("e COPY 1 Nowhere") == [b"e NO [TRYCREATE] No such mailbox\r\n"]
    assert c.command("f EXPUNGE") == [b"* 2 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n", b"* 2 RECENT\r\n",
                                      b"f OK EXPUNGE completed\r\n"]  # fmt: skip
    assert c.command("g UID MOVE 4 Archive") == [
        b"* OK [COPYUID %d 4 3] Moved\r\n" % archive.uidvalidity,
        b"* 2 EXPUNGE\r\n",
        b"* 1 RECENT\r\n",
        b"g OK UID MOVE completed\r\n",
    ]
    c.command("h SELECT Archive")
    assert c.command("i FETCH 1:* (UID FLAGS)") == [
        b"* 1 FETCH (UID 1 FLAGS ($Work \\Recent \\Seen))\r\n",  # copies are \Recent (RFC 3501 §6.4.7)
        b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n",
        b"* 3 FETCH (UID 3 FLAGS (\\Recent))\r\n",
        b"i OK FETCH completed\r\n",
    ]
    assert c.command("j FETCH 9 FLAGS") == [b"j BAD Message sequence number out of range\r\n"]
    assert c.command("k STORE 1 +FLAGS (\\Deleted)")[-1] == b"k OK STORE completed\r\n"
    assert c.command("l UID EXPUNGE 2:3") == [b"l OK EXPUNGE completed\r\n"]  # 1 is \Deleted but not named
    assert c.command("m CLOSE") == [b"m OK CLOSE completed\r\n"]  # expunges silently
    assert store.mail.mailbox_status(archive.id).messages == 2


def test_two_sessions_see_each_others_changes(store: SQLiteStore) -> None:
    deliver(store, corpus.PLAIN)
    deliver(store, corpus.PLAIN)
    one, two = client(store), client(store)
    one.select()
    two.select()
    assert one.command("a STORE 1 +FLAGS (\\Flagged)")[-1] == b"a OK STORE completed\r\n"
    deliver(store, corpus.ALTERNATIVE)
    # The other session hears of the flag and the new message at its next command...
    assert two.command("b NOOP") == [
        b"* 3 EXISTS\r\n",
        b"* 1 RECENT\r\n",  # the first session to hear of message 3 (messages 1 and 2 were one's)
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n",
        b"b OK NOOP completed\r\n",
    ]
    # ...and the session that set the flag is not told again.
    assert one.command("c NOOP") == [b"* 3 EXISTS\r\n", b"* 2 RECENT\r\n", b"c OK NOOP completed\r\n"]
    # An expunge elsewhere is not reported during FETCH (sequence numbers must hold), only after.
    one.command("d STORE 2 +FLAGS (\\Deleted)")
    one.command("e EXPUNGE")
    fetched = two.command("f FETCH 1:3 UID")  # the expunged message as it was (RFC 2180 §4.1.1)
    assert fetched == [
        b"* 1 FETCH (UID 1)\r\n",
        b"* 2 FETCH (UID 2)\r\n",
        b"* 3 FETCH (UID 3)\r\n",
        b"f OK FETCH completed\r\n",
    ]
    assert two.command("g NOOP")[0] == b"* 2 EXPUNGE\r\n"
    assert two.command("h FETCH 2 UID")[0] == b"* 2 FETCH (UID 3)\r\n"


def test_condstore_and_qresync(store: SQLiteStore) -> None:
    for _ in range(3):
        deliver(store, corpus.PLAIN)
    c = client(store)
    assert c.command("a ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    c.select()
    uidvalidity = store.mail.get_mailbox(1, "INBOX").uidvalidity  # type: ignore[union-attr]
    assert c.command("b STORE 2 +FLAGS (\\Seen)")[0] == b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen) MODSEQ (5))\r\n"
    assert c.command("c FETCH 1:* (FLAGS) (CHANGEDSINCE 4)") == [
        b"* 2 FETCH (FLAGS (\\Recent \\Seen) MODSEQ (5))\r\n",
        b"c OK FETCH completed\r\n",
    ]
    assert c.command("d STORE 1:3 (UNCHANGEDSINCE 4) +FLAGS.SILENT (\\Flagged)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (6))\r\n",
        b"* 3 FETCH (UID 3 FLAGS (\\Flagged \\Recent) MODSEQ (6))\r\n",
        b"d OK [MODIFIED 2] Some messages were modified meanwhile\r\n",
    ]
    c.command("e STORE 3 +FLAGS (\\Deleted)")
    assert c.command("f EXPUNGE") == [b"* VANISHED 3\r\n", b"* 2 RECENT\r\n",
                                      b"f OK [HIGHESTMODSEQ 8] EXPUNGE completed\r\n"]  # fmt: skip
    assert c.command("g UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)") == [
        b"* VANISHED (EARLIER) 3\r\n",
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (6))\r\n",
        b"g OK UID FETCH completed\r\n",
    ]
    assert c.command("h SEARCH MODSEQ 6") == [b"* SEARCH 1 (MODSEQ 6)\r\n", b"h OK SEARCH completed\r\n"]
    # A reconnecting client resynchronises from the MODSEQ it last saw.
    fresh = client(store)
    fresh.command("i ENABLE QRESYNC")
    lines = fresh.command(f"j SELECT INBOX (QRESYNC ({uidvalidity} 4))")
    assert b"* VANISHED (EARLIER) 3\r\n" in lines
    assert b"* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (6))\r\n" in lines
    assert b"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (5))\r\n" in lines
    assert lines[-1] == b"j OK [READ-WRITE] SELECT completed\r\n"


def test_list_variants_and_status(store: SQLiteStore) -> None:
    c = client(store)
    created = c.command('a CREATE "Work/Projects/2026"')[-1]
    assert re.fullmatch(rb"a OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n", created)
    assert c.command("b CREATE Work") == [b"b NO [ALREADYEXISTS] Mailbox exists\r\n"]
    assert c.command("c CREATE Spam (USE (\\Junk))")[0].startswith(b"c OK [MAILBOXID (")
    assert c.command("d CREATE Bad (USE (\\Bogus))") == [b"d NO [USEATTR] Unsupported special-use attribute\r\n"]
    assert c.command('e LIST "" "Work/%"') == [
        b'* LIST (\\HasChildren) "/" "Work/Projects"\r\n',
        b"e OK LIST completed\r\n",
    ]
    assert c.command('f LIST "" ""') == [b'* LIST (\\Noselect) "/" ""\r\n', b"f OK LIST completed\r\n"]
    assert c.command('g LIST (SPECIAL-USE) "" "*"') == [
        b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"\r\n',
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Spam"\r\n',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n',
        b"g OK LIST completed\r\n",
    ]
    deliver(store, corpus.PLAIN)
    assert c.command('h LIST "" "INBOX" RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN SIZE))') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"\r\n',
        b'* STATUS "INBOX" (MESSAGES 1 UNSEEN 1 SIZE %d)\r\n' % len(corpus.PLAIN),
        b"h OK LIST completed\r\n",
    ]
    c.command("i UNSUBSCRIBE Trash")
    c.command("j SUBSCRIBE Work/Projects/2026")
    assert c.command('k LSUB "" "*"') == [
        b'* LSUB () "/" "INBOX"\r\n',
        b'* LSUB () "/" "Archive"\r\n',
        b'* LSUB () "/" "Drafts"\r\n',
        b'* LSUB () "/" "Junk"\r\n',
        b'* LSUB () "/" "Sent"\r\n',
        b'* LSUB () "/" "Work/Projects/2026"\r\n',
        b"k OK LSUB completed\r\n",
    ]
    assert c.command("l STATUS Nowhere (MESSAGES)") == [b"l NO [NONEXISTENT] No such mailbox\r\n"]
    assert c.command('m CREATE "Entw&APw-rfe"')[-1].endswith(b"] CREATE completed\r\n")
    assert c.command('n LIST "" "Entw*"')[0] == b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"\r\n'
    c.command("o ENABLE UTF8=ACCEPT")
    assert c.command('p LIST "" "Entw*"')[0] == '* LIST (\\HasNoChildren) "/" "Entwürfe"\r\n'.encode()


def test_append_rename_and_delete(store: SQLiteStore) -> None:
    c = client(store)
    message = b"Subject: draft\r\n\r\nnot sent yet\r\n"
    out = c.send(b'a APPEND Drafts (\\Draft) "26-Nov-2026 11:00:00 +0100" {%d}\r\n' % len(message))
    assert out == b"+ Ready for literal data\r\n"
    drafts = store.mail.get_mailbox(1, "Drafts")
    assert drafts is not None
    assert c.send(message + b"\r\n") == b"a OK [APPENDUID %d 1] APPEND completed\r\n" % drafts.uidvalidity
    c.select("Drafts")
    assert c.command("b FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[TEXT])") == [
        b'* 1 FETCH (FLAGS (\\Draft \\Recent) INTERNALDATE "26-Nov-2026 10:00:00 +0000" BODY[TEXT] {14}\r\n',
        b"not sent yet\r\n",
        b")\r\n",
        b"b OK FETCH completed\r\n",
    ]
    assert c.command("c APPEND Nowhere {1+}\r\nx")[-1] == b"c NO [TRYCREATE] No such mailbox\r\n"
    deliver(store, corpus.PLAIN)
    # Renaming INBOX moves its messages to the new mailbox; INBOX stays, empty.
    assert c.command("d RENAME INBOX Old-Inbox") == [b"d OK RENAME completed\r\n"]
    assert c.command("e STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)\r\n'
    assert c.command('f STATUS "Old-Inbox" (MESSAGES)')[0] == b'* STATUS "Old-Inbox" (MESSAGES 1)\r\n'
    c.command("g CREATE Projects/A")
    assert c.command("h RENAME Projects Clients")[-1] == b"h OK RENAME completed\r\n"
    assert c.command('i LIST "" "Clients/*"')[0] == b'* LIST (\\HasNoChildren) "/" "Clients/A"\r\n'
    assert c.command("j DELETE INBOX") == [b"j NO [CANNOT] INBOX cannot be deleted\r\n"]
    assert c.command("k DELETE Drafts") == [b"* OK [CLOSED] Selected mailbox deleted\r\n", b"k OK DELETE completed\r\n"]
    assert c.command("l FETCH 1 FLAGS") == [b"l BAD FETCH not allowed now\r\n"]


def test_append_limit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.start()
    try:
        c = client(store)
        assert c.command("a APPEND INBOX {200000}") == [b"a NO [TOOBIG] Literal too large (100000 octets allowed)\r\n"]
    finally:
        store.close()


def test_imap4rev2_client_gets_esearch_and_no_recent(store: SQLiteStore) -> None:
    deliver(store, corpus.PLAIN)
    c = client(store)
    assert c.command("a ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    lines = c.select()
    assert not any(b"RECENT" in line or b"[UNSEEN" in line for line in lines)
    assert c.command("b SEARCH ALL") == [b'* ESEARCH (TAG "b") ALL 1\r\n', b"b OK SEARCH completed\r\n"]
    assert c.command("c UID SEARCH NEW") == [b'* ESEARCH (TAG "c") UID\r\n', b"c OK UID SEARCH completed\r\n"]
