"""Issue 9's session extensions against a real `kartero serve`: MULTIAPPEND (RFC 3502), UNAUTHENTICATE
(RFC 8437) and NOTIFY (RFC 5465), driven with imaplib (and a raw socket where imaplib has no verb)."""

from __future__ import annotations

import imaplib
import re
import smtplib
import socket

import pytest

from tests.integration.harness import KarteroServer

PASSWORD = "secret-password"


def send_mail(mx: KarteroServer, message: bytes) -> None:
    with smtplib.SMTP(mx.host, mx.port, local_hostname="client.example.org", timeout=30) as smtp:
        assert smtp.sendmail("alice@example.org", ["bob@example.test"], message) == {}


class Raw:
    """A line-oriented IMAP connection for what imaplib cannot say."""

    def __init__(self, mx: KarteroServer) -> None:
        self.sock = socket.create_connection((mx.host, mx.imap_port), timeout=30)
        self.reader = self.sock.makefile("rb")
        assert self.reader.readline().startswith(b"* OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the tagged response of `tag` (literals are read as lines)."""
        lines = []
        while True:
            line = self.reader.readline()
            assert line, lines
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_multiappend_stores_large_and_small_messages_all_at_once(mx: KarteroServer) -> None:
    """Two messages past the 1 MiB spool threshold and one small one in one APPEND: each large one goes
    to the session's spool file as it arrives, and all three are stored byte for byte, in order."""
    first = b"Subject: one\r\n\r\n" + (b"a" * 1022 + b"\r\n") * 1500
    second = b"Subject: two\r\n\r\nsmall\r\n"
    third = b"Subject: three\r\n\r\n" + (b"c" * 998 + b"\r\n") * 2000
    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    raw.until(b"a")
    raw.send(b"b APPEND Archive (\\Flagged) {%d+}\r\n" % len(first) + first)
    raw.send(b' " 7-Feb-1994 22:43:04 -0800" {%d+}\r\n' % len(second) + second)
    raw.send(b" {%d+}\r\n" % len(third) + third + b"\r\n")
    (done,) = raw.until(b"b")
    assert re.fullmatch(rb"b OK \[APPENDUID \d+ 1:3\] APPEND completed\r\n", done)
    raw.close()
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("Archive", readonly=True)
        for number, message in enumerate((first, second, third), 1):
            _, fetched = imap.fetch(str(number), "(BODY.PEEK[])")
            assert fetched[0][1] == message  # type: ignore[index]
        _, flags = imap.fetch("1:3", "(FLAGS)")
        assert b"\\Flagged" in flags[0] and b"\\Flagged" not in flags[1]  # type: ignore[operator]
    assert not list((mx.root / "data" / "spool").iterdir())  # the spool file went with the command


def test_multiappend_refused_whole_stores_nothing(mx: KarteroServer) -> None:
    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    raw.until(b"a")
    raw.send(b"b APPEND Nowhere {5+}\r\nhello {5+}\r\nworld\r\n")
    assert raw.until(b"b") == [b"b NO [TRYCREATE] No such mailbox\r\n"]
    raw.close()
    assert mx.messages("bob@example.test", "INBOX") == []


def test_unauthenticate_with_imaplib(mx: KarteroServer) -> None:
    imaplib.Commands.setdefault("UNAUTHENTICATE", ("AUTH", "SELECTED"))
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        assert b" UNAUTHENTICATE " in imap.capability()[1][0]  # type: ignore[operator]
        imap.select("INBOX")
        assert imap._simple_command("UNAUTHENTICATE")[0] == "OK"
        with pytest.raises(imaplib.IMAP4.error, match="SELECT not allowed now"):  # the server's answer
            imap.select("INBOX")
        imap.state = "NONAUTH"  # imaplib does not know the verb: tell it where the session is
        assert imap.login("carol@example.test", PASSWORD)[0] == "OK"
        assert imap.status("INBOX", "(MESSAGES)")[1] == [b'"INBOX" (MESSAGES 0)']
    assert mx.wait_events("imap.unauthenticate", 1)


def test_notify_pushes_changes_between_commands(mx: KarteroServer) -> None:
    """Without IDLE and without a command in progress, a NOTIFY session hears of new mail in the selected
    mailbox (EXISTS), of changes to other mailboxes (STATUS) and of new mailboxes (LIST), made by SMTP and
    by another session (imaplib)."""
    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\nb ENABLE IMAP4rev2\r\nc SELECT INBOX\r\n".encode())
    raw.until(b"c")
    raw.send(b"d NOTIFY SET (SELECTED (MessageNew MessageExpunge))"
             b" (PERSONAL (MessageNew MessageExpunge MailboxName))\r\n")  # fmt: skip
    assert raw.until(b"d") == [b"d OK NOTIFY completed\r\n"]
    send_mail(mx, b"Subject: pushed\r\n\r\nhello\r\n")
    assert raw.reader.readline() == b"* 1 EXISTS\r\n"
    with imaplib.IMAP4(mx.host, mx.imap_port) as other:
        other.login("bob@example.test", PASSWORD)
        other.create("Projects")
        assert raw.reader.readline() == b'* LIST () "/" "Projects"\r\n'
        other.append("Archive", "", None, b"Subject: filed\r\n\r\nbody\r\n")
        assert re.fullmatch(rb'\* STATUS "Archive" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)\r\n',
                            raw.reader.readline())  # fmt: skip
        other.select("INBOX")
        other.store("1", "+FLAGS", "\\Deleted")
        other.expunge()
        line = raw.reader.readline()
        if line.startswith(b"* 1 FETCH"):  # the \Deleted flag, when its push came before the expunge's
            line = raw.reader.readline()
        assert line == b"* 1 EXPUNGE\r\n"
    raw.send(b"e NOOP\r\n")
    assert raw.until(b"e") == [b"e OK NOOP completed\r\n"]
    raw.close()


def test_notify_reports_another_sessions_changes_as_status_and_list(mx: KarteroServer) -> None:
    """Session B's APPEND, STORE, EXPUNGE, CREATE, RENAME, (UN)SUBSCRIBE and DELETE on mailboxes session A
    has not selected reach A, between A's commands, as exactly the untagged STATUS and LIST responses of
    RFC 5465 §5; B's APPEND to A's selected mailbox as EXISTS."""
    a = Raw(mx)
    a.send(f"a LOGIN bob@example.test {PASSWORD}\r\nb ENABLE IMAP4rev2\r\nc SELECT INBOX\r\n".encode())
    a.until(b"c")
    a.send(b"d NOTIFY SET (SELECTED (MessageNew MessageExpunge))"
           b" (PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))\r\n")  # fmt: skip
    assert a.until(b"d") == [b"d OK NOTIFY completed\r\n"]
    with imaplib.IMAP4(mx.host, mx.imap_port) as b:
        b.login("bob@example.test", PASSWORD)
        assert b.create("Projects")[0] == "OK"
        assert a.reader.readline() == b'* LIST () "/" "Projects"\r\n'
        assert b.append("Projects", "", None, b"Subject: filed\r\n\r\nbody\r\n")[0] == "OK"
        line = a.reader.readline()
        found = re.fullmatch(rb'\* STATUS "Projects" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY (\d+) UNSEEN 1\)\r\n', line)
        assert found, line
        uidvalidity = int(found[1])
        b.select("Projects")
        b.store("1", "+FLAGS", "\\Seen")
        assert a.reader.readline() == b'* STATUS "Projects" (UIDVALIDITY %d UNSEEN 0)\r\n' % uidvalidity
        b.store("1", "+FLAGS", "\\Deleted")
        assert a.reader.readline() == b'* STATUS "Projects" (UIDVALIDITY %d UNSEEN 0)\r\n' % uidvalidity
        b.expunge()
        assert a.reader.readline() == (
            b'* STATUS "Projects" (MESSAGES 0 UIDNEXT 2 UIDVALIDITY %d UNSEEN 0)\r\n' % uidvalidity
        )
        b.close()
        assert b.rename("Projects", "Clients")[0] == "OK"
        assert a.reader.readline() == b'* LIST () "/" "Clients" ("OLDNAME" ("Projects"))\r\n'
        assert b.subscribe("Clients")[0] == "OK"
        assert a.reader.readline() == b'* LIST (\\Subscribed) "/" "Clients"\r\n'
        assert b.unsubscribe("Clients")[0] == "OK"
        assert a.reader.readline() == b'* LIST () "/" "Clients"\r\n'
        assert b.delete("Clients")[0] == "OK"
        assert a.reader.readline() == b'* LIST (\\NonExistent) "/" "Clients"\r\n'
        assert b.append("INBOX", "", None, b"Subject: new\r\n\r\nbody\r\n")[0] == "OK"
        assert a.reader.readline() == b"* 1 EXISTS\r\n"
        # In IDLE the same: STATUS for another mailbox as soon as it changes.
        a.send(b"e IDLE\r\n")
        assert a.reader.readline() == b"+ idling\r\n"
        assert b.append("Archive", "", None, b"Subject: filed\r\n\r\nbody\r\n")[0] == "OK"
        line = a.reader.readline()
        assert re.fullmatch(rb'\* STATUS "Archive" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)\r\n', line), line
        a.send(b"DONE\r\n")
        assert a.until(b"e") == [b"e OK IDLE terminated\r\n"]
    a.send(b"f NOOP\r\n")
    assert a.until(b"f") == [b"f OK NOOP completed\r\n"]  # nothing was held back, nothing repeats
    a.close()


def test_notify_watches_a_mailbox_created_later(mx: KarteroServer) -> None:
    """PERSONAL with message events only: mail in a mailbox another session creates after NOTIFY SET
    still arrives as STATUS (the mailbox list was not followed without MailboxName)."""
    a = Raw(mx)
    a.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    a.until(b"a")
    a.send(b"b NOTIFY SET (PERSONAL (MessageNew MessageExpunge))\r\n")
    assert a.until(b"b") == [b"b OK NOTIFY completed\r\n"]
    with imaplib.IMAP4(mx.host, mx.imap_port) as b:
        b.login("bob@example.test", PASSWORD)
        assert b.create("Later")[0] == "OK"
        assert b.append("Later", "", None, b"Subject: filed\r\n\r\nbody\r\n")[0] == "OK"
        line = a.reader.readline()
        assert re.fullmatch(rb'\* STATUS "Later" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)\r\n', line), line
    a.send(b"c NOOP\r\n")
    assert a.until(b"c") == [b"c OK NOOP completed\r\n"]
    a.close()


def test_selected_mailbox_deleted_elsewhere_ends_an_idle_session(mx: KarteroServer) -> None:
    """Issue 9: a session IDLE in a mailbox another session deletes gets `* BYE` at once and the
    connection closes (Dovecot 2.3 drops it too)."""
    idler, other = Raw(mx), Raw(mx)
    for raw in (idler, other):
        raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
        raw.until(b"a")
    other.send(b"b CREATE Doomed\r\n")
    assert other.until(b"b")[-1].startswith(b"b OK")
    idler.send(b"c SELECT Doomed\r\n")
    assert idler.until(b"c")[-1].startswith(b"c OK")
    idler.send(b"d IDLE\r\n")
    assert idler.reader.readline() == b"+ idling\r\n"
    other.send(b"e DELETE Doomed\r\n")
    assert other.until(b"e") == [b"e OK DELETE completed\r\n"]
    assert idler.reader.readline() == b"* BYE Selected mailbox was deleted, have to disconnect.\r\n"
    assert idler.reader.readline() == b""  # closed
    idler.close()
    other.close()


def test_notify_reports_metadata_set_by_another_session(mx: KarteroServer) -> None:
    """Issue 9, RFC 5465 §5.7/§5.8: imaplib's SETMETADATA on a mailbox and on the server reaches a NOTIFY
    session at once as `* METADATA` naming the entries; the session's own SETMETADATA does not."""
    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    raw.until(b"a")
    raw.send(b"b NOTIFY SET (PERSONAL (MailboxMetadataChange ServerMetadataChange))\r\n")
    assert raw.until(b"b") == [b"b OK NOTIFY completed\r\n"]
    with imaplib.IMAP4(mx.host, mx.imap_port) as other:
        other.login("bob@example.test", PASSWORD)
        assert other.xatom("SETMETADATA", 'INBOX (/private/comment "from imaplib")')[0] == "OK"
        assert raw.reader.readline() == b'* METADATA "INBOX" /private/comment\r\n'
        assert other.xatom("SETMETADATA", '"" (/shared/motd "hello" /private/x NIL)')[0] == "OK"
        assert raw.reader.readline() == b'* METADATA "" /private/x /shared/motd\r\n'
    raw.send(b'c SETMETADATA INBOX (/private/comment "mine")\r\nd NOOP\r\n')
    assert raw.until(b"d") == [b"c OK SETMETADATA completed\r\n", b"d OK NOOP completed\r\n"]
    raw.close()


def test_notify_reports_a_change_before_the_next_commands_ok(mx: KarteroServer) -> None:
    """While imaplib creates mailboxes, session A sends NOOP after NOOP: every mailbox whose CREATE OK
    imaplib had read before A sent a NOOP is announced (a LIST) before that NOOP's OK. Before, a NOOP that
    came in while A was pushing the previous change ran first and the LIST came after its OK (seen in CI
    as a lost "Theirs39")."""
    import threading

    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    raw.until(b"a")
    raw.send(b"b NOTIFY SET (PERSONAL (MailboxName))\r\n")
    assert raw.until(b"b") == [b"b OK NOTIFY completed\r\n"]
    confirmed: list[str] = []  # appended after each OK: a snapshot is a prefix of it
    done = threading.Event()

    def theirs() -> None:
        try:
            with imaplib.IMAP4(mx.host, mx.imap_port) as other:
                other.login("bob@example.test", PASSWORD)
                for i in range(60):
                    assert other.create(f"Soon{i}")[0] == "OK"
                    confirmed.append(f"Soon{i}")
        finally:
            done.set()

    thread = threading.Thread(target=theirs)
    thread.start()
    announced: set[bytes] = set()
    n = 0
    while not done.is_set() or n == 0 or len(announced) < len(confirmed):
        known = list(confirmed)
        raw.send(b"n%d NOOP\r\n" % n)
        lines = raw.until(b"n%d" % n)
        assert lines[-1] == b"n%d OK NOOP completed\r\n" % n
        announced.update(lines[:-1])
        assert {b'* LIST () "/" "%s"\r\n' % name.encode() for name in known} <= announced, n
        n += 1
        assert n < 10_000
    thread.join(30)
    assert announced == {b'* LIST () "/" "Soon%d"\r\n' % i for i in range(60)}
    raw.close()


def test_notify_reports_mailboxes_created_elsewhere_while_creating_its_own(mx: KarteroServer) -> None:
    """Issue 9: session A pipelines CREATEs of its own while imaplib creates others at the same time; A
    hears of every mailbox the other session created (a LIST each) and of none of its own, however the
    two interleave (before, a change made during A's CREATE was taken as A's own and never reported)."""
    import threading

    raw = Raw(mx)
    raw.send(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode())
    raw.until(b"a")
    raw.send(b"b NOTIFY SET (PERSONAL (MailboxName))\r\n")
    assert raw.until(b"b") == [b"b OK NOTIFY completed\r\n"]

    def theirs() -> None:
        with imaplib.IMAP4(mx.host, mx.imap_port) as other:
            other.login("bob@example.test", PASSWORD)
            for i in range(40):
                assert other.create(f"Theirs{i}")[0] == "OK"

    thread = threading.Thread(target=theirs)
    thread.start()
    raw.send(b"".join(b"c%d CREATE Mine%d\r\n" % (i, i) for i in range(40)))
    lines = raw.until(b"c39")
    thread.join(30)
    raw.send(b"d NOOP\r\n")
    lines += raw.until(b"d")
    announced = {line for line in lines if line.startswith(b"* LIST")}
    assert announced == {b'* LIST () "/" "Theirs%d"\r\n' % i for i in range(40)}
    raw.close()
