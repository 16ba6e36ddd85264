"""Issue 14: the message trace end to end, read with `kartero trace`. Kartero A (a.test) takes a message
over SMTP for a local user, and one over submission for two users of Kartero B (b.test, reached through
`[routes]`), which greylists the one that exists (a deferral, then the delivery) and refuses the other (a
bounce and a failure notice)."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.harness import KarteroServer, run_cli_in_process, tls_context, wait_for

PASSWORD = "alice password"


@dataclass
class Pair:
    a: KarteroServer
    b: KarteroServer

    def trace(self, *args: str) -> list[dict[str, object]]:
        out = run_cli_in_process(self.a.config, "trace", "--json", *args).stdout
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("trace")
    b = KarteroServer(root / "b", host="127.0.0.3", domains=("b.test",), hostname="mx.b.test", tls=False,
                      extra_config='[greylisting]\nenabled = true\ndelay = "1s"\nexempt = []\n')  # fmt: skip
    b.add_user("bob@b.test")
    b.start()
    a = KarteroServer(root / "a", host="127.0.0.2", domains=("a.test",), hostname="mx.a.test",
                      extra_config=f'[routes]\n"b.test" = "{b.host}:{b.port}"\n'
                      '[delivery]\nretry_first = "2s"\nretry_max = "2s"\nconnect_timeout = "5s"\n')  # fmt: skip
    a.add_user("alice@a.test", PASSWORD)
    a.add_user("bob@a.test")
    a.start()
    try:
        yield Pair(a, b)
    finally:
        for server in (a, b):
            if server.process and server.process.poll() is None:
                assert server.stop() == 0, server.log


def message(message_id: str) -> bytes:
    return f"From: <alice@a.test>\r\nMessage-ID: <{message_id}>\r\nSubject: private\r\n\r\nbody\r\n".encode()


def kinds(found: dict[str, object], *fields: str) -> list[tuple[object, ...]]:
    events = found["events"]
    assert isinstance(events, list)
    return [(e["kind"], *(e.get(f) for f in fields)) for e in events]


def test_issue_14_the_trace_shows_each_message_path(pair: Pair) -> None:
    a, b = pair.a, pair.b
    with smtplib.SMTP(a.host, a.port, local_hostname="client.outside.example", timeout=30) as client:
        assert client.sendmail("carol@outside.example", ["Bob@A.test"], message("local-1@outside.example")) == {}
    with smtplib.SMTP(a.host, a.submission_port, local_hostname="laptop.a.test", timeout=30) as client:
        client.starttls(context=tls_context())
        client.login("alice@a.test", PASSWORD)
        assert client.sendmail("alice@a.test", ["bob@b.test", "nobody@b.test"], message("remote-1@a.test")) == {}
    wait_for(lambda: len(b.messages("bob@b.test")) == 1 and len(a.messages("alice@a.test")) == 1, 30)

    (local,) = pair.trace("--message-id", "<local-1@outside.example>")
    assert local["sender"] == "carol@outside.example" and local["outcomes"] == {"Bob@A.test": "stored"}
    received = local["events"][0]  # type: ignore[index]
    assert received == {
        "at": received["at"], "kind": "received", "message_id": local["id"], "header_id": "local-1@outside.example",
        "sender": "carol@outside.example", "recipients": ["Bob@A.test"], "origin": "smtp", "listener": "smtp",
        "client": "127.0.0.1", "helo": "client.outside.example", "size": len(message("local-1@outside.example")),
    }  # fmt: skip
    assert kinds(local, "recipient", "account", "mailbox") == [
        ("received", None, None, None), ("stored", "Bob@A.test", None, "INBOX")]  # the account is the recipient

    (sent,) = pair.trace("--address", "nobody@b.test")
    assert sent == pair.trace("--id", str(sent["id"]))[0] == pair.trace("--queue-id", sent["queue_ids"][0])[0]  # type: ignore[index]
    received = sent["events"][0]  # type: ignore[index]
    assert (received["origin"], received["listener"], received["user"], received["helo"]) == (
        "submission", "submission", "alice@a.test", "laptop.a.test")
    assert received["tls"].startswith("version=TLSv1.3 cipher=")
    (dsn_id,) = [e["related"] for e in sent["events"] if e["kind"] == "dsn"]  # type: ignore[union-attr]
    assert kinds(sent, "recipient", "attempt", "reply", "status", "note") == [
        ("received", None, None, None, None, None),
        ("queued", "bob@b.test", None, None, None, None),
        ("queued", "nobody@b.test", None, None, None, None),
        ("deferred", "bob@b.test", 1, "451 4.7.1 Greylisted, please try again in 1 seconds", "4.7.1", None),
        ("bounced", "nobody@b.test", 1, "550 5.1.1 No such user here", "5.1.1", None),
        ("dsn", "alice@a.test", None, None, None, "failed notice about nobody@b.test"),
        ("delivered", "bob@b.test", 2, sent["events"][-1]["reply"], None, None),  # type: ignore[index]
    ]
    assert str(sent["events"][-1]["reply"]).startswith("250 2.0.0 Message accepted as ")  # type: ignore[index]
    assert sent["outcomes"] == {"bob@b.test": "delivered", "nobody@b.test": "bounced"}

    (notice,) = pair.trace("--id", str(dsn_id))  # the failure notice has a path of its own
    assert kinds(notice, "origin", "recipient", "mailbox") == [
        ("received", "dsn", None, None), ("stored", None, "alice@a.test", "INBOX")]
    assert [m["id"] for m in pair.trace("--address", "alice@a.test")] == [dsn_id, sent["id"]]
    assert pair.trace("--address", "alice@a.test", "--until", "2000-01-01") == []
    text = run_cli_in_process(a.config, "trace", "--address", "nobody@b.test").stdout
    assert "  bounced    <nobody@b.test>, attempt 1, host " in text and "said 550 5.1.1 No such user here" in text
    assert "private" not in text  # nothing of the content: not even the subject
