"""IMAP responses: tagged and untagged lines, strings and literals (RFC 9051 §7).

Every response line the core sends is built here; text is ASCII and never carries CR or LF from a peer.
"""

from __future__ import annotations

import re
from enum import StrEnum

_SAFE_TEXT = re.compile(r"[\x20-\x7e]*")
_UNSAFE_CHAR = re.compile(r"[^\x20-\x7e]")


class Status(StrEnum):
    OK = "OK"
    NO = "NO"
    BAD = "BAD"


def _text(text: str) -> str:
    """Printable ASCII only: a client's bytes echoed in an error (a control character, a bare CR) never
    reach the wire as such."""
    return text if _SAFE_TEXT.fullmatch(text) else _UNSAFE_CHAR.sub("?", text)


def tagged(tag: str, status: Status, text: str, code: str | None = None) -> bytes:
    prefix = f"[{code}] " if code else ""
    return f"{tag} {status} {prefix}{_text(text)}\r\n".encode()


def untagged(text: str) -> bytes:
    return f"* {_text(text)}\r\n".encode()


def status_line(status: Status, text: str, code: str | None = None) -> bytes:
    """An untagged OK/NO/BAD/BYE-style status line: `* OK [CODE] text`."""
    prefix = f"[{code}] " if code else ""
    return f"* {status} {prefix}{_text(text)}\r\n".encode()


def bye(text: str) -> bytes:
    return f"* BYE {_text(text)}\r\n".encode()


def astring(value: str, *, utf8: bool = False) -> bytes:
    """A mailbox name or other string: quoted when safe, else a literal."""
    data = value.encode("utf-8")
    if (utf8 or value.isascii()) and "\r" not in value and "\n" not in value and "\0" not in value and len(data) < 1024:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def literal(data: bytes, *, binary: bool = False) -> bytes:
    return (b"~{%d}\r\n" if binary else b"{%d}\r\n") % len(data) + data
