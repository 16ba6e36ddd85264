"""IMAP against a real `kartero serve`: imaplib, imapclient, mbsync, curl, IDLE woken by SMTP, COMPRESS."""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import socket
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, strip_trace, tls_context, wait_for
from tests.unit.mime import corpus

PASSWORD = "secret-password"


def send_mail(mx: KarteroServer, message: bytes, rcpt: str = "bob@example.test") -> None:
    with smtplib.SMTP(mx.host, mx.port, local_hostname="client.example.org", timeout=30) as s:
        assert s.sendmail("alice@example.org", [rcpt], message) == {}


def test_imaplib_over_starttls_and_imaps_reads_smtp_mail_byte_identical(mx: KarteroServer) -> None:
    send_mail(mx, corpus.MIXED)
    stored = mx.messages("bob@example.test")[0]
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(ssl_context=tls_context())
        assert imap.login("bob@example.test", PASSWORD)[0] == "OK"
        typ, data = imap.select("INBOX")
        assert (typ, data) == ("OK", [b"1"])
        typ, fetched = imap.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
        assert fetched[0][1] == stored  # type: ignore[index]
        assert f"RFC822.SIZE {len(stored)}".encode() in fetched[0][0]  # type: ignore[index]
        assert strip_trace(stored) == corpus.MIXED
    with imaplib.IMAP4_SSL(mx.host, mx.imaps_port, ssl_context=tls_context()) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("INBOX", readonly=True)
        typ, fetched = imap.fetch("1", "(BODY.PEEK[2])")
        assert fetched[0][1] == corpus.PDF_B64[:-2]  # type: ignore[index]
        assert imap.search(None, "SUBJECT", "invoice") == ("OK", [b"1"])


def test_wrong_password_is_refused_and_not_logged(mx: KarteroServer) -> None:
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login("bob@example.test", "Wrong-Passw0rd!")
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login("nobody@example.test", "Wrong-Passw0rd!")
    assert mx.wait_events("imap.login_failed", 1)
    mx.stop()
    assert "Wrong-Passw0rd" not in mx.log


def test_imapclient_folders_search_flags_move(mx: KarteroServer) -> None:
    imapclient = pytest.importorskip("imapclient", reason="imapclient is in the test extras")
    for message in (corpus.PLAIN, corpus.ALTERNATIVE, corpus.FORWARDED):
        send_mail(mx, message)
    with imapclient.IMAPClient(mx.host, port=mx.imap_port, ssl=False) as client:
        client.starttls(tls_context())
        client.login("bob@example.test", PASSWORD)
        folders = {name: flags for flags, _, name in client.list_folders()}
        assert folders["Sent"] == (b"\\HasNoChildren", b"\\Sent")
        assert client.find_special_folder(b"\\Junk") == "Junk"
        client.create_folder("Projects/2026")
        client.select_folder("INBOX")
        assert client.search(["SUBJECT", "Grüße"], charset="UTF-8") == [2]
        assert client.search(["BODY", "straßenbahn"], charset="UTF-8") == [2, 3]
        data = client.fetch([1, 3], ["ENVELOPE", "BODYSTRUCTURE", "FLAGS"])
        envelope = data[1][b"ENVELOPE"]
        assert envelope.subject == b"Quarterly report"
        assert envelope.from_[0].mailbox == b"alice" and envelope.from_[0].host == b"example.org"
        structure = data[3][b"BODYSTRUCTURE"]
        assert structure.is_multipart and structure[0][1][0] == b"message"  # the forwarded part
        client.add_flags([1], [imapclient.FLAGGED])
        assert client.get_flags([1])[1] == (b"\\Flagged", b"\\Recent")  # IMAP4rev1: this session saw it first
        client.move([2], "Projects/2026")
        assert client.search(["ALL"]) == [1, 3]
        client.select_folder("Projects/2026")
        assert client.search(["ALL"]) == [1]
        assert client.sort(["SUBJECT"]) == [1]


