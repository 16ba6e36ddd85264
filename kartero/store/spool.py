"""Messages too large to hold in memory: spool files, and a read-only view of a file for the MIME parser.

A listener writes a large message into a spool file under `<data_dir>/spool/` as it arrives (not fsynced:
the bytes become durable when the store copies them into a segment, before the `250`). The store reads it
back through `FileBuffer`, which offers the few `bytes` operations the MIME parser uses on a whole
message (`len`, slicing, `find`, `rfind`, `count`, `startswith`) by reading the file in bounded windows,
so parsing a 200 MB message costs a few MiB of memory, not 200 MB (issue 8, finding 6).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import overload

from kartero.store.interface import Content, FileSpan

# Bytes read per window by FileBuffer scans (at most; a search starts small and doubles, since most
# finds of the MIME parser stop a few octets on); also the copy unit of spool files into segments.
WINDOW = 1 << 20
FIRST_WINDOW = 4096


def spool_dir(data_dir: Path) -> Path:
    return data_dir / "spool"


class SpoolFile:
    """A new, private file in the spool folder, written sequentially by one owner, removed by `discard`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / f"{secrets.token_hex(12)}.spool"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append `data`; raises OSError (disk full: the caller refuses the message with a 4xx)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.size)
            view = view[written:]
            self.size += written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class IncomingSpool:
    """The spool file of the message a session is receiving, made at its first piece. After a write
    fails (a full disk) the file is gone, `error` says why, and later pieces are dropped until `reset`."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.file: SpoolFile | None = None
        self.error: str | None = None

    def write(self, data: bytes) -> bool:
        """Append a piece; False when it was not written (the failure is in `error`)."""
        if self.error is not None:
            return False
        try:
            if self.file is None:
                if self.folder is None:
                    raise OSError("no spool folder")
                self.file = SpoolFile(self.folder)
            self.file.write(data)
        except OSError as exc:
            self.error = str(exc) or type(exc).__name__
            self._discard()
            return False
        return True

    def finish(self) -> FileSpan | None:
        """The whole message written so far, the file closed for writing; None when there is none."""
        if self.file is None:
            return None
        self.file.close()
        return FileSpan(self.file.path, 0, self.file.size)

    def reset(self) -> None:
        """Forget the message (its file removed) and any failure: ready for the next one."""
        self._discard()
        self.error = None

    def _discard(self) -> None:
        if self.file is not None:
            self.file.discard()
            self.file = None


def clear_spool(data_dir: Path) -> int:
    """Remove what a previous run left in the spool folder (nothing there was acknowledged); returns
    how many files went."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for path in spool_dir(data_dir).iterdir():
            if path.is_file():
                path.unlink()
                removed += 1
    return removed


