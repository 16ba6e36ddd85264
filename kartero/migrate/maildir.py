"""Maildir with Maildir++ folders, as Dovecot, Courier and most Unix tools keep it: reading it for an
import, and the names, flags and keyword files an export writes.

Layout (https://cr.yp.to/proto/maildir.html, Courier's Maildir++, Dovecot's `maildir:` mail_location):
INBOX is the root's `cur/`, `new/` and `tmp/`; each other folder is a root folder named `.` + its name
with `.` between levels and each level in modified UTF-7 (`.Archive.2024` is Archive/2024). A message is
one file; the info after `:2,` in its name holds its flags, one letter each: D Draft, F Flagged, P
Passed (no IMAP flag), R Replied, S Seen, T Trashed, and Dovecot's lower-case letters `a`..`z`, keywords
by the `dovecot-keywords` file of the folder (lines `0 $Label1`: letter a is keyword 0). Its internal date
is the file's mtime (Dovecot's convention). `tmp/` holds deliveries in progress and is never read.

T is imported as \\Deleted, as Dovecot shows it: the message was marked for deletion but not expunged, and
the user's client decides (it shows it struck through, or hides it until EXPUNGE).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from kartero.imap import mutf7
from kartero.migrate.buffer import MessageBuffer
from kartero.migrate.model import (
    SEPARATOR,
    FolderFound,
    Item,
    MessageFound,
    Unreadable,
    canonical_folder,
    check_folder_name,
    clean_flags,
    is_keyword,
)
from kartero.store.interface import INBOX

LETTER_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTERS = {flag.lower(): letter for letter, flag in LETTER_FLAGS.items()}
KEYWORDS_FILE = "dovecot-keywords"
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # Dovecot: at most 26 keywords per folder in file names
# A dovecot-keywords file is 26 short lines; more than this is not one (read no further).
_KEYWORDS_FILE_LIMIT = 64 * 1024
# Octets read from a message file at a time.
_READ = 1 << 20


def parse_info(filename: str) -> tuple[frozenset[str], str]:
    """The system flags and the keyword letters (a-z) of a message file's name (`...:2,FRSab`); a name
    without `:2,` (a new message) has none. Letters nobody defined are ignored."""
    _, sep, info = filename.rpartition(":2,")
    if not sep:
        return frozenset(), ""
    flags = frozenset(LETTER_FLAGS[ch] for ch in info if ch in LETTER_FLAGS)
    letters = "".join(sorted({ch for ch in info if ch in KEYWORD_LETTERS}))
    return flags, letters


def format_info(flags: Iterable[str], letters: str = "") -> str:
    """`:2,` and the letters of these flags and keyword letters, in ASCII order (the Maildir spec)."""
    chars = {FLAG_LETTERS[f.lower()] for f in flags if f.lower() in FLAG_LETTERS} | set(letters)
    return ":2," + "".join(sorted(chars))


def folder_name(dirname: str) -> str:
    """The folder a Maildir++ folder directory holds: `.Archive.2024` is Archive/2024, each level decoded
    from modified UTF-7. Raises ValueError for a name that is not one."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        raise ValueError(f"{dirname!r} is not a Maildir++ folder")
    try:
        return canonical_folder(SEPARATOR.join(mutf7.decode(level) for level in dirname[1:].split(".")))
    except mutf7.MUTF7Error as exc:
        raise ValueError(f"{dirname!r}: {exc}") from None


def folder_dirname(name: str) -> str:
    """The Maildir++ directory of a folder (the inverse of `folder_name`). A `.` inside a level cannot
    be written (it is the separator there): it becomes a level boundary, as in Dovecot."""
    return "." + ".".join(mutf7.encode(level) for level in name.split(SEPARATOR))


def parse_keywords(text: str) -> dict[str, str]:
    """Letter -> keyword from a dovecot-keywords file (`N keyword` lines, N from 0 to 25); lines that are
    not such are skipped."""
    keywords: dict[str, str] = {}
    for line in text.splitlines():
        number, _, keyword = line.strip().partition(" ")
        if number.isdigit() and int(number) < len(KEYWORD_LETTERS) and is_keyword(keyword.strip()):
            keywords[KEYWORD_LETTERS[int(number)]] = keyword.strip()
    return keywords


def format_keywords(keywords: Mapping[str, str]) -> str:
    """A dovecot-keywords file for letter -> keyword."""
    return "".join(f"{KEYWORD_LETTERS.index(letter)} {keyword}\n" for letter, keyword in sorted(keywords.items()))


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _message_names(folder: Path) -> Iterator[tuple[str, str]]:
    """(subfolder, file name) of each message file in new/ and cur/ (tmp/ holds unfinished deliveries)."""
    for sub in ("new", "cur"):
        try:
            with os.scandir(folder / sub) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                        yield sub, entry.name
        except FileNotFoundError:
            continue


class MaildirSource:
    """A Maildir and its Maildir++ folders, INBOX first, then by name; each folder's messages in the
    order of their internal dates (then names)."""

    unit = "messages"

    def __init__(self, root: Path, work_dir: Path) -> None:
        self.root = root.resolve()
        self.identity = f"maildir:{self.root}"
        self._work_dir = work_dir
        self.folders: list[tuple[str, Path]] = [(INBOX, self.root)]
        self.problems: list[Unreadable] = []
        with os.scandir(self.root) as entries:
            names = sorted(e.name for e in entries if e.name.startswith(".") and is_maildir(Path(e.path)))
        for dirname in names:
            try:
                name = folder_name(dirname)
            except ValueError as exc:
                self.problems.append(Unreadable(dirname, str(exc), 0))
                continue
            if (problem := check_folder_name(name)) is not None:
                self.problems.append(Unreadable(dirname, problem, 0))
                continue
            self.folders.append((name, self.root / dirname))
        self.total = sum(1 for _, path in self.folders for _ in _message_names(path))

    def items(self) -> Iterator[Item]:
        yield from self.problems
        for name, path in self.folders:
            yield FolderFound(name)
            keywords = _read_keywords(path)
            entries: list[tuple[int, str, str]] = []
            for sub, filename in _message_names(path):
                try:
                    entries.append((int(os.stat(path / sub / filename).st_mtime), filename, sub))
                except OSError:
                    continue  # gone since the count (moved by a running server): its new name is met
            entries.sort()
            for mtime, filename, sub in entries:
                yield self._read(name, path / sub / filename, mtime, filename, keywords)

    def _read(self, folder: str, path: Path, mtime: int, filename: str, keywords: Mapping[str, str]) -> Item:
        flags, letters = parse_info(filename)
        wanted = set(flags) | {keywords[ch] for ch in letters if ch in keywords}
        buffer = MessageBuffer(self._work_dir, crlf=True)
        try:
            with open(path, "rb") as file:
                while chunk := file.read(_READ):
                    buffer.write(chunk)
        except OSError as exc:
            buffer.discard()
            return Unreadable(folder, f"{path}: {exc.strerror}")
        kept, _ = clean_flags(wanted)
        return MessageFound(folder, buffer.finish(), kept, mtime)


def _read_keywords(folder: Path) -> dict[str, str]:
    try:
        with open(folder / KEYWORDS_FILE, "rb") as file:
            return parse_keywords(file.read(_KEYWORDS_FILE_LIMIT).decode("utf-8", "replace"))
    except OSError:
        return {}
