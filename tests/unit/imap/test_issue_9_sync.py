"""Issue 9: what sessions on one mailbox are told and when (EXISTS after APPEND/COPY/MOVE, CONDSTORE's
HIGHESTMODSEQ, new keywords announced in FLAGS, expunge races, \\Recent for IMAP4rev1), over a real store;
two Clients on one store are two sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.store.ids import new_message_id
from kartero.store.interface import Delivery, DeliveryTarget
from kartero.store.sqlite import SQLiteStore
from tests.unit.imap.harness import Client
from tests.unit.mime import corpus

WHEN = 1795687200  # 2026-11-26 10:00:00 UTC


def deliver(store: SQLiteStore, data: bytes = corpus.PLAIN, mailbox: str = "INBOX",
            flags: frozenset[str] = frozenset()) -> None:  # fmt: skip
    target = DeliveryTarget(1, mailbox, flags)
    store.mail.deliver(Delivery(new_message_id(), data, (target,), WHEN)).result(10)


def client(store: SQLiteStore, *, rev2: bool = False) -> Client:
    c = Client(store=store)
    c.login()
    if rev2:
        assert c.command("e0 ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    return c


def uidvalidity(store: SQLiteStore, name: str) -> int:
    mailbox = store.mail.get_mailbox(1, name)
    assert mailbox is not None
    return mailbox.uidvalidity


# -- APPEND / COPY / MOVE into the selected mailbox ------------------------------------------------------


def test_issue_9_append_into_selected_mailbox_reports_exists_before_ok(store: SQLiteStore) -> None:
    deliver(store)
    c = client(store, rev2=True)
    c.select()
    message = b"Subject: hi\r\n\r\nbody\r\n"
    lines = c.command(f"a APPEND INBOX {{{len(message)}+}}\r\n{message.decode()}")
    assert lines == [b"* 2 EXISTS\r\n", b"a OK [APPENDUID %d 2] APPEND completed\r\n" % uidvalidity(store, "INBOX")]
    assert c.command("b FETCH 2 UID") == [b"* 2 FETCH (UID 2)\r\n", b"b OK FETCH completed\r\n"]


def test_issue_9_copy_and_move_into_selected_mailbox_report_exists_before_ok(store: SQLiteStore) -> None:
    deliver(store)
    c = client(store, rev2=True)
    c.select()
    v = uidvalidity(store, "INBOX")
    assert c.command("a COPY 1 INBOX") == [b"* 2 EXISTS\r\n", b"a OK [COPYUID %d 1 2] COPY completed\r\n" % v]
    assert c.command("b COPY 2 INBOX") == [b"* 3 EXISTS\r\n", b"b OK [COPYUID %d 2 3] COPY completed\r\n" % v]
    assert c.command("c MOVE 3 INBOX") == [
        b"* OK [COPYUID %d 3 4] Moved\r\n" % v,
        b"* 3 EXPUNGE\r\n",
        b"* 3 EXISTS\r\n",
        b"c OK MOVE completed\r\n",
    ]
    assert c.command("d FETCH 3 UID") == [b"* 3 FETCH (UID 4)\r\n", b"d OK FETCH completed\r\n"]
    assert c.command("e UID MOVE 4 INBOX")[:3] == [
        b"* OK [COPYUID %d 4 5] Moved\r\n" % v,
        b"* 3 EXPUNGE\r\n",
        b"* 3 EXISTS\r\n",
    ]


# -- CONDSTORE --------------------------------------------------------------------------------------------


def test_issue_9_first_condstore_enabling_command_sends_highestmodseq(store: SQLiteStore) -> None:
    deliver(store)
    deliver(store)
    c = client(store, rev2=True)
    c.select()
    # RFC 7162 §3.1: STATUS is about another mailbox; it does not count for the selected one.
    assert c.command("a STATUS Archive (HIGHESTMODSEQ)") == [
        b'* STATUS "Archive" (HIGHESTMODSEQ 1)\r\n',
        b"a OK STATUS completed\r\n",
    ]
    assert c.command("b FETCH 1 MODSEQ") == [
        b"* OK [HIGHESTMODSEQ 3] Highest\r\n",
        b"* 1 FETCH (MODSEQ (2))\r\n",
        b"b OK FETCH completed\r\n",
    ]
    assert c.command("c FETCH 2 MODSEQ") == [b"* 2 FETCH (MODSEQ (3))\r\n", b"c OK FETCH completed\r\n"]
    # A new selection starts again, but SELECT itself reported HIGHESTMODSEQ with CONDSTORE in effect.
    c.select()
    assert c.command("d SEARCH MODSEQ 1") == [
        b'* ESEARCH (TAG "d") ALL 1:2 MODSEQ 3\r\n',
        b"d OK SEARCH completed\r\n",
    ]


@pytest.mark.parametrize(
    "command",
    ["FETCH 1 (FLAGS) (CHANGEDSINCE 1)", "SEARCH MODSEQ 1", "STORE 1 (UNCHANGEDSINCE 9) +FLAGS.SILENT (\\Seen)"],
)
def test_issue_9_each_condstore_enabling_command_announces_highestmodseq(store: SQLiteStore, command: str) -> None:
    deliver(store)
    c = client(store, rev2=True)
    c.select()
    assert c.command(f"a {command}")[0] == b"* OK [HIGHESTMODSEQ 2] Highest\r\n"
    assert not any(b"HIGHESTMODSEQ" in line for line in c.command(f"b {command}"))


def test_issue_9_search_return_min_max_reports_that_messages_modseq(store: SQLiteStore) -> None:
    for _ in range(3):
        deliver(store)
    c = client(store, rev2=True)
    c.select()
    c.command("a STORE 1 +FLAGS (\\Flagged)")  # message 1 now has the highest MODSEQ (5)
    assert c.command("b SEARCH RETURN (MIN) MODSEQ 1") == [
        b"* OK [HIGHESTMODSEQ 5] Highest\r\n",
        b'* ESEARCH (TAG "b") MIN 1 MODSEQ 5\r\n',
        b"b OK SEARCH completed\r\n",
    ]
    assert c.command("c SEARCH RETURN (MAX) MODSEQ 1") == [
        b'* ESEARCH (TAG "c") MAX 3 MODSEQ 4\r\n',
        b"c OK SEARCH completed\r\n",
    ]
    assert c.command("d UID SEARCH RETURN (MIN MAX) MODSEQ 3 UID 2:3") == [
        b'* ESEARCH (TAG "d") UID MIN 2 MAX 3 MODSEQ 4\r\n',
        b"d OK UID SEARCH completed\r\n",
    ]
    assert c.command("e SEARCH RETURN (MAX COUNT) MODSEQ 1") == [
        b'* ESEARCH (TAG "e") MAX 3 COUNT 3 MODSEQ 5\r\n',
        b"e OK SEARCH completed\r\n",
    ]


# -- new keywords -----------------------------------------------------------------------------------------

FLAGS_NEW = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 $New)\r\n"
PERMANENT_NEW = (
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 $New \\*)] Flags permitted\r\n"
)


def test_issue_9_store_of_a_new_keyword_announces_flags_to_every_session_first(store: SQLiteStore) -> None:
    deliver(store, flags=frozenset({"$Label1"}))
    deliver(store)
    one, two, three = client(store, rev2=True), client(store, rev2=True), client(store, rev2=True)
    one.select()
    two.select()
    three.command("x EXAMINE INBOX")
    assert one.command("a STORE 2 +FLAGS ($New)") == [
        FLAGS_NEW,
        PERMANENT_NEW,
        b"* 2 FETCH (FLAGS ($New))\r\n",
        b"a OK STORE completed\r\n",
    ]
    assert one.command("b STORE 1 +FLAGS ($new)") == [  # keywords are case-insensitive: nothing new
        b"* 1 FETCH (FLAGS ($Label1 $new))\r\n",
        b"b OK STORE completed\r\n",
    ]
    # Another session hears of the keyword before any FETCH response that uses it, even its own FETCH.
    assert two.command("c FETCH 2 FLAGS")[:3] == [FLAGS_NEW, PERMANENT_NEW, b"* 2 FETCH (FLAGS ($New))\r\n"]
    assert three.command("d NOOP")[:3] == [
        FLAGS_NEW,
        b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n",
        b"* 1 FETCH (UID 1 FLAGS ($Label1 $new))\r\n",
    ]
    assert b"* FLAGS" not in b"".join(two.command("e NOOP"))


def test_issue_9_new_mail_with_a_new_keyword_announces_flags(store: SQLiteStore) -> None:
    c = client(store, rev2=True)
    c.select()
    deliver(store, flags=frozenset({"$New"}))
    assert c.command("a NOOP") == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New \\*)] Flags permitted\r\n",
        b"* 1 EXISTS\r\n",
        b"a OK NOOP completed\r\n",
    ]


# -- expunge races ----------------------------------------------------------------------------------------


def blob_ids(store: SQLiteStore) -> set[str]:
    return {row[0] for row in store.database.db().execute("SELECT id FROM blobs")}


def settle(store: SQLiteStore) -> None:
    """Wait until the committer has done what was queued before (tombstone releases run there)."""
    deliver(store, mailbox="Archive")


def test_issue_9_fetch_of_a_message_expunged_elsewhere_returns_its_data(store: SQLiteStore) -> None:
    for subject in (b"one", b"two", b"three"):
        deliver(store, b"Subject: " + subject + b"\r\n\r\nbody " + subject + b"\r\n")
    one, two = client(store), client(store)
    one.select()
    two.select()
    one.command("a STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert one.command("b EXPUNGE")[0] == b"* 2 EXPUNGE\r\n"
    # Session two was not told yet: message 2 is still there for it, bytes, header fields, size and all.
    assert two.command("c FETCH 2 (FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])") == [
        b"* 2 FETCH (FLAGS (\\Deleted) RFC822.SIZE 26 BODY[HEADER.FIELDS (SUBJECT)] {16}\r\n",
        b"Subject: two\r\n",
        b"\r\n",
        b" BODY[TEXT] {10}\r\n",
        b"body two\r\n",
        b")\r\n",
        b"c OK FETCH completed\r\n",
    ]
    # BODY[] without PEEK would set \Seen: nothing to set on a message that is gone, but the data comes.
    assert two.command("d FETCH 2 BODY[TEXT]")[:2] == [b"* 2 FETCH (BODY[TEXT] {10}\r\n", b"body two\r\n"]
    assert two.command("e NOOP") == [b"* 2 EXPUNGE\r\n", b"e OK NOOP completed\r\n"]
    assert two.command("f FETCH 2 BODY.PEEK[TEXT]")[:2] == [b"* 2 FETCH (BODY[TEXT] {12}\r\n", b"body three\r\n"]


def test_issue_9_expunged_bytes_stay_until_every_session_has_seen_the_expunge(store: SQLiteStore) -> None:
    deliver(store)
    deliver(store)
    one, two, three = client(store), client(store), client(store)
    one.select()
    two.select()
    three.command("x EXAMINE INBOX")
    (first_blob,) = [row.blob_id for row in store.mail.message_rows(1, [1])]
    one.command("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    one.command("b EXPUNGE")
    settle(store)
    assert first_blob in blob_ids(store)
    two.command("c NOOP")  # told of the expunge
    settle(store)
    assert first_blob in blob_ids(store)  # session three still shows the message
    assert three.command("d UID FETCH 1 RFC822.SIZE")[0].startswith(b"* 1 FETCH (UID 1 RFC822.SIZE ")
    three.command("e CLOSE")  # gone from its view too
    settle(store)
    assert first_blob not in blob_ids(store)
    assert store.mail.message_rows(1, [1], expunged=True) == []


def test_issue_9_expunged_bytes_go_at_once_when_nobody_holds_them(store: SQLiteStore) -> None:
    deliver(store)
    c = client(store)
    c.select()
    (blob,) = [row.blob_id for row in store.mail.message_rows(1, [1])]
    c.command("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.command("b EXPUNGE")  # the only session that showed it has reported the expunge
    settle(store)
    assert blob not in blob_ids(store)


def test_issue_9_held_expunged_bytes_are_let_go_at_the_next_start(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "unused")
    store.start()
    deliver(store)
    deliver(store)
    one, two = client(store), client(store)
    one.select()
    two.select()
    (blob,) = [row.blob_id for row in store.mail.message_rows(1, [1])]
    one.command("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    one.command("b EXPUNGE")
    store.close()  # session two never heard of it: the server stopped
    again = SQLiteStore(tmp_path / "data")
    try:
        assert blob in blob_ids(again)
        again.recover()
        assert blob not in blob_ids(again)
    finally:
        again.close()


# -- \Recent for IMAP4rev1 sessions --------------------------------------------------------------------------


def select_lines(c: Client, command: str = "SELECT INBOX") -> list[bytes]:
    return [line for line in c.command(f"s {command}") if b"RECENT" in line or b"EXISTS" in line]


def test_issue_9_exactly_one_rev1_session_sees_new_mail_as_recent(store: SQLiteStore) -> None:
    deliver(store)
    deliver(store)
    one, two, three = client(store), client(store), client(store)
    assert three.command("a STATUS INBOX (RECENT MESSAGES)")[0] == b'* STATUS "INBOX" (RECENT 2 MESSAGES 2)\r\n'
    assert select_lines(one) == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]
    assert select_lines(two) == [b"* 2 EXISTS\r\n", b"* 0 RECENT\r\n"]
    assert three.command("b STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 0)\r\n'
    assert one.command("c FETCH 1:2 FLAGS")[:2] == [
        b"* 1 FETCH (FLAGS (\\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Recent))\r\n",
    ]
    assert two.command("d FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"
    # New mail: the first session to hear of it gets it as \Recent, with RECENT after EXISTS.
    deliver(store)
    assert two.command("e NOOP") == [b"* 3 EXISTS\r\n", b"* 1 RECENT\r\n", b"e OK NOOP completed\r\n"]
    assert one.command("f NOOP") == [b"* 3 EXISTS\r\n", b"* 2 RECENT\r\n", b"f OK NOOP completed\r\n"]
    assert two.command("g FETCH 3 FLAGS")[0] == b"* 3 FETCH (FLAGS (\\Recent))\r\n"
    assert one.command("h FETCH 3 FLAGS")[0] == b"* 3 FETCH (FLAGS ())\r\n"
    # STORE cannot take \Recent away, and reports it.
    assert two.command("i STORE 3 FLAGS (\\Seen)")[0] == b"* 3 FETCH (FLAGS (\\Recent \\Seen))\r\n"
    # A session that selects later sees nothing as recent; the flag ends with the session that had it.
    assert select_lines(three) == [b"* 3 EXISTS\r\n", b"* 0 RECENT\r\n"]
    two.command("j LOGOUT")
    assert select_lines(client(store)) == [b"* 3 EXISTS\r\n", b"* 0 RECENT\r\n"]


def test_issue_9_examine_sees_recent_mail_without_taking_it(store: SQLiteStore) -> None:
    deliver(store)
    reader = client(store)
    assert select_lines(reader, "EXAMINE INBOX") == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert reader.command("a FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"
    deliver(store)
    assert reader.command("b NOOP") == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n", b"b OK NOOP completed\r\n"]
    # RFC 3501 §6.3.2: EXAMINE does not make messages lose \Recent; the next SELECT still gets them.
    assert select_lines(client(store)) == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]


def test_issue_9_search_new_old_recent(store: SQLiteStore) -> None:
    deliver(store, flags=frozenset({"\\Seen"}))
    deliver(store)
    first = client(store)
    first.select()
    deliver(store, flags=frozenset({"\\Seen"}))
    deliver(store)
    second = client(store)
    second.select()
    assert second.command("a SEARCH RECENT") == [b"* SEARCH 3 4\r\n", b"a OK SEARCH completed\r\n"]
    assert second.command("b SEARCH NEW") == [b"* SEARCH 4\r\n", b"b OK SEARCH completed\r\n"]
    assert second.command("c SEARCH OLD") == [b"* SEARCH 1 2\r\n", b"c OK SEARCH completed\r\n"]
    assert second.command("d UID SEARCH NOT OLD UNSEEN") == [b"* SEARCH 4\r\n", b"d OK UID SEARCH completed\r\n"]
    assert first.command("e SEARCH RECENT") == [  # messages 3 and 4 went to `second` at its SELECT
        b"* SEARCH 1 2\r\n",
        b"* 4 EXISTS\r\n",
        b"* 2 RECENT\r\n",
        b"e OK SEARCH completed\r\n",
    ]


def test_issue_9_imap4rev2_sessions_keep_no_recent(store: SQLiteStore) -> None:
    deliver(store)
    modern = client(store, rev2=True)
    assert select_lines(modern) == [b"* 1 EXISTS\r\n"]
    assert modern.command("a FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"
    assert modern.command("b SEARCH RECENT") == [b'* ESEARCH (TAG "b")\r\n', b"b OK SEARCH completed\r\n"]
    assert modern.command("c SEARCH OLD") == [b'* ESEARCH (TAG "c") ALL 1\r\n', b"c OK SEARCH completed\r\n"]
    deliver(store)
    assert modern.command("d NOOP") == [b"* 2 EXISTS\r\n", b"d OK NOOP completed\r\n"]
    # It took nothing: an IMAP4rev1 session is still the first to see both.
    assert select_lines(client(store)) == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]


@pytest.mark.parametrize("command", ["NOOP", "FETCH 1 FLAGS", "UID SEARCH ALL", "STORE 1 +FLAGS (\\Seen)"])
def test_issue_9_selected_mailbox_deleted_elsewhere_ends_the_session(store: SQLiteStore, command: str) -> None:
    """Another session DELETEs the selected mailbox: the next command gets `* BYE` and the
    connection closes, as Dovecot 2.3 does (after what the command found, with no tagged response);
    before, NOOP said OK and FETCH NO [EXPUNGEISSUED] forever."""
    store.mail.create_mailbox(1, "Work")
    deliver(store, mailbox="Work")
    c, other = client(store, rev2=True), client(store)
    c.select("Work")
    assert other.command("d DELETE Work") == [b"d OK DELETE completed\r\n"]
    lines = c.command(f"a {command}")
    assert lines[-1] == b"* BYE Selected mailbox was deleted, have to disconnect.\r\n"
    assert not any(line.startswith(b"a ") for line in lines), lines
    assert c.conn.is_closed
    assert c.session is not None and c.session.selected is None  # its hold let go


def test_issue_9_selected_mailbox_renamed_elsewhere_stays_selected(store: SQLiteStore) -> None:
    """Another session RENAMEs the selected mailbox: its messages and UIDs are unchanged, so the session
    goes on with it under the new name (its own DELETE of the new name then deselects it)."""
    store.mail.create_mailbox(1, "Work")
    deliver(store, mailbox="Work")
    c, other = client(store, rev2=True), client(store)
    c.select("Work")
    assert other.command("r RENAME Work Done") == [b"r OK RENAME completed\r\n"]
    assert c.command("a FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())\r\n", b"a OK FETCH completed\r\n"]
    deliver(store, mailbox="Done")
    assert c.command("b NOOP") == [b"* 2 EXISTS\r\n", b"b OK NOOP completed\r\n"]
    assert c.command("c DELETE Done") == [
        b"* OK [CLOSED] Selected mailbox deleted\r\n", b"c OK DELETE completed\r\n"]  # fmt: skip
    assert c.command("d NOOP") == [b"d OK NOOP completed\r\n"]
