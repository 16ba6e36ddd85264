"""Message bytes as files: one file per stored message body, in 256 shard folders.

A blob is written with O_EXCL and fsynced before its metadata is committed; the shard folder is fsynced
(once per group commit) so the new directory entry survives a crash too. A file whose metadata never
committed is an orphan, removed at the next start (`remove_orphans`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path


class BlobFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        created = False
        root.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            shard = root / f"{i:02x}"
            if not shard.is_dir():
                shard.mkdir()
                created = True
        if created:
            fsync_dir(root)

    def path(self, blob_id: str) -> Path:
        # The id ends in random hex, so its last two characters spread files evenly.
        return self.root / blob_id[-2:].lower() / blob_id

    def write(self, blob_id: str, data: bytes) -> None:
        """Create the blob and fsync it; raises FileExistsError rather than overwrite."""
        fd = os.open(self.path(blob_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync_dirs(self, blob_ids: Iterable[str]) -> None:
        """Make the directory entries of freshly written blobs durable (one fsync per shard)."""
        for shard in {blob_id[-2:].lower() for blob_id in blob_ids}:
            fsync_dir(self.root / shard)

    def read(self, blob_id: str) -> bytes:
        return self.path(blob_id).read_bytes()

    def unlink(self, blob_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(blob_id).unlink()

    def iter_ids(self) -> Iterator[str]:
        for shard in self.root.iterdir():
            if shard.is_dir():
                for entry in os.scandir(shard):
                    yield entry.name


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_blob_id() -> str:
    """A unique, time-ordered id: microseconds since the epoch (14 hex digits) + 40 random bits."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"
