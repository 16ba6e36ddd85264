"""`manifest.json`: what a backup folder holds, and the check that it still does.

The manifest is JSON (`FORMAT`, `version`): when and from where the backup was taken, the counts of
accounts, mailboxes, messages and queue entries in its database, and every file with its kind, size and
SHA-256. A backup folder is read as untrusted input (it may have travelled over tapes and networks): the
manifest is size-limited, every path must stay inside the folder (no `..`, no absolute path, no link),
and a file is read in bounded chunks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import BinaryIO

FORMAT = "kartero-backup"
VERSION = 1
MANIFEST_NAME = "manifest.json"
# Limits on what a manifest may say, so a hostile or broken one costs bounded memory and time.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_FILES = 1_000_000
MAX_PATH_CHARS = 1024
CHUNK_BYTES = 1024 * 1024


class FileKind(StrEnum):
    DATABASE = "database"  # a SQLite database, copied with SQLite's online backup
    SEGMENT = "segment"  # a message segment, up to the end of its last committed body
    FILE = "file"  # anything else in the data folder (DKIM keys, certificates, the maildrop, ...)


class BackupError(Exception):
    """The backup or restore cannot be done; the text says why, for the admin."""


class BackupCorrupt(BackupError):
    """A file of the backup is missing or differs from its manifest entry (`path`: relative, or the
    manifest itself)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the data folder (and to the backup folder), POSIX separators
    kind: FileKind
    size: int
    sha256: str

    def __post_init__(self) -> None:
        check_relative_path(self.path)
        if self.size < 0:
            raise ValueError(f"{self.path}: negative size")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"{self.path}: sha256 is not 64 lower-case hex digits")