def test_idle_is_woken_by_smtp_delivery_within_a_second(mx: KarteroServer) -> None:
    sock = socket.create_connection((mx.host, mx.imap_port), timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(f"a LOGIN bob@example.test {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
    while not reader.readline().startswith(b"+ idling"):
        pass
    started = time.monotonic()
    send_mail(mx, corpus.PLAIN)
    assert reader.readline() == b"* 1 EXISTS\r\n"
    assert reader.readline() == b"* 1 RECENT\r\n"  # an IMAP4rev1 session: the first to see it
    assert time.monotonic() - started < 1.0
    sock.sendall(b"DONE\r\n")
    assert reader.readline() == b"c OK IDLE terminated\r\n"
    sock.close()


def test_expunge_in_one_session_reaches_another(mx: KarteroServer) -> None:
    send_mail(mx, corpus.PLAIN)
    send_mail(mx, corpus.ALTERNATIVE)
    with imaplib.IMAP4(mx.host, mx.imap_port) as one, imaplib.IMAP4(mx.host, mx.imap_port) as two:
        one.login("bob@example.test", PASSWORD)
        two.login("bob@example.test", PASSWORD)
        one.select("INBOX")
        two.select("INBOX")
        one.store("1", "+FLAGS", "(\\Deleted)")
        one.expunge()
        typ, _ = two.noop()
        assert typ == "OK"
        assert two.untagged_responses.get("EXPUNGE") == [b"1"]
        assert two.fetch("1", "(UID)")[1] == [b"1 (UID 2)"]


def test_compress_deflate(mx: KarteroServer) -> None:
    send_mail(mx, corpus.PLAIN)
    sock = socket.create_connection((mx.host, mx.imap_port), timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(f"a LOGIN bob@example.test {PASSWORD}\r\nb COMPRESS DEFLATE\r\n".encode())
    assert reader.readline().startswith(b"a OK")
    assert reader.readline() == b"b OK DEFLATE active\r\n"
    deflate, inflate = zlib.compressobj(9, zlib.DEFLATED, -15), zlib.decompressobj(-15)
    sock.sendall(
        deflate.compress(b"c SELECT INBOX\r\nd FETCH 1 BODY.PEEK[TEXT]\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH)
    )
    received = b""
    while b"d OK" not in received:
        received += inflate.decompress(sock.recv(65536))
    assert b"* 1 EXISTS\r\n" in received
    assert b"BODY[TEXT] {33}\r\nHello Bob,\r\nthe numbers are in.\r\n)" in received
    sock.close()


def test_curl_reads_imap(mx: KarteroServer, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (.ci/run installs it)")
    send_mail(mx, corpus.ALTERNATIVE)
    stored = mx.messages("bob@example.test")[0]
    out = tmp_path / "message.eml"
    result = subprocess.run(
        [curl, "--silent", "--show-error", "--ssl-reqd", "--insecure", "--user", f"bob@example.test:{PASSWORD}",
         "--output", str(out), f"imap://{mx.host}:{mx.imap_port}/INBOX;UID=1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == stored
    listing = subprocess.run(
        [curl, "--silent", "--ssl-reqd", "--insecure", "--user", f"bob@example.test:{PASSWORD}",
         f"imaps://{mx.host}:{mx.imaps_port}/"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert '* LIST (\\HasNoChildren \\Sent) "/" Sent' in listing.stdout or '"Sent"' in listing.stdout


def test_mbsync_round_trip(mx: KarteroServer, tmp_path: Path) -> None:
    mbsync = shutil.which("mbsync")
    if mbsync is None:
        pytest.fail("mbsync is not installed (Debian package isync; .ci/run installs it)")
    for message in (corpus.PLAIN, corpus.MIXED, corpus.FORWARDED, corpus.LATIN1):
        send_mail(mx, message)
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount kartero\nHost {mx.host}\nPort {mx.imap_port}\nUser bob@example.test\nPass {PASSWORD}\n"
        f"SSLType STARTTLS\nCertificateFile {mx.root / 'tls' / 'cert.pem'}\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount kartero\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n"
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([mbsync, "-c", str(rc), "-a"], capture_output=True, text=True, timeout=120, env=env)
    if "certificate" in result.stderr.lower():
        pytest.fail(f"mbsync refused the self-signed certificate: {result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr
    local = sorted((maildir / "INBOX" / "cur").iterdir()) + sorted((maildir / "INBOX" / "new").iterdir())
    server = mx.messages("bob@example.test")
    assert len(local) == len(server) == 4
    # mbsync stores messages with LF line ends and adds its X-TUID tracking header; otherwise byte-equal.
    assert sorted(_without_tuid(p.read_bytes()) for p in local) == sorted(m.replace(b"\r\n", b"\n") for m in server)
    assert {p.name for p in maildir.iterdir()} >= {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    # A message written locally goes up to the server.
    note = b"From: bob@example.test\nSubject: written offline\n\nsynced up\n"
    (maildir / "Drafts" / "new" / "1700000000.1.kartero-test").write_bytes(note)
    result = subprocess.run([mbsync, "-c", str(rc), "-a"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    drafts = mx.messages("bob@example.test", "Drafts")
    assert [_without_tuid(d.replace(b"\r\n", b"\n")) for d in drafts] == [note]


def _without_tuid(message: bytes) -> bytes:
    return re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", message)


def test_many_idle_connections_each_get_new_mail(mx: KarteroServer) -> None:
    sockets = []
    for _ in range(20):
        sock = socket.create_connection((mx.host, mx.imap_port), timeout=10)
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f"a LOGIN bob@example.test {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        while not reader.readline().startswith(b"+ idling"):
            pass
        sockets.append((sock, reader))
    send_mail(mx, corpus.PLAIN)
    for sock, reader in sockets:
        assert reader.readline() == b"* 1 EXISTS\r\n"
        reader.close()  # the socket's file descriptor closes only with its last file object
        sock.close()
    wait_for(lambda: len(mx.log_events("imap.disconnect")) >= 20)
