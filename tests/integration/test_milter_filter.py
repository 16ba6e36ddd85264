"""The milter filter (kartero/filters/milter.py) driven directly against real milters on loopback: the
pymilter test milter (tests/milters/testmilter.py) for every phase, reply and modification action, and
small scripted fake milters for the faults (not listening, too slow, closing mid-body, closing after
sending changes). Exact verdicts and changes are asserted; a failure answers per on_error, is logged,
and leaves that milter alone for the rest of the session."""

from __future__ import annotations

import asyncio
import logging
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from kartero.config import MilterConfig
from kartero.filters.milter import MilterFilter, MilterSession
from kartero.filters.model import (
    AcceptRest,
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    ClientInfo,
    Continue,
    DeleteRecipient,
    Discard,
    InsertHeader,
    MessageVerdict,
    Quarantine,
    Refuse,
    ReplaceBody,
    Transaction,
)
from kartero.mail.replies import MILTER_REJECTED, MILTER_TEMPFAILED, Reply
from kartero.milter import protocol as p
from kartero.store.interface import Content, FileSpan
from tests.milters.harness import TestMilter, is_available

CLIENT = ClientInfo("S1", "smtp", "mx.example.test", "192.0.2.1", 40000, "client.example.org", "127.0.0.1", 25)
TX = Transaction("client.example.org", "TLSv1.3", "TLS_AES_256_GCM_SHA384", None, "alice@example.org", ("SIZE=100",))


@pytest.fixture(scope="module")
def milter() -> Iterator[TestMilter]:
    reason = is_available()
    if reason:
        pytest.fail(reason)
    with tempfile.TemporaryDirectory() as folder, TestMilter(Path(folder)) as running:
        yield running


def session(address: str, on_error: str = "tempfail", timeout_s: float = 5.0) -> MilterSession:
    config = MilterConfig(address, on_error=on_error, timeout_s=timeout_s)
    return MilterFilter(config, version="Kartero 1.0", local_domains=["example.test"]).session()


async def through_rcpt(s: MilterSession, rcpts: tuple[str, ...] = ("bob@example.test",),
                       sender: str = "alice@example.org") -> Transaction:  # fmt: skip
    tx = Transaction(TX.helo, TX.tls_version, TX.tls_cipher, None, sender, TX.mail_params)
    assert await s.connect(CLIENT) == Continue()
    assert await s.helo("client.example.org") == Continue()
    assert await s.mail_from(tx) == Continue()
    for rcpt in rcpts:
        assert await s.rcpt_to(tx, rcpt, ()) == Continue()
    return Transaction(tx.helo, tx.tls_version, tx.tls_cipher, None, sender, tx.mail_params, rcpts, "Q0001")


def message(action: str, extra: bytes = b"", body: bytes = b"Hello.\r\n") -> bytes:
    return (b"From: alice@example.org\r\nSubject: greetings\r\n\tfolded\r\nX-Delete-Me: soon gone\r\n"
            b"X-Test-Action: " + action.encode() + b"\r\n" + extra + b"\r\n" + body)  # fmt: skip


def run(coro_fn: Callable[[], object]) -> object:
    return asyncio.run(asyncio.wait_for(coro_fn(), 30))  # type: ignore[arg-type]


# -- phases and what the milter saw ----------------------------------------------------------------------------


