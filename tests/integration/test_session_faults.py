"""A bug behind the SMTP adapter ends that one session with 451 and a logged traceback, nothing more."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from pathlib import Path

import pytest

from kartero.mail import replies
from kartero.mail.address import Path as SMTPPath
from kartero.net.session import SessionContext, SMTPSession
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, RcptContext
from kartero.smtp.events import Envelope
from kartero.smtp.server import ServerSettings
from kartero.store.sqlite import SQLiteStore


class ExplodingPolicy:
    """Accepts everyone except `boom@...`, for which it has a bug."""

    def check_mail(self, path: SMTPPath, user: str | None) -> Decision:
        return Accept(replies.SENDER_OK)

    def check_rcpt(self, path: SMTPPath, context: RcptContext) -> Decision | Future[Decision]:
        assert path.mailbox is not None
        if path.mailbox.local_part == "boom":
            raise RuntimeError("secret internals in the exception text")
        return Accept(replies.RECIPIENT_OK, (1,), str(path))

    def check_message(self, envelope: Envelope, data: bytes, client_ip: str) -> MessageDecision:
        return AcceptMessage(data)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    lines = [await reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(await reader.readline())
    return b"".join(lines)


def test_bug_in_a_decision_ends_only_that_session(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", "h")
    store.start()

    async def scenario() -> None:
        sessions: set[SMTPSession] = set()
        loop = asyncio.get_running_loop()
        ctx = SessionContext(
            listener="smtp",
            settings=ServerSettings(hostname="mx.example.test"),
            policy=ExplodingPolicy(),
            store=store,
            tls_context=lambda: None,
            spawn=lambda coro: loop.create_task(coro) and None,
            sessions=sessions,
            on_session_end=lambda: None,
            is_stopping=lambda: False,
        )
        server = await loop.create_server(lambda: SMTPSession(ctx), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _reply(reader)
            writer.write(b"HELO a.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<boom@example.test>\r\n")
            assert await _reply(reader) == b"250 mx.example.test\r\n"
            assert await _reply(reader) == b"250 2.1.0 Sender OK\r\n"
            assert await _reply(reader) == b"451 4.3.0 Local error in processing, try again later\r\n"
            assert await reader.read() == b""  # closed
            writer.close()
            # The server goes on serving everyone else.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _reply(reader)
            writer.write(b"HELO a.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
            for _ in range(3):
                await _reply(reader)
            assert (await _reply(reader)).startswith(b"354")
            writer.write(b"Subject: fine\r\n\r\nstill here\r\n.\r\nQUIT\r\n")
            assert (await _reply(reader)).startswith(b"250 2.0.0 Message accepted as ")
            assert await _reply(reader) == b"221 2.0.0 Bye\r\n"
            writer.close()
        server.close()
        assert not sessions

    with caplog.at_level(logging.INFO, logger="kartero"):
        asyncio.run(scenario())
    store.close()
    failures = [r for r in caplog.records if "event=smtp.session_failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "secret internals" in str(failures[0].exc_info[1])


def broken_search_store(root: Path) -> SQLiteStore:
    store = SQLiteStore(root)

    def search(mailbox_id, criterion):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals of a broken search")

    store.mail.search = search  # type: ignore[method-assign]
    return store


def test_bug_in_an_imap_command_answers_serverbug_and_the_session_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kartero.auth.accounts import Authenticator
    from kartero.auth.passwords import hash_password
    from kartero.imap.connection import ImapSettings
    from kartero.net.channel import AccessContext
    from kartero.net.imap_session import ImapSession

    store = broken_search_store(tmp_path / "data")
    store.accounts.add_account("bob@example.test", hash_password("pw"))
    store.start()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sessions: set[object] = set()
        ctx = AccessContext(
            listener="imap",
            settings=ImapSettings(hostname="imap.example.test"),
            store=store,
            authenticator=Authenticator(store.accounts),
            tls_context=lambda: None,
            implicit_tls=False,
            spawn=lambda coro: loop.create_task(coro) and None,
            sessions=sessions,
            on_session_end=lambda: None,
            is_stopping=lambda: False,
        )
        server = await loop.create_server(ImapSession.factory(ctx), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()
            writer.write(b"a LOGIN bob@example.test pw\r\nb SELECT INBOX\r\n")
            while not (await reader.readline()).startswith(b"b OK"):
                pass
            writer.write(b"c SEARCH ALL\r\nd NOOP\r\n")
            assert await reader.readline() == b"c NO [SERVERBUG] Internal error, try again\r\n"
            assert await reader.readline() == b"d OK NOOP completed\r\n"
            writer.close()
        server.close()

    with caplog.at_level(logging.INFO, logger="kartero"):
        asyncio.run(scenario())
    store.close()
    failures = [r for r in caplog.records if "event=imap.command_failed" in r.getMessage()]
    assert len(failures) == 1 and "secret internals" in str(failures[0].exc_info[1])  # type: ignore[index]
