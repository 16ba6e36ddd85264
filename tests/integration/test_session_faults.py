"""A bug or a hang behind the SMTP adapter ends that one command or message with 451 and a logged traceback,
nothing more; one in an IMAP command answers NO [SERVERBUG] and the session goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.intake import Intake
from kartero.mail import replies
from kartero.mail.address import Path as SMTPPath
from kartero.net.session import SessionContext, SMTPSession
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, RcptContext
from kartero.smtp.events import Envelope
from kartero.smtp.server import ServerSettings
from kartero.store.interface import Content
from kartero.store.sqlite import SQLiteStore


class FaultyPolicy:
    """Accepts everyone, except where the address or Subject: asks for a bug or a hang: at once (the
    eager step), after a suspension (a Task), or in a worker thread."""

    def __init__(self) -> None:
        self.blocking = Blocking()

    async def check_mail(self, path: SMTPPath, user: str | None) -> Decision:
        return Accept(replies.SENDER_OK)

    async def check_rcpt(self, path: SMTPPath, context: RcptContext) -> Decision:
        assert path.mailbox is not None
        match path.mailbox.local_part:
            case "boom":
                raise RuntimeError("secret internals in the exception text")
            case "later-boom":
                await asyncio.sleep(0)
                raise RuntimeError("secret internals, after a suspension")
            case "hang":
                await asyncio.get_running_loop().create_future()  # never done
        return Accept(replies.RECIPIENT_OK, (1,), str(path)[1:-1])

    async def check_message(self, envelope: Envelope, data: bytes | Content, client_ip: str) -> MessageDecision:
        assert isinstance(data, bytes)
        subject = data.partition(b"Subject: ")[2].partition(b"\r\n")[0]
        match subject:
            case b"raise":
                raise RuntimeError("secret internals of a check")
            case b"hang":
                await asyncio.get_running_loop().create_future()
            case b"raise in a thread":
                await self.blocking(5.0, _raise_in_thread)
            case b"hang in a thread":
                await self.blocking(0.5, time.sleep, 3.0)
        return AcceptMessage(data)


def _raise_in_thread() -> None:
    raise RuntimeError("secret internals of a check in a thread")


def _listener_fields(sessions: set[Any]) -> dict[str, Any]:
    """What every listener context of these tests has: no TLS, tasks on the running loop, never stopping."""
    loop = asyncio.get_running_loop()
    return {"tls_context": lambda: None, "spawn": lambda coro: loop.create_task(coro) and None,
            "sessions": sessions, "on_session_end": lambda: None, "is_stopping": lambda: False}  # fmt: skip


async def _reply(reader: asyncio.StreamReader) -> bytes:
    lines = [await reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(await reader.readline())
    return b"".join(lines)


LOCAL_ERROR = b"451 4.3.0 Local error in processing, try again later\r\n"


def test_issue_10_a_check_that_raises_or_hangs_ends_that_message_with_451_and_the_session_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "data")
    bob = store.accounts.add_account("bob@example.test", "h")
    store.start()

    async def scenario() -> None:
        sessions: set[SMTPSession] = set()
        loop = asyncio.get_running_loop()
        directory = DirectoryCache(store.accounts, ("example.test",))
        directory.prime()
        intake = Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0,
                        blocking=Blocking(), check_deadline_s=0.7)  # fmt: skip
        ctx = SessionContext(
            listener="smtp",
            settings=ServerSettings(hostname="mx.example.test"),
            policy=FaultyPolicy(),
            intake=intake,
            check_deadline_s=0.7,
            **_listener_fields(sessions),
        )
        server = await loop.create_server(SMTPSession.factory(ctx), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _reply(reader)

            async def command(line: bytes) -> bytes:
                writer.write(line + b"\r\n")
                return await _reply(reader)

            assert await command(b"HELO a.example") == b"250 mx.example.test\r\n"
            assert await command(b"MAIL FROM:<a@example.org>") == b"250 2.1.0 Sender OK\r\n"
            for rcpt in (b"boom", b"later-boom", b"hang"):  # the eager step, a Task, a Task past its deadline
                assert await command(b"RCPT TO:<%s@example.test>" % rcpt) == LOCAL_ERROR
            assert await command(b"RCPT TO:<bob@example.test>") == b"250 2.1.5 Recipient OK\r\n"
            for subject in (b"raise", b"hang", b"raise in a thread", b"hang in a thread", b"fine"):
                if subject != b"raise":
                    assert await command(b"MAIL FROM:<a@example.org>") == b"250 2.1.0 Sender OK\r\n"
                    assert await command(b"RCPT TO:<bob@example.test>") == b"250 2.1.5 Recipient OK\r\n"
                assert (await command(b"DATA")).startswith(b"354")
                reply = await command(b"Subject: " + subject + b"\r\n\r\nbody\r\n.")
                if subject == b"fine":
                    assert reply.startswith(b"250 2.0.0 Message accepted as "), reply
                else:
                    assert reply == LOCAL_ERROR, (subject, reply)
            assert await command(b"QUIT") == b"221 2.0.0 Bye\r\n"
            writer.close()
        server.close()
        assert not sessions

    with caplog.at_level(logging.INFO, logger="kartero"):
        asyncio.run(scenario())
    inbox = store.mail.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    (row,) = store.mail.message_rows(inbox.id)  # only the fine one was stored
    assert store.mail.read_message(row.blob_id).endswith(b"Subject: fine\r\n\r\nbody\r\n")
    store.close()
    logged = [r for r in caplog.records if "event=smtp.decision_failed" in r.getMessage()
              or "event=intake.check_failed" in r.getMessage()]  # fmt: skip
    assert len(logged) == 7 and all(r.exc_info is not None for r in logged)  # 3 RCPT, 4 messages
    assert "secret internals of a check in a thread" in str([r.exc_info[1] for r in logged if r.exc_info])


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
        ctx = AccessContext(
            listener="imap",
            settings=ImapSettings(hostname="imap.example.test"),
            store=store,
            authenticator=Authenticator(store.accounts),
            **_listener_fields(set()),
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


def test_issue_10_a_hung_password_check_fails_that_imap_login_and_the_session_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """argon2 runs through Blocking with the listener's deadline: a check that never returns fails that
    LOGIN (NO) and the next LOGIN on the same connection is checked afresh."""
    from kartero.auth.accounts import Authenticator
    from kartero.auth.passwords import hash_password
    from kartero.imap.connection import ImapSettings
    from kartero.net.channel import AccessContext
    from kartero.net.imap_session import ImapSession

    store = SQLiteStore(tmp_path / "data")
    store.accounts.add_account("bob@example.test", hash_password("pw"))
    store.start()

    class HangingOnce(Authenticator):
        hung = False

        def verify(self, user: str, password: str):  # type: ignore[no-untyped-def]
            if not HangingOnce.hung:
                HangingOnce.hung = True
                time.sleep(3.0)  # a library call that does not come back in time
            return super().verify(user, password)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ctx = AccessContext(
            listener="imap",
            settings=ImapSettings(hostname="imap.example.test"),
            store=store,
            authenticator=HangingOnce(store.accounts),
            check_deadline_s=0.5,
            **_listener_fields(set()),
        )
        server = await loop.create_server(ImapSession.factory(ctx), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()
            writer.write(b"a LOGIN bob@example.test pw\r\n")
            assert (await reader.readline()).startswith(b"a NO [AUTHENTICATIONFAILED]")
            writer.write(b"b LOGIN bob@example.test pw\r\n")
            line = await reader.readline()
            while line.startswith(b"* "):
                line = await reader.readline()
            assert line.startswith(b"b OK"), line
            writer.close()
        server.close()

    with caplog.at_level(logging.INFO, logger="kartero"):
        asyncio.run(scenario())
    store.close()
    assert any("event=imap.login_check_failed" in r.getMessage() for r in caplog.records)