def test_the_milter_sees_postfix_style_macros_and_fields(milter: TestMilter) -> None:
    async def go() -> MessageVerdict:
        s = session(milter.address)
        tx = await through_rcpt(s)
        verdict = await s.message(tx, message("none"))
        await s.close()
        return verdict

    assert run(go) == MessageVerdict(Continue())
    seen = milter.seen()[-1]
    assert seen["connect"] == ["client.example.org", ["192.0.2.1", 40000]]
    assert seen["helo"] == "client.example.org"
    assert seen["mail"] == ["<alice@example.org>", "SIZE=100"]
    assert seen["rcpt"] == [["<bob@example.test>"]]
    assert seen["eom_macros"] == {
        "j": "mx.example.test", "{daemon_name}": "mx.example.test", "{daemon_addr}": "127.0.0.1",
        "v": "Kartero 1.0", "_": "client.example.org [192.0.2.1]", "{client_addr}": "192.0.2.1",
        "{client_port}": "40000", "{client_name}": "client.example.org", "{client_ptr}": "client.example.org",
        "{client_resolve}": "OK", "i": "Q0001", "{mail_addr}": "alice@example.org", "{mail_host}": "example.org",
        "{mail_mailer}": "smtp", "{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384",
        "{rcpt_addr}": "bob@example.test", "{rcpt_host}": "example.test", "{rcpt_mailer}": "local",
    }  # fmt: skip
    assert seen["headers"] == [["From", "alice@example.org"], ["Subject", "greetings\n\tfolded"],
                               ["X-Delete-Me", "soon gone"], ["X-Test-Action", "none"]]  # fmt: skip
    assert seen["body"] == "Hello.\r\n"


CUSTOM_EOM = Reply(550, "5.7.0", "Custom rejection by the test milter\nwith a second line")
CUSTOM_MAIL = Reply(553, "5.7.2", "Custom refusal at mail\nsecond line")
EOM_CASES = [
    ("add-header", MessageVerdict(Continue(), (AddHeader("X-Test-Added", "yes"),))),
    ("add-folded-header", MessageVerdict(Continue(), (AddHeader("X-Test-Folded", "first line\r\n\tsecond line"),))),
    ("insert-header", MessageVerdict(Continue(), (InsertHeader(0, "X-Test-Inserted", "at the top"),))),
    ("change-header", MessageVerdict(Continue(), (ChangeHeader("Subject", 1, "changed by the milter"),))),
    ("delete-header", MessageVerdict(Continue(), (ChangeHeader("X-Delete-Me", 1, ""),))),
    ("add-rcpt", MessageVerdict(Continue(), (AddRecipient("added@example.test"),))),
    ("del-rcpt", MessageVerdict(Continue(), (DeleteRecipient("bob@example.test"),))),
    ("replace-body", MessageVerdict(Continue(), (ReplaceBody(b"Replaced body.\r\nSecond line.\r\n"),))),
    ("change-from", MessageVerdict(Continue(), (ChangeSender("changed@example.org"),))),
    ("quarantine", MessageVerdict(Continue(), (Quarantine("test quarantine"),))),
    ("reject", MessageVerdict(Refuse(MILTER_REJECTED))),
    ("tempfail", MessageVerdict(Refuse(MILTER_TEMPFAILED))),
    ("discard", MessageVerdict(Discard())),
    ("accept", MessageVerdict(AcceptRest())),
    ("replycode", MessageVerdict(Refuse(CUSTOM_EOM))),
    ("add-header, reject", MessageVerdict(Refuse(MILTER_REJECTED))),  # changes with a refusal are void
    ("reject-at-header", MessageVerdict(Refuse(MILTER_REJECTED))),
    ("skip-body, add-header", MessageVerdict(Continue(), (AddHeader("X-Test-Added", "yes"),))),
]  # fmt: skip


def test_every_end_of_message_action_and_reply(milter: TestMilter) -> None:
    async def go() -> list[MessageVerdict]:
        s = session(milter.address)
        tx = await through_rcpt(s)
        verdicts = []
        for action, _ in EOM_CASES:  # one session, one transaction after another, as over SMTP
            verdicts.append(await s.message(tx, message(action)))
            await s.abort()
            assert await s.mail_from(tx) == Continue()
            assert await s.rcpt_to(tx, "bob@example.test", ()) == Continue()
        await s.close()
        return verdicts

    assert run(go) == [verdict for _, verdict in EOM_CASES]


