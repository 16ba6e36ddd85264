"""Issue 13, milter faults on a real `kartero serve`: a milter that is down, one that stops answering past
its `timeout`, one that closes the connection in the middle of the body and one too slow at the end of
the message. With `on_error = "tempfail"` the client gets `451 4.7.1` and nothing is stored; with
`"accept"` every message is delivered byte-identical (nothing half-modified); either way nothing
acknowledged is lost and the next session is served."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests.integration.harness import KarteroServer
from tests.milters.faulty import FaultyMilter, unused_port

BODY = b"Subject: fault %s\r\nMessage-ID: <%s@remote.test>\r\n\r\nThe body of the message.\r\n"


@pytest.fixture(scope="module")
def milter() -> Iterator[FaultyMilter]:
    faulty = FaultyMilter("by_sender")
    yield faulty
    faulty.stop()


def server_with(root: object, milters: list[tuple[str, str]]) -> KarteroServer:
    config = "".join(f'[[milter]]\naddress = "{address}"\non_error = "{on_error}"\ntimeout = "1s"\n\n'
                     for address, on_error in milters)  # fmt: skip
    server = KarteroServer(root, extra_config=config)  # type: ignore[arg-type]
    server.add_user("bob@example.test")
    server.start()
    return server


@pytest.fixture(scope="module")
def tempfail(tmp_path_factory: pytest.TempPathFactory, milter: FaultyMilter) -> Iterator[KarteroServer]:
    server = server_with(tmp_path_factory.mktemp("tempfail"), [(milter.address, "tempfail")])
    yield server
    assert server.stop() == 0, server.log


@pytest.fixture(scope="module")
def accept(tmp_path_factory: pytest.TempPathFactory, milter: FaultyMilter) -> Iterator[KarteroServer]:
    down = f"127.0.0.1:{unused_port()}"
    server = server_with(tmp_path_factory.mktemp("accept"), [(down, "accept"), (milter.address, "accept")])
    yield server
    assert server.stop() == 0, server.log


def send(server: KarteroServer, sender: str) -> tuple[int, int, bytes]:
    """(MAIL reply code, end-of-data reply code, the message)."""
    tag = sender.partition("@")[0].encode()
    message = BODY % (tag, tag)
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        code, _ = smtp.mail(sender)
        if code != 250:
            return code, 0, message
        assert smtp.rcpt("bob@example.test")[0] == 250
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(message + b".\r\n")
        end, text = smtp.getreply()
        return code, end, message + b"|" + text


def stored(server: KarteroServer) -> list[bytes]:
    return [m[m.index(b"Subject: fault") :] for m in server.messages("bob@example.test")]


def test_issue_13_tempfail_a_milter_that_fails_answers_451_and_stores_nothing(tempfail: KarteroServer) -> None:
    assert send(tempfail, "hang@remote.test")[:2] == (451, 0)  # stopped answering at MAIL, past the timeout
    close = send(tempfail, "close_in_body@remote.test")
    assert close[:2] == (250, 451) and close[2].endswith(b"|4.7.1 Service unavailable - try again later")
    assert send(tempfail, "slow_eom@remote.test")[:2] == (250, 451)
    assert send(tempfail, "trickle_eom@remote.test")[:2] == (250, 451)  # 2 s for one answer, a byte at a time
    assert stored(tempfail) == []
    ok = send(tempfail, "fine@remote.test")  # the next session talks to the milter afresh
    assert ok[:2] == (250, 250)
    assert stored(tempfail) == [ok[2].partition(b"|")[0]]
    events = tempfail.log_events("milter.failed")
    assert len(events) >= 4, tempfail.log


def test_issue_13_accept_a_failing_milter_never_loses_or_half_modifies(accept: KarteroServer) -> None:
    modes = ("hang", "close_in_body", "slow_eom", "trickle_eom", "fine")
    sent = [send(accept, f"{mode}@remote.test") for mode in modes]
    assert [s[:2] for s in sent] == [(250, 250)] * 5
    assert stored(accept) == [s[2].partition(b"|")[0] for s in sent]  # byte-identical, in order