@dataclass(frozen=True, slots=True)
class Manifest:
    created_at: str  # ISO 8601, UTC
    source: str  # the data folder it was taken from
    kartero_version: str
    schema_version: int | None
    counts: Mapping[str, int]  # accounts, mailboxes, messages, queued
    files: tuple[FileEntry, ...] = field(default=())

    def __post_init__(self) -> None:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a path is named twice")
        if len(paths) > MAX_FILES:
            raise ValueError(f"more than {MAX_FILES} files")
        if MANIFEST_NAME in paths:
            raise ValueError(f"{MANIFEST_NAME} is named as a file of the backup")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        document = {
            "format": FORMAT,
            "version": VERSION,
            "created_at": self.created_at,
            "source": self.source,
            "kartero_version": self.kartero_version,
            "schema_version": self.schema_version,
            "counts": dict(self.counts),
            "bytes": self.total_bytes,
            "files": [{"path": f.path, "kind": str(f.kind), "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(document, indent=1).encode() + b"\n"


def check_relative_path(path: str) -> None:
    """Raise ValueError unless `path` names a file strictly inside a folder: relative, POSIX, no `.` or
    `..` or empty component, no NUL or backslash, at most MAX_PATH_CHARS."""
    if not path or len(path) > MAX_PATH_CHARS or "\x00" in path or "\\" in path:
        raise ValueError(f"bad path {path[:80]!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"bad path {path[:80]!r}")
    if PurePosixPath(path).is_absolute():
        raise ValueError(f"bad path {path[:80]!r}")


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in `raw`; raises BackupCorrupt("manifest.json", why) for anything else."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BackupCorrupt(MANIFEST_NAME, f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest")
        if document.get("version") != VERSION:
            raise ValueError(f"manifest version {document.get('version')!r}, this Kartero reads {VERSION}")
        files = document["files"]
        counts = document["counts"]
        schema = document.get("schema_version")
        if not isinstance(files, list) or len(files) > MAX_FILES:
            raise ValueError(f"files is not a list of at most {MAX_FILES}")
        if not isinstance(counts, dict) or not all(_is_count(v) for v in counts.values()):
            raise ValueError("counts is not an object of numbers")
        if schema is not None and not _is_count(schema):
            raise ValueError("schema_version is not a number")
        entries = []
        for item in files:
            if not isinstance(item, dict):
                raise ValueError("a file entry is not an object")
            size = item["size"]
            if not _is_count(size):
                raise ValueError(f"size of {str(item.get('path'))[:80]!r} is not a number")
            entries.append(FileEntry(_text(item["path"]), FileKind(item["kind"]), size, _text(item["sha256"])))
        manifest = Manifest(
            created_at=_text(document["created_at"]),
            source=_text(document["source"]),
            kartero_version=_text(document.get("kartero_version", "")),
            schema_version=schema,
            counts={str(k): v for k, v in counts.items()},
            files=tuple(entries),
        )
    except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError and UnicodeDecodeError too
        raise BackupCorrupt(MANIFEST_NAME, str(exc) or type(exc).__name__) from None
    except RecursionError:  # json nests by recursion: `[[[[...` deeper than the interpreter's stack allows
        raise BackupCorrupt(MANIFEST_NAME, "nested too deeply") from None
    if sum(1 for f in manifest.files if f.kind is FileKind.DATABASE and f.path == "kartero.db") != 1:
        raise BackupCorrupt(MANIFEST_NAME, "no kartero.db among the files")
    return manifest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r:.80} is not a string")
    return value


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the backup in `folder`; raises BackupError when there is none, BackupCorrupt
    when it is unreadable."""
    path = folder / MANIFEST_NAME
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise BackupError(f"{folder} holds no backup (no {MANIFEST_NAME}; a backup that failed has none)") from None
    except OSError as exc:
        raise BackupCorrupt(MANIFEST_NAME, exc.strerror or str(exc)) from None
    return parse_manifest(raw)


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, refusing a link or anything but a regular file (OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb")


def open_inside(folder: Path, relative: str) -> BinaryIO:
    """`folder/relative` opened for reading, one level at a time without following a link at any level
    (OSError): a backup folder whose `messages` is a link to /etc must not make restore read (and copy
    into the data folder) files from outside the backup; O_NOFOLLOW alone guards the last level only."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *levels, name = relative.split("/")
        for depth, level in enumerate(levels, 1):
            try:
                inner = os.open(level, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise OSError(exc.errno, f"{'/'.join(levels[:depth])} is a link or no folder") from None
            os.close(fd)
            fd = inner
        file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file).st_mode):
        os.close(file)
        raise OSError(f"{name} is not a regular file")
    return os.fdopen(file, "rb")


def copy_hashed(source: BinaryIO, target: int | None, limit: int | None = None) -> tuple[int, str]:
    """Read `source` to its end (or `limit` bytes), writing to the file descriptor `target` if given;
    returns (bytes read, SHA-256 hex). A chunk at a time: memory stays constant whatever the file."""
    digest = hashlib.sha256()
    size = 0
    while limit is None or size < limit:
        chunk = source.read(CHUNK_BYTES if limit is None else min(CHUNK_BYTES, limit - size))
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        if target is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(target, view) :]
    return size, digest.hexdigest()


def check_file(folder: Path, entry: FileEntry, target: int | None = None) -> None:
    """Raise BackupCorrupt unless `folder/entry.path` has the entry's size and SHA-256 (copying it to
    `target` on the way, if given)."""
    try:
        with open_inside(folder, entry.path) as f:
            size, sha256 = copy_hashed(f, target, entry.size + 1)  # one byte more: a longer file shows
    except FileNotFoundError:
        raise BackupCorrupt(entry.path, "missing") from None
    except OSError as exc:
        raise BackupCorrupt(entry.path, exc.strerror or str(exc)) from None
    if size > entry.size:
        raise BackupCorrupt(entry.path, f"longer than the {entry.size} bytes the manifest says")
    if size < entry.size:
        raise BackupCorrupt(entry.path, f"{size} bytes, the manifest says {entry.size}")
    if sha256 != entry.sha256:
        raise BackupCorrupt(entry.path, "SHA-256 differs from the manifest (the file is damaged)")


def verify_backup(folder: Path) -> Manifest:
    """Read every file of the backup in `folder` and check it against the manifest; returns the
    manifest. Raises BackupError (no backup there) or BackupCorrupt naming the first bad file."""
    manifest = read_manifest(folder)
    for entry in manifest.files:
        check_file(folder, entry)
    return manifest


def fsync_dir(path: Path) -> None:
    """Make the entries of the folder `path` durable (a new or renamed file survives a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
