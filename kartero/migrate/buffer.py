"""One message's bytes on their way into the store: in memory while small, in a file once large, hashed
as they arrive, with the line ends Unix mail files use (LF) turned into the CRLF of IMAP and SMTP.

So a message of any size costs a reader at most MEMORY_LIMIT octets of memory, and the store gets it as
`bytes` or as a `Content` over the file (the store copies it from there in pieces).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from kartero.store.interface import Content, FileSpan

# Octets of one message kept in memory; past this it goes to a file. A batch holds a few dozen messages.
MEMORY_LIMIT = 1 << 20
# Pieces are gathered up to this size before they are hashed and stored: one update per ~64 KiB, not per line.
_GATHER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Captured:
    """A finished message: its bytes (or where they are), their SHA-256 and size. `path`: the file to
    remove once the store has it (None: in memory)."""

    data: bytes | Content
    digest: str
    size: int
    path: Path | None = None

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class MessageBuffer:
    """Collects one message's octets (`write`), then gives them as a `Captured` (`finish`). With `crlf`,
    every LF not after a CR becomes CRLF (a CR that ends one write and an LF that starts the next count
    as one CRLF)."""

    def __init__(self, folder: Path, *, crlf: bool) -> None:
        self._folder = folder
        self._crlf = crlf
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._kept: list[bytes] = []  # in memory, until MEMORY_LIMIT
        self._size = 0
        self._hash = hashlib.sha256()
        self._fd = -1
        self._path: Path | None = None
        self._after_cr = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._crlf:
            data = self._to_crlf(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _GATHER:
            self._flush()

    def _to_crlf(self, data: bytes) -> bytes:
        lead = b""
        if self._after_cr and data.startswith(b"\n"):  # the CRLF split between two writes
            lead, data = b"\n", data[1:]
        self._after_cr = data.endswith(b"\r")
        if b"\n" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return lead + data

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._hash.update(chunk)
        self._size += len(chunk)
        if self._fd < 0 and self._size <= MEMORY_LIMIT:
            self._kept.append(chunk)
            return
        if self._fd < 0:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._path = self._folder / f"{secrets.token_hex(12)}.import"
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._write_all(b"".join(self._kept))
            self._kept.clear()
        self._write_all(chunk)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def finish(self) -> Captured:
        self._flush()
        digest = self._hash.hexdigest()
        if self._fd < 0:
            return Captured(b"".join(self._kept), digest, self._size)
        os.close(self._fd)
        self._fd = -1
        assert self._path is not None
        return Captured(Content(b"", FileSpan(self._path, 0, self._size)), digest, self._size, self._path)

    def discard(self) -> None:
        """Give up the message (a read failed): its file goes."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def capture_bytes(data: bytes, folder: Path, *, crlf: bool) -> Captured:
    """A message already in memory (an IMAP literal) as a Captured."""
    buffer = MessageBuffer(folder, crlf=crlf)
    buffer.write(data)
    return buffer.finish()