@pytest.mark.parametrize(("sender", "rcpt", "mail_verdict", "rcpt_verdict", "message_verdict"), [
    ("reject-mail@example.org", None, Refuse(MILTER_REJECTED), None, None),
    ("tempfail-mail@example.org", None, Refuse(MILTER_TEMPFAILED), None, None),
    ("replycode-mail@example.org", None, Refuse(CUSTOM_MAIL), None, None),
    ("accept-mail@example.org", "bob@example.test", AcceptRest(), Continue(), MessageVerdict(Continue())),
    ("alice@example.org", "reject-rcpt@example.test", Continue(), Refuse(MILTER_REJECTED), None),
    ("alice@example.org", "tempfail-rcpt@example.test", Continue(), Refuse(MILTER_TEMPFAILED), None),
    ("alice@example.org", "replycode-rcpt@example.test", Continue(),
     Refuse(Reply(553, "5.7.2", "Custom refusal at rcpt\nsecond line")), None),
    ("alice@example.org", "discard-rcpt@example.test", Continue(), Discard(), MessageVerdict(Continue())),
])  # fmt: skip
def test_mail_and_rcpt_replies(milter: TestMilter, sender: str, rcpt: str | None, mail_verdict: object,
                               rcpt_verdict: object, message_verdict: object) -> None:  # fmt: skip
    async def go() -> None:
        s = session(milter.address)
        assert await s.connect(CLIENT) == Continue()
        tx = Transaction("h", None, None, None, sender)
        assert await s.mail_from(tx) == mail_verdict
        if rcpt is not None:
            assert await s.rcpt_to(tx, rcpt, ()) == rcpt_verdict
        if message_verdict is not None:
            assert await s.message(tx, message("add-header")) == message_verdict
        await s.abort()
        assert await s.mail_from(Transaction("h", None, None, None, "alice@example.org")) == Continue()
        await s.close()

    run(go)


def test_reject_at_helo_refuses_the_rest_of_the_session(milter: TestMilter) -> None:
    async def go() -> None:
        s = session(milter.address)
        assert await s.connect(CLIENT) == Continue()
        assert await s.helo("reject-helo.test") == Refuse(MILTER_REJECTED)
        assert await s.mail_from(TX) == Refuse(MILTER_REJECTED)
        assert await s.message(TX, message("accept")) == MessageVerdict(Refuse(MILTER_REJECTED))
        await s.close()

    run(go)


def test_a_spooled_message_is_streamed_in_65535_octet_chunks(milter: TestMilter, tmp_path: Path) -> None:
    body = b"".join(b"line %06d of a long body\r\n" % i for i in range(20000))  # 540 KB
    spool = tmp_path / "spool"
    head = message("add-header", body=b"")
    spool.write_bytes(b"junk before" + body)

    async def go() -> MessageVerdict:
        s = session(milter.address)
        tx = await through_rcpt(s)
        verdict = await s.message(tx, Content(head, FileSpan(spool, len(b"junk before"), len(body))))
        await s.close()
        return verdict

    assert run(go) == MessageVerdict(Continue(), (AddHeader("X-Test-Added", "yes"),))
    assert milter.seen()[-1]["body"] == body.decode()


def test_unix_socket_milter(tmp_path: Path) -> None:
    if reason := is_available():
        pytest.fail(reason)
    folder = Path(tempfile.mkdtemp(prefix="milter-", dir="/tmp"))  # short: a socket path has ~100 octets
    with TestMilter(tmp_path, unix_path=folder / "m.sock") as running:

        async def go() -> MessageVerdict:
            s = session(running.address)
            tx = await through_rcpt(s)
            verdict = await s.message(tx, message("change-header"))
            await s.close()
            return verdict

        assert run(go) == MessageVerdict(Continue(), (ChangeHeader("Subject", 1, "changed by the milter"),))


# -- faults --------------------------------------------------------------------------------------------------------


