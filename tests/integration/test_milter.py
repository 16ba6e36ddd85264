"""Issue 13: Kartero with a `[[milter]]` against Postfix with the same milter (tests/milters/testmilter.py
on pymilter), for every reply and modification action: the same SMTP replies, the same envelope (sender,
recipients) and the same stored message, byte for byte once each server's trace fields are taken off
(Kartero's Return-Path and Received, Postfix's Received). A quarantine is held by Postfix and delivered
to Junk by Kartero (it has no hold queue)."""

from __future__ import annotations

import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, strip_trace
from tests.integration.postfix import is_available as postfix_reason
from tests.milters.harness import TestMilter
from tests.milters.harness import is_available as milter_reason
from tests.milters.postfix_reference import Outcome, PostfixReference

USERS = ("bob@example.test", "carol@example.test", "added@example.test", "reject-rcpt@example.test",
         "tempfail-rcpt@example.test", "replycode-rcpt@example.test", "discard-rcpt@example.test")  # fmt: skip


@dataclass
class Servers:
    kartero: KarteroServer
    postfix: PostfixReference
    milter: TestMilter


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    if reason := milter_reason() or postfix_reason():
        pytest.fail(reason)
    # Postfix daemons run as the postfix user: its folders must not sit under pytest's 0700 tmp folder.
    root = Path(tempfile.mkdtemp(prefix="kartero-milter-"))
    root.chmod(0o755)
    milter = TestMilter(root).start()
    kartero = KarteroServer(root / "kartero", extra_config=f'[[milter]]\naddress = "{milter.address}"\n')
    for user in USERS:
        kartero.add_user(user)
    try:
        kartero.start()
        with PostfixReference(root / "postfix", milter.postfix_address) as postfix:
            yield Servers(kartero, postfix, milter)
    finally:
        assert kartero.stop() == 0, kartero.log
        milter.stop()
        shutil.rmtree(root, ignore_errors=True)


def message(tag: str, action: str) -> bytes:
    return (
        f"From: Alice <alice@remote.test>\r\nTo: bob@example.test\r\nSubject: greetings\r\n\tfolded\r\n"
        f"Date: Mon, 30 Nov 2026 01:00:00 +0000\r\nMessage-ID: <{tag}@remote.test>\r\nX-Delete-Me: soon gone\r\n"
        f"X-Test-Action: {action}\r\n\r\nHello,\r\n\r\nthe body.\r\n"
    ).encode()


def send_kartero(server: KarteroServer, sender: str, rcpts: list[str], data: bytes, helo: str) -> Outcome:
    outcome = Outcome([])
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        code, text = smtp.ehlo(helo)
        outcome.replies.append(("EHLO", code, text.decode().split("\n")[0]))
        code, text = smtp.mail(sender)
        outcome.replies.append(("MAIL", code, text.decode()))
        if code == 250:
            accepted = 0
            for rcpt in rcpts:
                code, text = smtp.rcpt(rcpt)
                outcome.replies.append(("RCPT", code, text.decode()))
                accepted += code == 250
            if accepted:
                code, text = smtp.data(data)
                outcome.replies.append(("DATA", code, text.decode()))
    return outcome


def stored(server: KarteroServer, tag: str, mailbox: str = "INBOX") -> dict[str, bytes]:
    """Each user's stored copy of the message with this tag."""
    found = {}
    for user in USERS:
        for raw in server.messages(user, mailbox):
            if f"<{tag}@remote.test>".encode() in raw:
                found[user] = raw
    return found