class FileBuffer:
    """`bytes`-like read access to bytes [offset, offset+length) of an open file, in bounded windows.

    Slices are read with `pread` (a slice is as large as the caller asks: parse code takes bounded
    slices); searches scan WINDOW-sized reads with an overlap of the needle's length, so memory stays
    near twice WINDOW whatever the file size.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset
        self._length = length

    def __len__(self) -> int:
        return self._length

    def _bounds(self, start: int | None, end: int | None) -> tuple[int, int]:
        return slice(start, end).indices(self._length)[:2]

    def _read(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        data = os.pread(self._fd, end - start, self._offset + start)
        while len(data) < end - start:
            more = os.pread(self._fd, end - start - len(data), self._offset + start + len(data))
            if not more:
                raise OSError(f"file ends before offset {self._offset + end}")
            data += more
        return data

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> bytes: ...
    def __getitem__(self, index: int | slice) -> int | bytes:
        if isinstance(index, slice):
            start, end, step = index.indices(self._length)
            data = self._read(start, max(start, end)) if step == 1 else self._read(0, self._length)[index]
            return data
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("FileBuffer index out of range")
        return self._read(index, index + 1)[0]

    def find(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:
        start, end = self._bounds(start, end)
        position, window = start, min(FIRST_WINDOW, WINDOW)
        while position <= end - len(sub):
            window_end = min(end, position + window + len(sub))
            found = self._read(position, window_end).find(sub)
            if found >= 0:
                return position + found
            if window_end == end:
                break
            position = window_end - len(sub) + 1
            window = min(window * 2, WINDOW)
        return -1

    def rfind(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:
        start, end = self._bounds(start, end)
        position, window = end, min(FIRST_WINDOW, WINDOW)
        while position - len(sub) >= start:
            window_start = max(start, position - window - len(sub))
            found = self._read(window_start, position).rfind(sub)
            if found >= 0:
                return window_start + found
            if window_start == start:
                break
            position = window_start + len(sub) - 1
            window = min(window * 2, WINDOW)
        return -1

    def count(self, sub: bytes, start: int | None = None, end: int | None = None) -> int:
        """Non-overlapping occurrences, as `bytes.count`."""
        if not sub:
            raise ValueError("empty needle")
        start, end = self._bounds(start, end)
        total = 0
        if len(sub) == 1:  # the common case (line counts): a one-octet needle never spans two windows
            for window in range(start, end, WINDOW):
                total += self._read(window, min(end, window + WINDOW)).count(sub)
            return total
        position = self.find(sub, start, end)
        while position >= 0:
            total += 1
            position = self.find(sub, position + len(sub), end)
        return total

    def startswith(self, prefix: bytes, start: int | None = None, end: int | None = None) -> bool:
        start, end = self._bounds(start, end)
        return end - start >= len(prefix) and self._read(start, start + len(prefix)) == prefix


class SpoolBody:
    """A whole message in a spool file of its own, made by the store for a large delivery and removed
    once the delivery is committed (or failed)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def __len__(self) -> int:
        return self.size

    @contextlib.contextmanager
    def buffer(self) -> Iterator[FileBuffer]:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield FileBuffer(fd, 0, self.size)
        finally:
            os.close(fd)

    def copy_to(self, fd: int, position: int) -> int:
        """Write the whole file into `fd` at `position`; returns the position after it."""
        src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return position + copy_range(src, 0, self.size, fd, position)
        finally:
            os.close(src)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def copy_range(src: int, src_offset: int, length: int, dst: int, dst_offset: int) -> int:
    """Copy `length` octets between files in the kernel when it can (copy_file_range), else in WINDOW
    reads; returns `length`. Raises OSError, also when the source is shorter than promised."""
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < length:
        count = min(WINDOW * 16, length - done)
        copied = 0
        if use_kernel:
            try:
                copied = os.copy_file_range(src, dst, count, src_offset + done, dst_offset + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_kernel = False
                continue
        else:
            data = os.pread(src, min(count, WINDOW), src_offset + done)
            view = memoryview(data)
            while view:
                written = os.pwrite(dst, view, dst_offset + done + copied)
                view = view[written:]
                copied += written
        if copied == 0:
            raise OSError(f"source ends {length - done} octets early")
        done += copied
    return length


def read_whole(content: Content) -> bytes:
    """The whole message in memory: for the few checks that need it at once (DKIM); callers bound how
    many run together."""
    if not isinstance(content.tail, FileSpan):
        return content.head + content.tail
    fd = os.open(content.tail.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return content.head + FileBuffer(fd, content.tail.offset, content.tail.length)[:]
    finally:
        os.close(fd)


def materialize(folder: Path, head: bytes, tail: FileSpan) -> SpoolBody:
    """`head` followed by the file span, as one new spool file (the store's copy of the message)."""
    target = SpoolFile(folder)
    try:
        target.write(head)
        src = os.open(tail.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            copy_range(src, tail.offset, tail.length, target.fd, target.size)
        finally:
            os.close(src)
        target.size += tail.length
        target.close()
    except BaseException:
        target.discard()
        raise
    return SpoolBody(target.path, target.size)
