"""`kartero export`: an account's folders written as a Maildir++ tree Dovecot reads, or as mbox files
mutt reads, one message at a time (read from the store in pieces, never a folder in memory).

Maildir: INBOX in DIR's cur/new/tmp, each other folder in `.Name` (kartero.migrate.maildir), every
message in cur/ with its flags after `:2,` (keywords as Dovecot's letters, listed in the folder's
dovecot-keywords; 26 per folder at most, as Dovecot allows), its bytes exactly as stored, the file's
mtime its internal date. Each file is written in tmp/ and renamed into cur/ (the Maildir way).

mbox: one file per folder, `DIR/INBOX.mbox`, `DIR/Archive.mbox`, `DIR/Archive/2024.mbox`, written as
`.NAME.mbox.tmp` and renamed when complete (kartero.migrate.mbox: From_ line with the envelope sender and
internal date, state fields for the flags, LF line ends, mboxrd quoting).
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kartero.migrate.maildir import KEYWORD_LETTERS, KEYWORDS_FILE, folder_dirname, format_info, format_keywords
from kartero.migrate.mbox import write_mbox_message
from kartero.migrate.model import SEPARATOR
from kartero.store.interface import INBOX, Mailbox, MailStore, MessageReader, MessageRow, StoreError

ROWS = 256  # message rows read from the store at a time
_CHUNK = 1 << 20


@dataclass
class ExportOutcome:
    folders: int = 0
    messages: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"exported {self.messages} messages in {self.folders} folders, failed {self.failed}"


class StoredMessageFile(io.RawIOBase):
    """A stored message as a file to read (what BufferedReader.readline needs)."""

    def __init__(self, reader: MessageReader) -> None:
        self._reader = reader
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._reader.read(self._position, min(len(target), self._reader.size - self._position))
        target[: len(data)] = data
        self._position += len(data)
        return len(data)


def count_messages(mail: MailStore, account_id: int) -> int:
    return sum(mail.mailbox_status(box.id).messages for box in mail.list_mailboxes(account_id))


def _mailboxes(mail: MailStore, account_id: int) -> list[Mailbox]:
    return sorted(mail.list_mailboxes(account_id), key=lambda box: (box.name != INBOX, box.name))


def _rows(mail: MailStore, mailbox: Mailbox) -> Iterator[MessageRow]:
    uids = list(mail.select_summary(mailbox.id).uids)
    for start in range(0, len(uids), ROWS):
        yield from mail.message_rows(mailbox.id, uids[start : start + ROWS])


def export_account(mail: MailStore, account_id: int, target: Path, fmt: str,
                   progress: Callable[[int], None] = lambda _: None) -> ExportOutcome:  # fmt: skip
    """Write the account's folders under `target` (an empty or new directory) as `fmt`: maildir or mbox."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    outcome = ExportOutcome()
    write = _write_maildir_folder if fmt == "maildir" else _write_mbox_folder
    for mailbox in _mailboxes(mail, account_id):
        outcome.folders += 1
        write(mail, mailbox, target, outcome, progress)
    # On disk before the command says "exported" (the admin may delete the account next): one sync(2),
    # which waits on Linux, rather than an fsync per message file and folder (a Maildir export of 2,000
    # messages took 8.6 s with them, 1.8 s without). An export cut short is rerun into a new directory,
    # so the files need no durability of their own before that.
    os.sync()
    return outcome


def _private(path: str | Path, flags: int) -> int:
    """Open a file of the export as only its owner may read it: it is someone's mail (as a backup's
    files are 0600), whatever the umask of the admin running the export."""
    return os.open(path, flags, 0o600)


def _failed(outcome: ExportOutcome, mailbox: Mailbox, row: MessageRow, exc: Exception) -> None:
    outcome.failed += 1
    if len(outcome.problems) < 20:
        outcome.problems.append(f"{mailbox.name}: UID {row.uid}: {exc}")


def _folder_failed(mail: MailStore, mailbox: Mailbox, outcome: ExportOutcome, exc: OSError,
                   progress: Callable[[int], None]) -> None:  # fmt: skip
    """The folder's file or directory cannot be made: a name longer than the file system takes (IMAP
    allows 1000 octets, a Maildir++ directory or mbox file name is one path level of at most 255, and
    modified UTF-7 makes non-Latin names longer), or a name an earlier folder took as a file (`a` wrote
    `a.mbox`, `a.mbox/b` needs it as a directory). That folder's messages count as failed, named in the
    problems; the other folders are written."""
    messages = mail.mailbox_status(mailbox.id).messages
    outcome.failed += messages
    if len(outcome.problems) < 20:
        outcome.problems.append(f"{mailbox.name}: not written ({messages} messages): {exc}")
    progress(messages)