def comparable(replies: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Replies as compared: every code, and the text of every refusal (a 250's text is each server's own)."""
    return [(command, code, text if code >= 400 else "") for command, code, text in replies[1:]]


CASES = [
    ("add-header", "alice@remote.test", ["bob@example.test"]),
    ("add-folded-header", "alice@remote.test", ["bob@example.test"]),
    ("insert-header", "alice@remote.test", ["bob@example.test"]),
    ("insert-header-2", "alice@remote.test", ["bob@example.test"]),
    ("change-header", "alice@remote.test", ["bob@example.test"]),
    ("delete-header", "alice@remote.test", ["bob@example.test"]),
    ("replace-body", "alice@remote.test", ["bob@example.test"]),
    ("add-header, insert-header, change-header, delete-header, replace-body", "alice@remote.test",
     ["bob@example.test"]),
    ("add-rcpt", "alice@remote.test", ["bob@example.test"]),
    ("del-rcpt", "alice@remote.test", ["bob@example.test", "carol@example.test"]),
    ("change-from", "alice@remote.test", ["bob@example.test"]),
    ("accept", "alice@remote.test", ["bob@example.test"]),
    ("none", "alice@remote.test", ["bob@example.test", "reject-rcpt@example.test", "carol@example.test"]),
    ("none", "alice@remote.test", ["tempfail-rcpt@example.test", "bob@example.test"]),
    ("none", "alice@remote.test", ["replycode-rcpt@example.test", "bob@example.test"]),
    ("reject", "alice@remote.test", ["bob@example.test"]),
    ("tempfail", "alice@remote.test", ["bob@example.test"]),
    ("replycode", "alice@remote.test", ["bob@example.test"]),
    ("reject-at-header", "alice@remote.test", ["bob@example.test"]),
    ("discard", "alice@remote.test", ["bob@example.test"]),
    ("none", "alice@remote.test", ["bob@example.test", "discard-rcpt@example.test"]),
    ("add-header", "reject-mail@remote.test", ["bob@example.test"]),
    ("add-header", "tempfail-mail@remote.test", ["bob@example.test"]),
    ("add-header", "replycode-mail@remote.test", ["bob@example.test"]),
    ("add-header", "accept-mail@remote.test", ["bob@example.test"]),
]  # fmt: skip


@pytest.mark.parametrize(("action", "sender", "rcpts"), CASES)
def test_issue_13_kartero_does_what_postfix_does_with_the_same_milter(
    servers: Servers, action: str, sender: str, rcpts: list[str], request: pytest.FixtureRequest
) -> None:
    tag = request.node.callspec.id.replace("[", "-").replace("]", "").replace(" ", "").replace(",", "+")
    tag = "".join(c if c.isalnum() or c in "-+." else "_" for c in tag)
    data = message(tag, action)
    reference = servers.postfix.send(sender, rcpts, data)
    ours = send_kartero(servers.kartero, sender, rcpts, data, "client.example.org")
    assert comparable(ours.replies) == comparable(reference.replies)
    copies = stored(servers.kartero, tag)
    expected = {rcpt: d for d in reference.delivered for rcpt in d.recipients}
    assert sorted(copies) == sorted(expected)
    for user, raw in copies.items():
        assert raw.startswith(f"Return-Path: <{expected[user].sender}>\r\n".encode())
        assert strip_trace(raw) == expected[user].message


def test_issue_13_quarantine_is_held_by_postfix_and_junked_by_kartero(servers: Servers) -> None:
    data = message("quarantine", "add-header, quarantine")
    reference = servers.postfix.send("alice@remote.test", ["bob@example.test"], data)
    assert reference.held and reference.delivered == []
    ours = send_kartero(servers.kartero, "alice@remote.test", ["bob@example.test"], data, "client.example.org")
    assert comparable(ours.replies) == comparable(reference.replies)
    assert stored(servers.kartero, "quarantine") == {}
    (junked,) = stored(servers.kartero, "quarantine", "Junk").values()
    assert strip_trace(junked).endswith(b"X-Test-Added: yes\r\n\r\nHello,\r\n\r\nthe body.\r\n")
    assert servers.kartero.log_events("filter.quarantined")


def test_issue_13_reject_at_helo_answers_mail_like_postfix(servers: Servers) -> None:
    data = message("helo", "none")
    reference = servers.postfix.send("alice@remote.test", ["bob@example.test"], data, helo="reject-helo.test")
    ours = send_kartero(servers.kartero, "alice@remote.test", ["bob@example.test"], data, "reject-helo.test")
    assert comparable(ours.replies) == comparable(reference.replies) == [("MAIL", 550, "5.7.1 Command rejected")]


def test_issue_13_the_milter_sees_the_same_conversation_from_both(servers: Servers) -> None:
    data = message("seen", "none").replace(b"\r\n\r\nHello", b"\r\nX-Long: one\r\n two\r\n\tthree\r\n\r\nHello")
    servers.postfix.send("alice@remote.test", ["bob@example.test"], data, helo="client.example.org")
    send_kartero(servers.kartero, "alice@remote.test", ["bob@example.test"], data, "client.example.org")
    postfix, kartero = servers.milter.seen()[-2:]
    for key in ("helo", "mail", "rcpt", "headers", "body"):
        assert kartero[key] == postfix[key], key
    assert kartero["headers"][-1] == ["X-Long", "one\n two\n\tthree"]
    # Postfix's default macro names, each stage; Kartero sends more (the client macros at connect)
    for stage in ("connect_macros", "mail_macros", "rcpt_macros", "eom_macros"):
        assert set(postfix[stage]) - {"{cert_issuer}", "{cert_subject}", "{cipher_bits}"} <= set(kartero[stage]), stage


def test_issue_13_a_large_message_is_seen_and_changed_alike(servers: Servers) -> None:
    body = b"".join(b"line %06d of a message too large to be held in memory\r\n" % i for i in range(40_000))  # 2.2 MB
    data = message("large", "add-header, change-header").replace(b"Hello,\r\n\r\nthe body.\r\n", body)
    reference = servers.postfix.send("alice@remote.test", ["bob@example.test"], data)
    ours = send_kartero(servers.kartero, "alice@remote.test", ["bob@example.test"], data, "client.example.org")
    assert comparable(ours.replies) == comparable(reference.replies)
    postfix, kartero = servers.milter.seen()[-2:]
    assert kartero["body"] == postfix["body"] == body.decode()
    (copy,) = stored(servers.kartero, "large").values()
    (delivered,) = reference.delivered
    assert strip_trace(copy) == delivered.message
