"""Issue 12: Sieve at final delivery, end to end. Kartero A (example.test, 127.0.0.2) holds bob's and
carol's mailboxes; Kartero B (remote.test, 127.0.0.3) is the remote MX that catches what A sends out
(vacation replies, rejection notices, redirects), found through a real DNS server on loopback. Scripts
go in with `kartero sieve put/activate`, mail comes in over SMTP, results are read from the stores."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import smtplib
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, free_port, run_cli_in_process, wait_for

A, B = "127.0.0.2", "127.0.0.3"
ZONE = f"""
example.test. 60 IN MX 10 mx.example.test.
mx.example.test. 60 IN A {A}
remote.test. 60 IN MX 10 mx.remote.test.
mx.remote.test. 60 IN A {B}
"""


@dataclass
class Net:
    root: Path
    a: KarteroServer
    b: KarteroServer

    def script(self, address: str, text: str) -> None:
        path = self.root / "script.sieve"
        path.write_text(text)
        run_cli_in_process(self.a.config, "sieve", "put", address, "main", str(path))
        run_cli_in_process(self.a.config, "sieve", "activate", address, "main")

    def send(self, sender: str, recipients: list[str], message: str) -> None:
        with smtplib.SMTP(A, self.a.port) as client:
            client.sendmail(sender, recipients, message.replace("\n", "\r\n").encode())

    def remote_inbox(self) -> list[bytes]:
        return self.b.messages("alice@remote.test")


def _shared_port() -> int:
    for _ in range(50):
        port = free_port(A)
        try:
            with socket.socket() as s:
                s.bind((B, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on both addresses")


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    root = Path(tempfile.mkdtemp(prefix="kartero-rules-"))
    port = _shared_port()
    with LoopbackDNS(ZONE) as dns:
        b = KarteroServer(root / "b", host=B, port=port, domains=("remote.test",), hostname="mx.remote.test")
        b.add_user("alice@remote.test")
        delivery = f'[delivery]\nport = {port}\nsource_address = "{A}"\nretry_first = "1s"\n'
        a = KarteroServer(root / "a", host=A, port=port, extra_config=dns.config + delivery)
        for user in ("bob@example.test", "carol@example.test"):
            a.add_user(user)
        b.start()
        a.start()
        try:
            yield Net(root, a, b)
        finally:
            for server in (a, b):
                if server.process and server.process.poll() is None:
                    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def message(subject: str, *, to: str = "bob@example.test", extra: str = "") -> str:
    return (f"From: Alice <alice@remote.test>\nTo: {to}\nSubject: {subject}\n"
            f"Message-ID: <{subject.replace(' ', '-')}@remote.test>\n{extra}\nHello.\n")  # fmt: skip


def test_issue_12_fileinto_create_with_flags_and_edited_header(net: Net) -> None:
    net.script("bob@example.test", """
require ["fileinto", "mailbox", "imap4flags", "editheader"];
if header :contains "list-id" "dev.lists.remote.test" {
    addheader "X-Sorted" "dev list";
    fileinto :create :flags ["\\\\Seen", "$Dev"] "Lists/dev";
}
""")
    listed = message("list post", extra="List-Id: <dev.lists.remote.test>\n")
    net.send("alice@remote.test", ["bob@example.test"], listed)
    net.send("alice@remote.test", ["bob@example.test"], message("personal one"))
    store = net.a.store()
    try:
        account = store.accounts.get_account("bob@example.test")
        assert account is not None
        box = store.mail.get_mailbox(account.id, "Lists/dev")
        assert box is not None, "fileinto :create made the mailbox"
        (row,) = store.mail.message_rows(box.id)
        assert row.flags == {"\\Seen", "$Dev"}
        stored = store.mail.read_message(row.blob_id)
        inbox = store.mail.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        subjects = [email.message_from_bytes(store.mail.read_message(r.blob_id))["Subject"]
                    for r in store.mail.message_rows(inbox.id)]  # fmt: skip
    finally:
        store.close()
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed["Subject"] == "list post"
    assert parsed["X-Sorted"] == "dev list"
    assert stored.startswith(b"Return-Path: <alice@remote.test>\r\nReceived: from ")
    assert subjects[-1] == "personal one" and "list post" not in subjects


def test_issue_12_vacation_replies_once_with_null_sender_and_never_to_lists(net: Net) -> None:
    net.script("carol@example.test", """
