"""Issue 13, Python hooks on a real `kartero serve`: a `[hooks] module` that rejects a sender domain at
MAIL, tags a header (read back over IMAP), reads a large spooled message through `message.raw`, raises
and hangs (451 4.7.1 under on_error = "tempfail", delivered under "accept"), and is reloaded on SIGHUP
(a broken file keeps the hooks in use; at startup it stops the server with a clear error)."""

from __future__ import annotations

import hashlib
import imaplib
import signal
import smtplib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD, KarteroServer

HOOKS = textwrap.dedent("""\
    import asyncio
    import hashlib

    from kartero import hooks


    async def on_mail_from(session: hooks.Session, sender: str) -> hooks.Answer:
        local, _, domain = sender.partition("@")
        if domain.lower() == "spam.example":
            return hooks.reject(550, "5.7.1 No mail from spam.example")
        if local == "raise":
            raise RuntimeError("a bug in the hook: secret detail")
        if local == "hang":
            await asyncio.Event().wait()
        return None


    def body_digest(raw) -> str:
        while raw.readline(4096) not in (b"\\r\\n", b""):
            pass
        digest = hashlib.sha256()
        while piece := raw.read(65536):
            digest.update(piece)
        return digest.hexdigest()


    async def on_message(session: hooks.Session, message: hooks.Message) -> hooks.Answer:
        if message.envelope.sender.startswith("raise-at-data@"):
            raise ValueError("broken at the end of DATA")
        tag = (f"listener={session.listener} client={session.client_address} helo={session.helo} "
               f"to={','.join(message.envelope.recipients)} subject={message.headers.get('Subject')}")
        results = [hooks.add_header("X-Hook-Tag", tag)]
        if message.size > 1_000_000:
            results.append(hooks.add_header("X-Hook-Body", await asyncio.to_thread(body_digest, message.raw)))
        return results
""")

RELOADED = textwrap.dedent("""\
    from kartero import hooks


    async def on_mail_from(session, sender):
        if sender.endswith("@reloaded.example"):
            return hooks.tempfail(450, "4.7.0 Reloaded hooks say later")
        return None
""")


def start(root: Path, on_error: str) -> KarteroServer:
    (root / "hooks.py").parent.mkdir(parents=True, exist_ok=True)
    (root / "hooks.py").write_text(HOOKS)
    config = f'[hooks]\nmodule = "hooks.py"\non_error = "{on_error}"\ntimeout = "1s"\n'
    server = KarteroServer(root, extra_config=config)
    server.add_user("bob@example.test")
    server.start()
    return server


@pytest.fixture(scope="module")
def tempfail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KarteroServer]:
    server = start(tmp_path_factory.mktemp("tempfail"), "tempfail")
    yield server
    assert server.stop() == 0, server.log


@pytest.fixture(scope="module")
def accept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KarteroServer]:
    server = start(tmp_path_factory.mktemp("accept"), "accept")
    yield server
    assert server.stop() == 0, server.log


def mail(server: KarteroServer, sender: str, message: bytes = b"") -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """(the MAIL reply, the end-of-data reply or (0, b"") when MAIL was refused)."""
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        reply = smtp.mail(sender)
        if reply[0] != 250:
            return reply, (0, b"")
        assert smtp.rcpt("bob@example.test")[0] == 250
        return reply, smtp.data(message or b"Subject: from %s\r\n\r\nHello.\r\n" % sender.encode())


