"""`kartero restore DIR`: a backup put into an empty data folder, only after all of it checked out.

Order: refuse a data folder that is not empty (or has a server on it); read every file of the backup and
match it against the manifest (a damaged backup fails here, naming the file, before anything is
written); copy each file into a staging folder inside the data folder, hashing it again on the way (the
backup could change between the two reads), fsync; give every mailbox a new UIDVALIDITY (below); then
move the staged entries into place with `kartero.db` last and remove the staging folder. An interrupted
restore leaves the data folder with the staging folder alone in it, which a server would not take for a
store and the next restore replaces.

Why a new UIDVALIDITY: the restored mailboxes go on from the UIDNEXT of the backup, so the messages that
arrive next get the UIDs of the messages that arrived after the backup was taken, which IMAP clients may
have cached. RFC 9051 §2.3.1.1 forbids reusing a UID for another message under the same UIDVALIDITY;
a new one makes clients drop their caches and read the mailboxes again. Moving a store whose server was
stopped before the backup (no client saw anything newer) may keep them (`keep_uidvalidity`).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from kartero.backup.manifest import BackupError, Manifest, check_file, fsync_dir, verify_backup
from kartero.backup.take import DATABASE, STAGING_DIR
from kartero.control import server_pid


@dataclass(frozen=True, slots=True)
class RestoreReport:
    manifest: Manifest
    data_dir: Path
    seconds: float
    renewed_mailboxes: int  # given a new UIDVALIDITY

    def summary(self) -> str:
        counts = ", ".join(f"{value} {name}" for name, value in self.manifest.counts.items())
        return (f"restored the backup of {self.manifest.source} taken {self.manifest.created_at} into "
                f"{self.data_dir}: {counts}; {len(self.manifest.files)} files, {self.manifest.total_bytes} "
                f"bytes, every checksum matched, in {self.seconds:.1f} s"
                + (f"; a new UIDVALIDITY for its {self.renewed_mailboxes} mailboxes (IMAP clients read them again)"
                   if self.renewed_mailboxes else ""))  # fmt: skip


def restore_backup(folder: Path, data_dir: Path, *, keep_uidvalidity: bool = False) -> RestoreReport:
    """Put the backup in `folder` into `data_dir`, which must be missing or empty. Raises BackupError
    (refused: nothing written), BackupCorrupt (a file of the backup is damaged: nothing written) or
    OSError (a failed write or rename: the staging folder and whatever was moved into place are removed
    again)."""
    started = time.monotonic()
    data_dir = data_dir.absolute()
    check_empty(data_dir)
    manifest = verify_backup(folder)
    made = not data_dir.exists()
    owner = _owner(data_dir)
    staging = data_dir / STAGING_DIR
    if staging.exists():
        shutil.rmtree(staging)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    moved: list[Path] = []
    try:
        if made and owner is not None:
            os.chown(data_dir, *owner)
        _copy(folder, manifest, staging, owner)
        try:
            renewed = 0 if keep_uidvalidity else renew_uidvalidity(staging / DATABASE)
        except sqlite3.Error as exc:
            raise BackupError(f"{DATABASE} of the backup is not a Kartero database: {exc}") from None
        tops = sorted({entry.path.split("/")[0] for entry in manifest.files}, key=lambda top: (top == DATABASE, top))
        for top in tops:  # kartero.db last: until it is in place, the folder holds no store
            os.rename(staging / top, data_dir / top)
            moved.append(data_dir / top)
        staging.rmdir()
        fsync_dir(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in moved:  # already in place when a later rename failed: the folder was empty before
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if made:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return RestoreReport(manifest, data_dir, time.monotonic() - started, renewed)


def renew_uidvalidity(database: Path) -> int:
    """Give every mailbox of the embedded store's `database` one new UIDVALIDITY, above every value it
    ever handed out (the `uidvalidity` counter in `meta`, as store/sqlite_db.py's next_uidvalidity keeps
    it) and at least the clock; returns how many mailboxes there are."""
    db = sqlite3.connect(database, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        highest = db.execute("SELECT MAX(uidvalidity), COUNT(*) FROM mailboxes").fetchone()
        counter = db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        value = max(int(time.time()), int(highest[0] or 0) + 1, int(counter[0]) + 1 if counter else 0)
        db.execute("UPDATE mailboxes SET uidvalidity = ?", (value,))
        db.execute("INSERT INTO meta (key, value) VALUES ('uidvalidity', ?)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(value),))  # fmt: skip
        db.execute("COMMIT")
        return int(highest[1])
    finally:
        db.close()


def check_empty(data_dir: Path) -> None:
    """Raise BackupError unless `data_dir` is missing, empty, or holds only an interrupted restore's
    staging folder, and no server runs on it."""
    pid = server_pid(data_dir)
    if pid is not None:
        raise BackupError(f"a Kartero server (pid {pid}) runs on {data_dir}: stop it, and restore into an empty "
                          "data folder")  # fmt: skip
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise BackupError(f"{data_dir} is not a folder")
    # A file system's own lost+found is no data: a data folder may be a mount point of its own.
    here = sorted(p.name for p in data_dir.iterdir()
                  if p.name != STAGING_DIR and not (p.name == "lost+found" and p.is_dir()))  # fmt: skip
    if here:
        named = ", ".join(here[:3]) + (", ..." if len(here) > 3 else "")
        raise BackupError(f"the data folder {data_dir} is not empty ({named}): restore only into an empty one "
                          "(move this one aside first)")  # fmt: skip


def _owner(data_dir: Path) -> tuple[int, int] | None:
    """Whom the restored files should belong to when root restores: the owner of the data folder, or of
    the nearest folder above it, if that is not root (`sudo kartero restore` for a server that runs as
    its own user). None: leave them to whoever runs the restore."""
    if os.geteuid() != 0:
        return None
    for folder in (data_dir, *data_dir.parents):
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue
        return (info.st_uid, info.st_gid) if info.st_uid != 0 else None
    return None


def _copy(folder: Path, manifest: Manifest, staging: Path, owner: tuple[int, int] | None) -> None:
    made: list[Path] = [staging]
    for entry in manifest.files:
        target = staging / entry.path
        for parent in reversed(target.relative_to(staging).parents[:-1]):
            directory = staging / parent
            if not directory.exists():
                directory.mkdir(mode=0o700)
                made.append(directory)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            check_file(folder, entry, fd)  # hashed again while copied: it matched a moment ago
            os.fsync(fd)
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
    for directory in reversed(made):
        if owner is not None:
            os.chown(directory, *owner)
        fsync_dir(directory)
