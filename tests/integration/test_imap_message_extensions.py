"""Issue 9 extensions against a real `kartero serve`: PREVIEW (RFC 8970), OBJECTID (RFC 8474), SAVEDATE
(RFC 8514), METADATA (RFC 5464) and LIST-METADATA (RFC 9590), with imapclient and imaplib over a socket."""

from __future__ import annotations

import imaplib
import re

import pytest

from tests.integration.harness import KarteroServer

imapclient = pytest.importorskip("imapclient", reason="imapclient is in the test extras")

PASSWORD = "secret-password"
HTML = (
    b"From: alice@example.org\r\nSubject: news\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><head><style>p{}</style></head><body><p>Gr\xc3\xbc\xc3\x9fe</p><p>from&nbsp;Alice</p></body></html>\r\n"
)
PLAIN = b"From: alice@example.org\r\nSubject: plain\r\n\r\n" + b"All   work\r\nand no play. " * 40 + b"\r\n"


def test_preview_with_imapclient_and_imaplib(mx: KarteroServer) -> None:
    with imapclient.IMAPClient(mx.host, port=mx.imap_port, ssl=False) as client:
        client.login("bob@example.test", PASSWORD)  # plain text: allowed on loopback
        assert b"PREVIEW" in client.capabilities()
        client.append("INBOX", HTML)
        client.append("INBOX", PLAIN)
        client.select_folder("INBOX")
        data = client.fetch([1, 2], ["PREVIEW"])
        assert data[1][b"PREVIEW"] == "Grüße from Alice".encode()
        plain = data[2][b"PREVIEW"].decode()
        assert len(plain) == 256 and plain.startswith("All work and no play. All work")
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("INBOX")
        typ, fetched = imap.fetch("1", "(UID PREVIEW (LAZY))")
        assert typ == "OK"
        assert fetched[0] == (b"1 (UID 1 PREVIEW {18}", "Grüße from Alice".encode())


def test_objectid_and_savedate_with_imaplib(mx: KarteroServer) -> None:
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        capabilities = imap.capability()[1][0].split()
        assert b"OBJECTID" in capabilities and b"SAVEDATE" in capabilities
        typ, _ = imap.create("Projects")
        assert typ == "OK"
        imap.append("INBOX", None, None, PLAIN)  # type: ignore[arg-type]
        imap.select("INBOX")
        mailboxid = re.search(rb"\[MAILBOXID \(([^)]+)\)\]", b" ".join(imap.untagged_responses.get("OK", [])))
        assert mailboxid is not None
        typ, fetched = imap.fetch("1", "(EMAILID THREADID SAVEDATE)")
        match = re.fullmatch(rb'1 \(EMAILID \(([^)]+)\) THREADID NIL SAVEDATE "[^"]+"\)', fetched[0])  # type: ignore[arg-type]
        assert match is not None
        imap.copy("1", "Projects")
        typ, status = imap.status("Projects", "(MAILBOXID MESSAGES)")
        assert typ == "OK" and b"MESSAGES 1" in status[0] and mailboxid.group(1) not in status[0]  # type: ignore[operator]
        imap.select("Projects")
        typ, fetched = imap.fetch("1", "(EMAILID)")
        assert fetched[0] == b"1 (EMAILID (%s))" % match.group(1)  # copies share their EMAILID (RFC 8474 §5.1)
        assert imap.search(None, "EMAILID", match.group(1).decode()) == ("OK", [b"1"])


def test_metadata_with_imaplib(mx: KarteroServer) -> None:
    """METADATA (RFC 5464) over a socket: server and mailbox entries, RENAME, LIST RETURN (METADATA) and
    DELETE."""
    with imaplib.IMAP4(mx.host, mx.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        capabilities = imap.capability()[1][0].split()
        assert b"METADATA" in capabilities and b"METADATA-SERVER" in capabilities
        assert imap.xatom("SETMETADATA", '"" (/shared/comment "Server note")')[0] == "OK"
        imap.create("Lists")
        entries = '(/private/comment "Mailing lists" /shared/vendor/example/colour "#b71c1c")'
        assert imap.xatom("SETMETADATA", "Lists " + entries)[0] == "OK"
        typ, _ = imap.xatom("GETMETADATA", '"" /shared/comment')
        assert typ == "OK" and imap.untagged_responses.pop("METADATA") == [b'"" (/shared/comment "Server note")']
        imap.rename("Lists", "Newsletters")
        assert imap.xatom("GETMETADATA", "(DEPTH infinity) Newsletters (/private /shared)")[0] == "OK"
        assert imap.untagged_responses.pop("METADATA") == [
            b'"Newsletters" (/private/comment "Mailing lists" /shared/vendor/example/colour "#b71c1c")'
        ]
        capabilities = imap.capability()[1][0].split()
        assert b"LIST-METADATA" in capabilities
        assert imap.xatom("LIST", '"" Newsletters RETURN (METADATA (/private/comment))')[0] == "OK"  # RFC 9590
        assert imap.untagged_responses.pop("LIST") == [b'(\\HasNoChildren) "/" "Newsletters"']
        assert imap.untagged_responses.pop("METADATA") == [b'"Newsletters" (/private/comment "Mailing lists")']
        imap.delete("Newsletters")
        imap.create("Newsletters")
        assert imap.xatom("GETMETADATA", "Newsletters /private/comment")[0] == "OK"
        assert imap.untagged_responses.pop("METADATA") == [b'"Newsletters" (/private/comment NIL)']
