"""`kartero backup DIR`: the data folder as it was at one instant, while a server keeps serving.

Why the copy is consistent. The server commits a message in this order (store/commit.py): append the
body to a segment and fdatasync, then commit the SQLite transaction that points at it. So the SQLite
database is the truth, and a segment's bytes past the end of its last committed body are garbage of an
unfinished batch. The backup:

1. lists the data folder and opens every file it will copy (segments, DKIM keys, certificates, the
   maildrop, the import drop, ...). An open file keeps its bytes even when the server removes it
   afterwards: compaction removes a segment only after moving its bodies away, and the maildrop and
   import drop pickups remove a file only after storing its messages;
2. takes every SQLite database with SQLite's online backup API in one step: one read transaction, so
   one instant, while the server goes on writing (WAL: readers do not block the writer);
3. copies each segment the backed-up database points into, up to the end of its last body *in that
   copy*: bytes appended after the instant are not copied, and every byte the copy points at was on disk
   before the instant (fdatasync before commit). A segment made after step 1 is opened now; it can only
   have vanished if it was compacted away meanwhile, and then the backup fails and says to run it again;
4. copies the other files from the descriptors of step 1, then writes `manifest.json` last, everything
   fsynced: a folder without a manifest is no backup.

What is left out: the spool folder and `workers/` (temporary files of sessions and of `serve --workers`),
the pid file, SQLite's -wal/-shm/-journal companions (step 2 reads through them), temporary `*.tmp`
files, and segments the database does not point into (a restarted server would remove them too). A
maildrop file picked up between steps 1 and 2 is both in the database and in the maildrop copy: after a
restore it would be delivered twice, never lost. An import drop file likewise is stored only once: its
messages' ids are in the database copy, and the pickup skips what is stored (migrate/importdrop.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from kartero.backup.manifest import (
    MANIFEST_NAME,
    BackupError,
    FileEntry,
    FileKind,
    Manifest,
    check_relative_path,
    copy_hashed,
    fsync_dir,
    open_regular,
)
from kartero.control import PID_FILE
from kartero.store.spool import spool_dir

DATABASE = "kartero.db"
MESSAGES_DIR = "messages"  # the segments: messages/00000001.seg (store/segments.py)
SEGMENT_SUFFIX = ".seg"
WORKERS_DIR = "workers"  # serve --workers: each worker's spool, the shared metrics files (workers.py)
STAGING_DIR = ".restore-partial"  # an interrupted restore's staging folder (restore.py)
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
# What the counts in the manifest count, each one query on the backed-up database.
COUNTS = {
    "accounts": "SELECT COUNT(*) FROM accounts",
    "mailboxes": "SELECT COUNT(*) FROM mailboxes",
    "messages": "SELECT COUNT(*) FROM messages",
    "queued": "SELECT COUNT(*) FROM queue",
}


@dataclass(frozen=True, slots=True)
class BackupReport:
    manifest: Manifest
    folder: Path
    seconds: float
    unreferenced_segments: int  # left out: nothing in the database points into them
    skipped: tuple[str, ...] = field(default=())  # links, special files, names a manifest cannot hold

    def summary(self) -> str:
        counts = ", ".join(f"{value} {name}" for name, value in self.manifest.counts.items())
        size = f"{len(self.manifest.files)} files, {self.manifest.total_bytes} bytes"
        return f"backed up {self.manifest.source} into {self.folder}: {counts}; {size} in {self.seconds:.1f} s"


def take_backup(data_dir: Path, folder: Path, kartero_version: str) -> BackupReport:
    """Back up the embedded store in `data_dir` into `folder` (new or empty). Safe while a server runs
    on `data_dir`. Raises BackupError (nothing is left in `folder` then) or OSError."""
    started = time.monotonic()
    data_dir = data_dir.resolve()
    folder = folder.resolve()
    if not (data_dir / DATABASE).is_file():
        raise BackupError(f"no embedded store at {data_dir} (no {DATABASE} there)")
    if folder.is_relative_to(data_dir):
        raise BackupError(f"{folder} is inside the data folder {data_dir}: choose a folder outside it")
    writer = _Writer(folder)
    try:
        return _take(data_dir, writer, kartero_version, started)
    except sqlite3.Error as exc:  # a database that is not the store's, or unreadable
        writer.remove()
        raise BackupError(f"cannot read the database of {data_dir}: {exc}") from None
    except BaseException:
        writer.remove()
        raise


def _take(data_dir: Path, writer: _Writer, kartero_version: str, started: float) -> BackupReport:
    files, databases, skipped = _inventory(data_dir)
    if DATABASE not in databases:
        raise BackupError(f"{data_dir / DATABASE} is not a SQLite database")
    _raise_open_files_limit(len(files) + 64)
    opened: dict[str, BinaryIO] = {}
    try:
        for rel in files:  # step 1
            with contextlib.suppress(FileNotFoundError):  # gone already: what it held is in the database
                opened[rel] = open_regular(data_dir / rel)
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        entries: list[FileEntry] = []
        ends: dict[int, int] = {}
        counts: dict[str, int] = {}
        schema: int | None = None
        for rel in databases:  # step 2: kartero.db first, it decides which segment bytes count
            entry, facts = _snapshot(data_dir / rel, writer, rel)
            entries.append(entry)
            if rel == DATABASE:
                ends, counts, schema = facts
        unreferenced = 0
        for rel in sorted(opened):  # steps 3 and 4
            number = _segment_number(rel)
            if number is not None and number not in ends:
                unreferenced += 1
                continue
            entries.append(writer.copy(rel, opened[rel], FileKind.FILE if number is None else FileKind.SEGMENT,
                                       None if number is None else ends[number]))  # fmt: skip
        for number in sorted(set(ends) - {n for n in map(_segment_number, opened) if n is not None}):
            rel = f"{MESSAGES_DIR}/{number:08d}{SEGMENT_SUFFIX}"
            try:
                late = opened[rel] = open_regular(data_dir / rel)
            except FileNotFoundError:
                raise BackupError(f"segment {rel} was removed while the backup ran (the server compacted it): "
                                  "run the backup again") from None  # fmt: skip
            entries.append(writer.copy(rel, late, FileKind.SEGMENT, ends[number]))
    finally:
        for f in opened.values():
            f.close()
    entries.sort(key=lambda e: e.path)
    manifest = Manifest(created_at=created_at, source=str(data_dir), kartero_version=kartero_version,
                        schema_version=schema, counts=counts, files=tuple(entries))  # fmt: skip
    writer.finish(manifest)
    return BackupReport(manifest, writer.folder, time.monotonic() - started, unreferenced, tuple(skipped))


def files_to_copy(data_dir: Path) -> list[str]:
    """What `kartero backup` would copy from `data_dir` (relative paths): for a PostgreSQL store, the
    files that still live there (the maildrop, the import drop, certificates, ...), which its database
    backup lacks."""
    files, databases, _ = _inventory(data_dir.resolve())
    return sorted(files + databases)


def _inventory(data_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """The data folder's files to copy (relative paths): (plain files and segments, SQLite databases
    with kartero.db first, links and special files that are skipped)."""
    leave_out = {spool_dir(data_dir).name, WORKERS_DIR, STAGING_DIR, PID_FILE}
    files: list[str] = []
    databases: list[str] = []
    skipped: list[str] = []
    for top, dirs, names in os.walk(data_dir):
        here = Path(top)
        if here == data_dir:
            dirs[:] = [d for d in dirs if d not in leave_out]
        for name in dirs:
            if (here / name).is_symlink():
                skipped.append((here / name).relative_to(data_dir).as_posix())
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
        present = set(names)
        for name in sorted(names):
            path = here / name
            rel = path.relative_to(data_dir).as_posix()
            if here == data_dir and name in leave_out:
                continue
            if name.endswith(".tmp"):  # being written (the maildrops' `.NAME.tmp`, a DKIM key's `NAME.tmp`, ...)
                continue
            if any(name.endswith(s) and name[: -len(s)] in present for s in SQLITE_COMPANIONS):
                continue
            if path.is_symlink() or not path.is_file() or not _is_portable(rel):
                skipped.append(rel)
            elif _is_sqlite(path):
                databases.append(rel)
            else:
                files.append(rel)
    databases.sort(key=lambda rel: (rel != DATABASE, rel))
    return files, databases, skipped


def _is_portable(rel: str) -> bool:
    """A path the manifest can name (manifest.check_relative_path): no backslash, not overlong."""
    try:
        check_relative_path(rel)
    except ValueError:
        return False
    return True


def _is_sqlite(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _segment_number(rel: str) -> int | None:
    folder, _, name = rel.partition("/")
    stem = name.removesuffix(SEGMENT_SUFFIX)
    if folder == MESSAGES_DIR and name.endswith(SEGMENT_SUFFIX) and stem.isdigit() and stem.isascii():
        return int(stem)
    return None


def _snapshot(
    source: Path, writer: _Writer, rel: str
) -> tuple[FileEntry, tuple[dict[int, int], dict[str, int], int | None]]:
    """Copy one SQLite database with the online backup API, in one step (one read transaction); return
    its entry and, read from the copy: each segment's committed end, the counts, the schema version."""
    target = writer.new_path(rel)
    src = sqlite3.connect(source, timeout=10.0)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: every page in one step, so one consistent instant
            ends: dict[int, int] = {}
            counts: dict[str, int] = {}
            schema: int | None = None
            if rel == DATABASE:
                rows = dst.execute('SELECT segment, MAX("offset" + size) FROM blobs GROUP BY segment')
                ends = {int(segment): int(end) for segment, end in rows}
                for name, query in COUNTS.items():
                    counts[name] = int(dst.execute(query).fetchone()[0])
                row = dst.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                schema = int(row[0]) if row and str(row[0]).isdigit() else None
            # A database that stands alone: no -wal beside it (closing would checkpoint it anyway).
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    for suffix in SQLITE_COMPANIONS:
        if target.with_name(target.name + suffix).exists():
            raise BackupError(f"SQLite left {rel}{suffix} beside the copy of {rel}")
    return writer.adopt(rel, FileKind.DATABASE), (ends, counts, schema)


