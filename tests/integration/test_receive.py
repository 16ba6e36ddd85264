"""Receiving mail: a real `kartero serve` on loopback, real clients (smtplib, swaks, raw sockets)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, strip_trace, tls_context, wait_for

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".A line that starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"Last line.\r\n"
)


def client(mx: KarteroServer) -> smtplib.SMTP:
    return smtplib.SMTP(mx.host, mx.port, local_hostname="client.example.org", timeout=30)


class Raw:
    """A plain socket client for what smtplib will not send."""

    def __init__(self, mx: KarteroServer) -> None:
        self.sock = socket.create_connection((mx.host, mx.port), timeout=15)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply, lines joined by newlines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


# -- delivery, byte for byte -------------------------------------------------------------------------


def test_smtplib_message_stored_byte_identical_with_trace_headers(mx: KarteroServer) -> None:
    with client(mx) as s:
        refused = s.sendmail("alice@example.org", ["bob@example.test"], MESSAGE)
    assert refused == {}
    (stored,) = mx.messages("bob@example.test")
    assert strip_trace(stored) == MESSAGE
    head = stored.split(b"\r\nFrom: Alice", 1)[0].decode()
    assert head.startswith(
        "Return-Path: <alice@example.org>\r\n"
        "Received: from client.example.org ([127.0.0.1])\r\n"
        "\tby mx.example.test (Kartero) with ESMTP\r\n"
        "\tid "
    )
    assert " for <bob@example.test>; " in head
    (line,) = mx.wait_events("smtp.message", 1)
    assert "mail_from=<alice@example.org> rcpt=<bob@example.test>" in line
    assert f"size={len(MESSAGE)}" in line and 'result="250 2.0.0 Message accepted as ' in line


def test_starttls_delivery_notes_tls_in_received(mx: KarteroServer) -> None:
    with client(mx) as s:
        s.starttls(context=tls_context())
        s.sendmail("alice@example.org", ["bob@example.test"], MESSAGE)
    (stored,) = mx.messages("bob@example.test")
    assert strip_trace(stored) == MESSAGE
    assert b"with ESMTPS (version=TLSv1.3 cipher=" in stored


def test_several_recipients_share_one_stored_copy(mx: KarteroServer) -> None:
    with client(mx) as s:
        s.sendmail(
            "alice@example.org",
            ["bob@example.test", "carol@example.test", "BOB@Example.Test", "team@example.test"],
            MESSAGE,
        )
    bob, carol = mx.messages("bob@example.test"), mx.messages("carol@example.test")
    assert len(bob) == 1 and len(carol) == 1  # named three times (alias included): one copy each
    assert bob[0] == carol[0]
    store = mx.store()
    try:
        blobs = {m.blob_id for a in ("bob@example.test", "carol@example.test") for m in _inbox(store, a)}
    finally:
        store.close()
    assert len(blobs) == 1
    assert b" for <" not in bob[0].split(b"\r\nFrom:")[0]  # several recipients: no `for` clause


def _inbox(store, address):  # type: ignore[no-untyped-def]
    account = store.accounts.get_account(address)
    return store.mail.message_rows(store.mail.get_mailbox(account.id, "INBOX").id)


def test_8bit_and_smtputf8_messages(mx: KarteroServer) -> None:
    body8 = "Subject: caf\u00e9\r\n\r\nna\u00efve \u00fcber \u65e5\u672c\r\n".encode()
    utf8 = "From: jos\u00e9@ejemplo.example\r\nSubject: \u00a1hola!\r\n\r\n\u4f60\u597d\r\n".encode()
    with client(mx) as s:
        s.sendmail("alice@example.org", ["bob@example.test"], body8, mail_options=["BODY=8BITMIME"])
        s.sendmail("jos\u00e9@ejemplo.example", ["bob@example.test"], utf8, mail_options=["SMTPUTF8"])
    first, second = mx.messages("bob@example.test")
    assert strip_trace(first) == body8
    assert strip_trace(second) == utf8
    assert second.startswith("Return-Path: <jos\u00e9@ejemplo.example>\r\n".encode())
    assert b"with UTF8SMTP\r\n" in second
    store = mx.store()
    try:
        (info,) = [m for m in _inbox(store, "bob@example.test") if m.uid == 2]
        envelope = store.mail.read_envelope(info.blob_id)
    finally:
        store.close()
    assert envelope.smtputf8 is True and envelope.sender == "jos\u00e9@ejemplo.example"


def test_swaks_with_starttls_and_pipelining(mx: KarteroServer, tmp_path: Path) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.fail("swaks is not installed (Debian package swaks; .ci/run installs it)")
    eml = tmp_path / "msg.eml"
    data = b"From: a@example.org\r\nSubject: caf\xc3\xa9\r\n\r\nna\xc3\xafve body\r\n.dot line\r\n"
    eml.write_bytes(data)
    result = subprocess.run(
        [
            swaks, "--server", mx.host, "--port", str(mx.port), "--from", "a@example.org",
            "--to", "bob@example.test", "--data", f"@{eml}", "--tls", "--pipeline",
            "--helo", "swaks.example.org",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0 Message accepted as " in result.stdout
    (stored,) = mx.messages("bob@example.test")
    # swaks always ends DATA with its own CRLF before the final dot; the rest is the file, byte for byte.
    assert strip_trace(stored) == data + b"\r\n"
    assert b"Received: from swaks.example.org ([127.0.0.1])\r\n\tby mx.example.test (Kartero) with ESMTPS" in stored


def test_20_mb_message(mx: KarteroServer) -> None:
    line = b"0123456789" * 7 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
    assert len(body) > 20_000_000
    with client(mx) as s:
        s.sendmail("alice@example.org", ["bob@example.test"], body)
    (stored,) = mx.messages("bob@example.test")
    assert strip_trace(stored) == body


def test_bdat_from_a_raw_client(mx: KarteroServer) -> None:
    c = Raw(mx)
    assert c.reply().startswith(b"220 mx.example.test")
    c.send(b"EHLO raw.example\r\n")
    assert b"250-CHUNKING" in c.reply()
    payload = b"Subject: chunks\r\n\r\n.no stuffing here\r\n"
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\n")
    c.send(b"BDAT 10\r\n" + payload[:10] + b"BDAT %d LAST\r\n" % (len(payload) - 10) + payload[10:])
    assert c.reply() == b"250 2.1.0 Sender OK"
    assert c.reply() == b"250 2.1.5 Recipient OK"
    assert c.reply() == b"250 2.0.0 10 octets received"
    assert c.reply().startswith(b"250 2.0.0 Message accepted as ")
    c.close()
    (stored,) = mx.messages("bob@example.test")
    assert strip_trace(stored) == payload


# -- who may receive: recipients, aliases, relay refusal ----------------------------------------------


def test_recipient_validation_and_addressing(mx: KarteroServer) -> None:
    with client(mx) as s:
        s.ehlo()
        s.mail("alice@example.org")
        assert s.rcpt("nobody@example.test") == (550, b"5.1.1 No such user here")
        assert s.rcpt("bob+lists@example.test")[0] == 250  # plus-addressing
        assert s.rcpt("anything@other.test")[0] == 250  # catch-all
        assert s.rcpt("postmaster@example.test")[0] == 250  # first account created
        assert s.rcpt("Postmaster")[0] == 250  # RFC 5321 §4.1.1.3 bare form
        assert s.data(b"Subject: x\r\n\r\nx\r\n")[0] == 250
    assert len(mx.messages("bob@example.test")) == 1  # bob+lists and postmaster: one copy
    assert len(mx.messages("dave@other.test")) == 1


@pytest.mark.parametrize(
    "rcpt",
    [
        "<victim@elsewhere.example>",
        "<victim%elsewhere.example@example.test>",
        '<"victim@elsewhere.example"@example.test>',
        "<@example.test:victim@elsewhere.example>",
        "<elsewhere.example!victim@example.test>",
        "<victim@[127.0.0.1]>",
        "<bob@example.test.elsewhere.example>",
    ],
)
@pytest.mark.store_unused("each RCPT is refused before any directory lookup (policy/inbound.py check_local)")
def test_no_open_relay_even_from_loopback(mx: KarteroServer, rcpt: str) -> None:
    c = Raw(mx)
    c.reply()
    c.send(b"EHLO raw.example\r\nMAIL FROM:<spammer@example.org>\r\n")
    c.reply()
    assert c.reply() == b"250 2.1.0 Sender OK"
    c.send(f"RCPT TO:{rcpt}\r\n".encode())
    assert c.reply() == b"554 5.7.1 Relay access denied"
    c.send(b"DATA\r\n")
    assert c.reply() == b"554 5.5.1 No valid recipients"
    c.close()


def test_null_sender_accepted(mx: KarteroServer) -> None:
    bounce = b"Subject: Undelivered Mail\r\n\r\nbounce\r\n"
    with client(mx) as s:
        s.sendmail("<>", ["bob@example.test"], bounce)
    (stored,) = mx.messages("bob@example.test")
    assert stored.startswith(b"Return-Path: <>\r\n")


@pytest.mark.store_unused("VRFY and EXPN answer without any lookup (smtp/server.py _vrfy, _expn)")
def test_vrfy_and_expn_reveal_nothing(mx: KarteroServer) -> None:
    with client(mx) as s:
        assert s.verify("bob@example.test")[0] == 252
        assert s.verify("nobody@example.test")[0] == 252
        assert s.expn("team@example.test")[0] == 502


def test_accounts_added_while_running_receive_mail(mx: KarteroServer) -> None:
    with client(mx) as s:
        s.ehlo()
        s.mail("alice@example.org")
        assert s.rcpt("erin@example.test")[0] == 550
        s.rset()
        mx.add_user("erin@example.test")
        mx.add_alias("sales@example.test", "erin@example.test")
        s.sendmail("alice@example.org", ["erin@example.test", "sales@example.test"], MESSAGE)
    assert [strip_trace(m) for m in mx.messages("erin@example.test")] == [MESSAGE]


# -- load, concurrency, misbehaving clients ----------------------------------------------------------


def test_200_messages_over_20_concurrent_connections_stored_exactly_once(mx: KarteroServer) -> None:
    def send(conn_no: int) -> list[bytes]:
        sent = []
        with client(mx) as s:
            for i in range(10):
                msg = f"Subject: load {conn_no}-{i}\r\nX-Seq: {conn_no:02d}{i:02d}\r\n\r\nbody {conn_no} {i}\r\n"
                s.sendmail("load@example.org", ["bob@example.test"], msg.encode())
                sent.append(msg.encode())
        return sent

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        sent = [m for batch in pool.map(send, range(20)) for m in batch]
    stored = [strip_trace(m) for m in mx.messages("bob@example.test")]
    assert len(stored) == 200
    assert sorted(stored) == sorted(sent)
    store = mx.store()
    try:
        uids = [m.uid for m in _inbox(store, "bob@example.test")]
    finally:
        store.close()
    assert uids == list(range(1, 201))


def test_client_dropping_mid_data_stores_nothing(mx: KarteroServer) -> None:
    c = Raw(mx)
    c.reply()
    c.send(b"EHLO raw.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    c.reply()
    c.reply()
    c.reply()
    assert c.reply().startswith(b"354")
    c.send(b"Subject: half\r\n\r\nthis message never ends\r\n")
    c.close()
    wait_for(lambda: any('reason="peer closed during message data"' in x for x in mx.log_events("smtp.disconnect")))
    assert mx.messages("bob@example.test") == []
    with client(mx) as s:  # still serving
        s.sendmail("alice@example.org", ["bob@example.test"], MESSAGE)
    assert len(mx.messages("bob@example.test")) == 1


def test_garbage_gets_error_replies_and_others_keep_being_served(mx: KarteroServer) -> None:
    bad = Raw(mx)
    bad.reply()
    bad.send(os.urandom(3000).replace(b"\n", b"") + b"\r\n")
    assert bad.reply().startswith(b"500 5.5.")
    bad.send(b"\x00\xff\xfe garbage\r\n")
    assert bad.reply() == b"500 5.5.2 Syntax error, command unrecognized"
    bad.send(b"A" * 200_000)  # an endless line is discarded, not buffered
    with client(mx) as s:
        s.sendmail("alice@example.org", ["bob@example.test"], MESSAGE)
    bad.send(b"\r\nNOOP\r\n")
    assert bad.reply() == b"500 5.5.2 Line too long"
    assert bad.reply() == b"250 2.0.0 OK"
    bad.close()
    assert [strip_trace(m) for m in mx.messages("bob@example.test")] == [MESSAGE]


def test_smuggling_over_the_wire(mx: KarteroServer) -> None:
    c = Raw(mx)
    c.reply()
    c.send(b"EHLO raw.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for _ in range(4):
        c.reply()
    c.send(
        b"Subject: one\r\n\r\nfirst\n.\nMAIL FROM:<admin@example.test>\r\nRCPT TO:<carol@example.test>\r\n"
        b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    assert c.reply().startswith(b"554 5.6.0 Message refused: bare CR or LF")
    c.close()
    assert mx.messages("bob@example.test") == [] and mx.messages("carol@example.test") == []


@pytest.mark.store_unused("STARTTLS and the replies after it: no message, no recipient")
def test_starttls_injection_is_dropped(mx: KarteroServer) -> None:
    c = Raw(mx)
    c.reply()
    c.send(b"EHLO raw.example\r\n")
    c.reply()
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert c.reply() == b"220 2.0.0 Ready to start TLS"
    tls = tls_context().wrap_socket(c.sock, server_hostname="mx.example.test")
    tls.sendall(b"NOOP\r\n")
    assert tls.recv(1000) == b"250 2.0.0 OK\r\n"  # not a reply to the injected MAIL
    tls.sendall(b"MAIL FROM:<a@example.org>\r\n")
    assert tls.recv(1000) == b"503 5.5.1 Send HELO/EHLO first\r\n"
    tls.close()


@pytest.mark.store_unused("the command timeout of a session that sends nothing")
def test_idle_client_times_out_with_421(tmp_path: Path) -> None:
    mx = KarteroServer(tmp_path / "mx", limits='command_timeout = "1s"')
    mx.start()
    try:
        c = Raw(mx)
        c.reply()
        started = time.monotonic()
        assert c.reply() == b"421 4.4.2 Timeout, closing connection"
        assert 0.8 < time.monotonic() - started < 5
        c.close()
    finally:
        assert mx.stop() == 0


@pytest.mark.store_unused("greetings and the 421 past the connection limit")
def test_connection_limit(tmp_path: Path) -> None:
    mx = KarteroServer(tmp_path / "mx", limits="connections = 2")
    mx.start()
    try:
        first, second = Raw(mx), Raw(mx)
        assert first.reply().startswith(b"220 ") and second.reply().startswith(b"220 ")
        third = Raw(mx)
        assert third.reply() == b"421 4.7.0 Too many connections, try again later"
        for c in (first, second, third):
            c.close()
    finally:
        assert mx.stop() == 0


def test_message_size_limit_from_config(tmp_path: Path) -> None:
    mx = KarteroServer(tmp_path / "mx", limits='message_size = "10KB"')
    mx.add_user("bob@example.test")
    mx.start()
    try:
        with client(mx) as s:
            s.ehlo()
            assert s.esmtp_features["size"] == "10000"
            with pytest.raises(smtplib.SMTPSenderRefused) as exc:
                s.sendmail("a@example.org", ["bob@example.test"], b"x" * 10_001)
            assert exc.value.smtp_code == 552
        assert mx.messages("bob@example.test") == []
    finally:
        assert mx.stop() == 0


# -- process lifecycle ---------------------------------------------------------------------------------


def test_sigterm_lets_a_message_in_progress_finish(mx: KarteroServer) -> None:
    c = Raw(mx)
    c.reply()
    c.send(b"EHLO raw.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for _ in range(3):
        c.reply()
    assert c.reply().startswith(b"354")
    idle = Raw(mx)
    idle.reply()
    assert mx.process is not None
    mx.process.terminate()
    assert idle.reply() == b"421 4.3.2 Service shutting down, closing connection"
    c.send(b"Subject: finishing\r\n\r\nmade it\r\n.\r\n")
    assert c.reply().startswith(b"250 2.0.0 Message accepted as ")
    assert c.reply() == b"421 4.3.2 Service shutting down, closing connection"
    # The exit of that one SIGTERM: stop() would send a second if it came before the exit, and one that
    # arrives after the event loop has closed (its handlers gone) ends the process with -15.
    assert mx.process.wait(30) == 0
    (stored,) = mx.messages("bob@example.test")
    assert strip_trace(stored) == b"Subject: finishing\r\n\r\nmade it\r\n"


def test_passwords_never_logged(mx: KarteroServer) -> None:
    mx.add_user("frank@example.test", "Tr0ub4dor&3-unique")
    with client(mx) as s:
        s.sendmail("alice@example.org", ["frank@example.test"], MESSAGE)
    mx.stop()
    assert "Tr0ub4dor" not in mx.log
    if mx.store_url:  # every row of every table, as text
        import psycopg

        with psycopg.connect(mx.store_url) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            db = "".join(str(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables).encode()
        assert b"frank@example.test" in db
    else:
        db = (mx.root / "data" / "kartero.db").read_bytes()
    assert b"Tr0ub4dor" not in db


def _peer_certificate(mx: KarteroServer) -> bytes:
    with client(mx) as s:
        s.starttls(context=tls_context())
        der = s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der
    return der


@pytest.mark.store_unused("the TLS certificate the server shows, before and after SIGHUP")
def test_sighup_reloads_the_certificate(mx: KarteroServer) -> None:
    from kartero.tls import make_self_signed

    before = _peer_certificate(mx)
    make_self_signed(mx.root / "tls" / "cert.pem", mx.root / "tls" / "key.pem", ["mx.example.test"])
    assert mx.process is not None
    mx.process.send_signal(signal.SIGHUP)
    wait_for(lambda: mx.log_events("tls.reloaded"))
    after = _peer_certificate(mx)
    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert((mx.root / "tls" / "cert.pem").read_text())
