"""Message bytes in append-only segment files: `messages/00000001.seg`, `00000002.seg`, ...

Why segments and not a file per message: making a new file durable costs an fsync of the file and of
its folder, per message. Appending every message of a group commit to one segment costs one
`fdatasync` for the whole group, so throughput grows with concurrency instead of being capped by the
disk's fsync rate. A body is addressed by (segment, offset, length), kept in the database.

Only the committer thread appends. Bytes past the last committed message of a segment are garbage from
an interrupted batch and are cut off at the next start (`truncate`). Space of deleted messages is
reclaimed by compaction, which copies the live bodies of a mostly dead segment to the active one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from kartero.store.spool import SpoolBody

# A segment is sealed once it passes this size; a single larger message gets a segment of its own.
SEGMENT_BYTES = 64 * 1024 * 1024
_SUFFIX = ".seg"


class Segments:
    def __init__(self, root: Path, *, max_bytes: int = SEGMENT_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        self._readers: dict[int, int] = {}
        self._lock = threading.Lock()
        self._active: int | None = None
        self._active_fd = -1
        self._active_size = 0
        self._next = max(self.numbers(), default=0) + 1

    def path(self, number: int) -> Path:
        return self.root / f"{number:08d}{_SUFFIX}"

    def numbers(self) -> list[int]:
        return sorted(int(p.name[: -len(_SUFFIX)]) for p in self.root.glob(f"*{_SUFFIX}") if p.name[:-4].isdigit())

    @property
    def active(self) -> int | None:
        return self._active

    # -- writing (committer thread only) ----------------------------------------------------------------

    def resume(self, number: int) -> None:
        """Append to an existing segment from its current end (after recovery truncated it)."""
        self._close_active()
        fd = os.open(self.path(number), os.O_WRONLY | os.O_CLOEXEC)
        self._active, self._active_fd, self._active_size = number, fd, os.fstat(fd).st_size

    def append(self, bodies: Sequence[bytes | SpoolBody]) -> list[tuple[int, int]]:
        """Append the bodies and fdatasync; return each one's (segment, offset). Raises OSError.

        Bodies in memory go out in one write; a large body in a spool file is copied by the kernel."""
        total = sum(len(b) for b in bodies)
        if self._active is None or (self._active_size and self._active_size + total > self.max_bytes):
            self._roll()
        assert self._active is not None
        locations = []
        offset = self._active_size
        for body in bodies:
            locations.append((self._active, offset))
            offset += len(body)
        position = self._active_size
        pending: list[bytes] = []
        for body in bodies:
            if isinstance(body, bytes):
                pending.append(body)
                continue
            position = self._write(b"".join(pending), position)
            pending = []
            position = body.copy_to(self._active_fd, position)
        position = self._write(b"".join(pending), position)
        os.fdatasync(self._active_fd)
        self._active_size = position
        return locations

    def _write(self, data: bytes, position: int) -> int:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._active_fd, view, position)
            view = view[written:]
            position += written
        return position

    def _roll(self) -> None:
        self._close_active()
        number = self._next
        self._next += 1
        fd = os.open(self.path(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fsync_dir(self.root)  # the new segment's directory entry must survive a crash too
        self._active, self._active_fd, self._active_size = number, fd, 0

    def _close_active(self) -> None:
        if self._active_fd >= 0:
            os.close(self._active_fd)
        self._active, self._active_fd, self._active_size = None, -1, 0

    # -- reading (any thread) -------------------------------------------------------------------------

    def read(self, number: int, offset: int, length: int) -> bytes:
        """The bytes of one body; raises FileNotFoundError when the segment is gone (compacted)."""
        fd = self._reader(number)
        data = os.pread(fd, length, offset)
        while len(data) < length:
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                raise OSError(f"segment {number} ends before offset {offset + length}")
            data += more
        return data

    def _reader(self, number: int) -> int:
        with self._lock:
            fd = self._readers.get(number)
            if fd is None:
                fd = os.open(self.path(number), os.O_RDONLY | os.O_CLOEXEC)
                self._readers[number] = fd
            return fd

    # -- maintenance ----------------------------------------------------------------------------------

    def size(self, number: int) -> int:
        return self.path(number).stat().st_size

    def truncate(self, number: int, length: int) -> None:
        os.truncate(self.path(number), length)

    def remove(self, number: int) -> None:
        with self._lock:
            fd = self._readers.pop(number, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.path(number).unlink()

    def close(self) -> None:
        self._close_active()
        with self._lock:
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