def _raise_open_files_limit(wanted: int) -> None:
    """Step 1 holds every file open (one per 64 MiB segment): lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class _Writer:
    """The backup folder being filled: every file 0600 and fsynced, folders 0700; what it made is
    removed again if the backup fails."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._made_folder = not folder.exists()
        if not self._made_folder and (not folder.is_dir() or any(folder.iterdir())):
            raise BackupError(f"{folder} is not an empty folder: back up into a new or empty one")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._files: list[Path] = []
        self._dirs: list[Path] = [folder]

    def new_path(self, rel: str) -> Path:
        path = self.folder / rel
        for parent in reversed(path.relative_to(self.folder).parents[:-1]):
            directory = self.folder / parent
            if not directory.exists():
                directory.mkdir(mode=0o700)
                self._dirs.append(directory)
        self._files.append(path)
        return path

    def copy(self, rel: str, source: BinaryIO, kind: FileKind, length: int | None) -> FileEntry:
        """Copy `source` from its start (the first `length` bytes, if given) to `rel`."""
        path = self.new_path(rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            source.seek(0)
            size, sha256 = copy_hashed(source, fd, length)
            if length is not None and size < length:
                raise BackupError(f"{rel} holds {size} bytes, fewer than the {length} its database points at "
                                  "(a server restarted while the backup ran?): run the backup again")  # fmt: skip
            os.fsync(fd)
        finally:
            os.close(fd)
        return FileEntry(rel, kind, size, sha256)

    def adopt(self, rel: str, kind: FileKind) -> FileEntry:
        """The entry of a file written by someone else (SQLite): fsync it and hash it."""
        path = self.folder / rel
        with open_regular(path) as f:
            os.fsync(f.fileno())
            size, sha256 = copy_hashed(f, None)
        path.chmod(0o600)
        return FileEntry(rel, kind, size, sha256)

    def finish(self, manifest: Manifest) -> None:
        """Write the manifest, last, and make everything durable."""
        for directory in reversed(self._dirs):
            fsync_dir(directory)
        temporary = self.folder / f".{MANIFEST_NAME}.tmp"
        self._files.append(temporary)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(manifest.to_json())
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, self.folder / MANIFEST_NAME)
        fsync_dir(self.folder)

    def remove(self) -> None:
        for path in self._files:
            with contextlib.suppress(OSError):
                path.unlink()
        for directory in reversed(self._dirs[1:]):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if self._made_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