def imap_messages(server: KarteroServer) -> list[bytes]:
    with imaplib.IMAP4(server.host, server.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [item[1] for item in data if isinstance(item, tuple)]


def header_field(message: bytes, name: bytes) -> bytes:
    head = message.split(b"\r\n\r\n", 1)[0]
    [value] = [line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.startswith(name + b": ")]
    return value


def test_issue_13_hooks_reject_a_sender_domain_at_mail(tempfail: KarteroServer) -> None:
    assert mail(tempfail, "alice@spam.example") == ((550, b"5.7.1 No mail from spam.example"), (0, b""))
    assert mail(tempfail, "alice@SPAM.example")[0][0] == 550


def test_issue_13_hooks_tag_a_header_seen_over_imap(tempfail: KarteroServer) -> None:
    before = len(imap_messages(tempfail))
    assert mail(tempfail, "alice@remote.test", b"Subject: tagged\r\n\r\nHello.\r\n")[1][0] == 250
    stored = imap_messages(tempfail)[before:]
    assert len(stored) == 1
    assert header_field(stored[0], b"X-Hook-Tag") == (
        b"listener=smtp client=127.0.0.1 helo=client.remote.test to=bob@example.test subject=tagged")
    assert stored[0].endswith(b"\r\n\r\nHello.\r\n")


def test_issue_13_hooks_read_a_spooled_message_as_a_stream(tempfail: KarteroServer) -> None:
    body = b"".join(b"line %07d of a message larger than the 1 MiB kept in memory\r\n" % i for i in range(40_000))
    before = len(imap_messages(tempfail))
    assert mail(tempfail, "alice@remote.test", b"Subject: large\r\n\r\n" + body)[1][0] == 250
    [stored] = imap_messages(tempfail)[before:]
    assert header_field(stored, b"X-Hook-Body") == hashlib.sha256(body).hexdigest().encode()
    assert stored.endswith(body)


def test_issue_13_a_hook_that_raises_or_hangs_tempfails(tempfail: KarteroServer) -> None:
    before = len(imap_messages(tempfail))
    refused = ((451, b"4.7.1 Policy check failed, try again later"), (0, b""))
    assert mail(tempfail, "raise@remote.test") == refused
    assert mail(tempfail, "hang@remote.test") == refused  # past the 1 s timeout
    at_data = mail(tempfail, "raise-at-data@remote.test")
    assert at_data == ((250, b"2.1.0 Sender OK"), (451, b"4.7.1 Policy check failed, try again later"))
    assert len(imap_messages(tempfail)) == before  # nothing stored
    failed = tempfail.wait_events("hooks.failed", 3)
    assert any("hook=on_mail_from" in line and "raised RuntimeError" in line for line in failed)
    assert any("hook=on_mail_from" in line and "no answer within 1 s" in line for line in failed)
    assert any("hook=on_message" in line and "raised ValueError" in line for line in failed)
    assert 'raise RuntimeError("a bug in the hook: secret detail")' in tempfail.log  # the traceback


def test_issue_13_on_error_accept_delivers_past_a_failing_hook(accept: KarteroServer) -> None:
    for sender in ("raise@remote.test", "hang@remote.test", "raise-at-data@remote.test"):
        assert mail(accept, sender)[1][0] == 250
    stored = imap_messages(accept)
    assert [header_field(m, b"Subject") for m in stored] == [
        b"from raise@remote.test", b"from hang@remote.test", b"from raise-at-data@remote.test"]
    assert [b"X-Hook-Tag: " in m for m in stored] == [True, True, False]  # on_message failed for the last
    assert len(accept.wait_events("hooks.failed", 3)) == 3


def test_issue_13_sighup_reloads_the_hooks_and_a_broken_file_keeps_them(accept: KarteroServer) -> None:
    assert accept.process is not None
    assert mail(accept, "alice@reloaded.example")[0][0] == 250
    (accept.root / "hooks.py").write_text(RELOADED)
    accept.process.send_signal(signal.SIGHUP)
    accept.wait_events("hooks.reloaded", 1)
    assert mail(accept, "alice@reloaded.example")[0] == (450, b"4.7.0 Reloaded hooks say later")
    assert mail(accept, "alice@spam.example")[0][0] == 250  # the old module is gone

    (accept.root / "hooks.py").write_text("async def on_mail_from(session, sender)\n")
    accept.process.send_signal(signal.SIGHUP)
    [failed] = accept.wait_events("hooks.reload_failed", 1)
    assert "line 1: expected ':'" in failed
    assert mail(accept, "alice@reloaded.example")[0][0] == 450  # still the hooks that loaded


def test_issue_13_a_broken_hooks_module_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "hooks.py").write_text("def on_message(session, message):\n    return None\n")
    server = KarteroServer(tmp_path, extra_config='[hooks]\nmodule = "hooks.py"\n')
    with pytest.raises(AssertionError, match="kartero exited with 1") as failure:
        server.start()
    assert (f"kartero: {server.config}: [hooks] module {tmp_path / 'hooks.py'}: on_message must be an "
            "`async def on_message(session, message)` function, not function") in str(failure.value)