def _write_maildir_folder(mail: MailStore, mailbox: Mailbox, target: Path, outcome: ExportOutcome,
                          progress: Callable[[int], None]) -> None:  # fmt: skip
    folder = target if mailbox.name == INBOX else target / folder_dirname(mailbox.name)
    try:
        for directory in (folder, folder / "cur", folder / "new", folder / "tmp"):
            directory.mkdir(mode=0o700, exist_ok=True)
        if mailbox.name != INBOX:
            (folder / "maildirfolder").touch(mode=0o600)  # Maildir++: this directory is a folder, not a root
    except OSError as exc:
        _folder_failed(mail, mailbox, outcome, exc, progress)
        return
    letters: dict[str, str] = {}  # keyword (lower case) -> letter
    keywords: dict[str, str] = {}  # letter -> keyword
    host = socket.gethostname().replace("/", "_").replace(":", "_")
    for row in _rows(mail, mailbox):
        mine = ""
        for flag in sorted(f for f in row.flags if not f.startswith("\\")):
            letter = letters.get(flag.lower())
            if letter is None and len(keywords) < len(KEYWORD_LETTERS):
                letter = letters[flag.lower()] = KEYWORD_LETTERS[len(keywords)]
                keywords[letter] = flag
            mine += letter or ""
        name = f"{row.internal_date}.U{row.uid}V{mailbox.uidvalidity}.{host},S={row.size}"
        temporary = folder / "tmp" / name
        try:
            reader = mail.open_message(row.blob_id)
            try:
                with open(temporary, "wb", opener=_private) as file:
                    for start in range(0, reader.size, _CHUNK):
                        file.write(reader.read(start, _CHUNK))
            finally:
                reader.close()
            os.utime(temporary, (row.internal_date, row.internal_date))
            os.rename(temporary, folder / "cur" / (name + format_info(row.flags, mine)))
        except (OSError, StoreError) as exc:
            temporary.unlink(missing_ok=True)
            _failed(outcome, mailbox, row, exc)
        else:
            outcome.messages += 1
        progress(1)
    if keywords:
        partial = folder / (KEYWORDS_FILE + ".tmp")
        with open(partial, "w", opener=_private) as file:
            file.write(format_keywords(keywords))
        os.rename(partial, folder / KEYWORDS_FILE)


def _write_mbox_folder(mail: MailStore, mailbox: Mailbox, target: Path, outcome: ExportOutcome,
                       progress: Callable[[int], None]) -> None:  # fmt: skip
    # A level such as `..` (IMAP allows it) must not lead out of `target`, nor hide the file.
    levels = [("%2E" + level[1:]) if level.startswith(".") else level for level in mailbox.name.split(SEPARATOR)]
    directory = target.joinpath(*levels[:-1])
    final = directory / f"{levels[-1]}.mbox"
    partial = directory / f".{levels[-1]}.mbox.tmp"
    try:
        for depth in range(1, len(levels)):
            target.joinpath(*levels[:depth]).mkdir(mode=0o700, exist_ok=True)
        fd = _private(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as exc:
        _folder_failed(mail, mailbox, outcome, exc, progress)
        return
    with open(fd, "wb") as out:
        for row in _rows(mail, mailbox):
            try:
                sender = mail.read_envelope(row.blob_id).sender
                reader = mail.open_message(row.blob_id)
            except (OSError, StoreError) as exc:
                _failed(outcome, mailbox, row, exc)
                progress(1)
                continue
            try:
                message = io.BufferedReader(StoredMessageFile(reader), _CHUNK)
                write_mbox_message(out, sender, row.internal_date, row.flags, message)
            except (OSError, StoreError) as exc:  # mid-message: the file would be wrong, so stop the folder
                _failed(outcome, mailbox, row, exc)
                out.close()
                partial.unlink(missing_ok=True)
                return
            finally:
                reader.close()
            outcome.messages += 1
            progress(1)
    os.rename(partial, final)