require ["vacation"];
vacation :days 1 :subject "Out of office" "I am away this week.";
""")
    before = len(net.remote_inbox())
    net.send("alice@remote.test", ["carol@example.test"], message("first", to="carol@example.test"))
    wait_for(lambda: len(net.remote_inbox()) == before + 1, 20)
    net.send("alice@remote.test", ["carol@example.test"], message("second", to="carol@example.test"))
    net.send("alice@remote.test", ["carol@example.test"],
             message("news", to="carol@example.test", extra="List-Id: <news.remote.test>\n"))  # fmt: skip
    net.a.wait_events("sieve.vacation_skipped", 2)
    replies = net.remote_inbox()[before:]
    assert len(replies) == 1
    reply = replies[0]
    assert reply.startswith(b"Return-Path: <>\r\n")
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["Subject"] == "Out of office"
    assert parsed["Auto-Submitted"] == "auto-replied (vacation)"
    assert parsed["In-Reply-To"] == "<first@remote.test>"
    assert parsed.get_content().strip() == "I am away this week."
    skipped = net.a.log_events("sieve.vacation_skipped")
    assert any("already" in line for line in skipped) and any("mailing list" in line for line in skipped)
    run_cli_in_process(net.a.config, "sieve", "deactivate", "carol@example.test")


def test_issue_12_reject_is_the_smtp_reply_for_one_recipient_and_a_notice_for_several(net: Net) -> None:
    rule = 'require "reject";\nif header :contains "subject" "spam" { reject "Not wanted here."; }\n'
    net.script("bob@example.test", rule)
    with smtplib.SMTP(A, net.a.port) as client:
        client.ehlo()
        client.mail("alice@remote.test")
        client.rcpt("bob@example.test")
        code, text = client.data(message("spam offer").replace("\n", "\r\n").encode())
    assert (code, text) == (550, b"5.7.1 Not wanted here.")
    before = len(net.remote_inbox())
    carol_before = len(net.a.messages("carol@example.test"))
    net.send("alice@remote.test", ["bob@example.test", "carol@example.test"], message("more spam"))
    wait_for(lambda: len(net.remote_inbox()) == before + 1, 20)
    (notice,) = net.remote_inbox()[before:]
    assert notice.startswith(b"Return-Path: <>\r\n")
    parsed = email.message_from_bytes(notice, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert b"Not wanted here." in notice and b"Subject: more spam" in notice
    assert len(net.a.messages("carol@example.test")) == carol_before + 1
    net.script("bob@example.test", "keep;\n")


def test_issue_12_redirect_leaves_through_the_queue_marked_delivered_to(net: Net) -> None:
    net.script("bob@example.test", 'require "copy";\nredirect :copy "alice@remote.test";\n')
    before = len(net.remote_inbox())
    bob_before = len(net.a.messages("bob@example.test"))
    local = message("forward me").replace("alice@remote.test", "carol@example.test")
    net.send("carol@example.test", ["bob@example.test"], local)
    wait_for(lambda: len(net.remote_inbox()) == before + 1, 20)
    (copy,) = net.remote_inbox()[before:]
    assert b"\r\nDelivered-To: bob@example.test\r\n" in copy
    assert b"Subject: forward me" in copy
    assert len(net.a.messages("bob@example.test")) == bob_before + 1  # :copy kept it too
    assert copy.startswith(b"Return-Path: <carol@example.test>\r\n")  # our own sender needs no SRS
    net.send("alice@remote.test", ["bob@example.test"], message("from afar"))
    wait_for(lambda: len(net.remote_inbox()) == before + 2, 20)
    srs = net.remote_inbox()[-1]
    assert b"Subject: from afar" in srs
    assert re.match(rb"Return-Path: <SRS0=[^=]{4}=[^=]{2}=remote\.test=alice@example\.test>\r\n", srs), srs[:120]
    net.script("bob@example.test", "keep;\n")