async def fake_milter(script: Callable[[int, asyncio.StreamWriter], bool]) -> AsyncIterator[str]:
    """A scripted milter: negotiates, answers continue to each command until `script(command, writer)`
    says stop (then it closes the connection)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = struct.unpack(">I", await reader.readexactly(4))[0]
                packet = await reader.readexactly(length)
                command = packet[0]
                if command == p.OPTNEG:
                    writer.write(p.packet(p.OPTNEG, struct.pack(">III", 6, p.ACTIONS, 0)))
                elif command in (p.MACRO, p.ABORT):
                    continue
                elif command == p.QUIT:
                    break
                elif script(command, writer):
                    writer.write(p.packet(p.R_CONTINUE))
                else:
                    break
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _closes_at_body(command: int, writer: asyncio.StreamWriter) -> bool:
    return command != p.BODY


def _closes_after_changes(command: int, writer: asyncio.StreamWriter) -> bool:
    if command == p.END_OF_MESSAGE:
        writer.write(p.packet(p.R_ADDHEADER, b"X-Half\0applied\0"))  # then no final answer
        return False
    return True


@pytest.mark.parametrize("script", [_closes_at_body, _closes_after_changes])
@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_milter_closing_mid_message_changes_nothing(
    script: Callable[[int, asyncio.StreamWriter], bool], on_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async for address in fake_milter(script):
            s = session(address, on_error=on_error)
            tx = await through_rcpt(s)
            expected = Refuse(MILTER_TEMPFAILED) if on_error == "tempfail" else AcceptRest()
            assert await s.message(tx, message("x")) == MessageVerdict(expected)
            # no second attempt in this session
            later = Refuse(MILTER_TEMPFAILED) if on_error == "tempfail" else Continue()
            assert await s.mail_from(tx) == later
            await s.close()

    with caplog.at_level(logging.WARNING, logger="kartero.filters.milter"):
        run(go)
    (line,) = [r.getMessage() for r in caplog.records if "milter.failed" in r.getMessage()]
    assert line.startswith("event=milter.failed milter=127.0.0.1:") and "phase=message" in line
    assert "detail=\"the milter closed the connection\"" in line


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_milter_not_listening(on_error: str, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        s = session(f"127.0.0.1:{port}", on_error=on_error)
        if on_error == "tempfail":
            assert await s.connect(CLIENT) == Refuse(MILTER_TEMPFAILED)
            assert await s.helo("x") == Refuse(MILTER_TEMPFAILED)
            assert await s.message(TX, b"A: b\r\n\r\n") == MessageVerdict(Refuse(MILTER_TEMPFAILED))
        else:
            assert await s.connect(CLIENT) == AcceptRest()
            assert await s.mail_from(TX) == Continue()
            assert await s.message(TX, b"A: b\r\n\r\n") == MessageVerdict(Continue())
        await s.abort()
        await s.close()

    with caplog.at_level(logging.WARNING, logger="kartero.filters.milter"):
        run(go)
    lines = [r.getMessage() for r in caplog.records if "milter.failed" in r.getMessage()]
    assert len(lines) == 1 and "phase=connect" in lines[0] and "cannot connect" in lines[0]


def test_milter_slower_than_timeout(milter: TestMilter, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> MessageVerdict:
        s = session(milter.address, timeout_s=0.5)
        tx = await through_rcpt(s)
        started = time.monotonic()
        verdict = await s.message(tx, message("add-header, sleep", b"X-Test-Sleep: 3\r\n"))
        assert time.monotonic() - started < 2.5
        await s.close()
        return verdict

    with caplog.at_level(logging.WARNING, logger="kartero.filters.milter"):
        assert run(go) == MessageVerdict(Refuse(MILTER_TEMPFAILED))
    (line,) = [r.getMessage() for r in caplog.records if "milter.failed" in r.getMessage()]
    assert "phase=message" in line and "no answer within 0.5 s" in line
