"""What an import source yields, in the order it reads its mail: a folder, then its messages, and what it
could not read; and the flags a source may carry into the store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from kartero.migrate.buffer import Captured
from kartero.store.interface import INBOX

SEPARATOR = "/"  # Kartero's hierarchy separator (NAMESPACE)
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
# Keywords per message and octets per keyword kept at most: the store keeps a message's flags in one row,
# and a source (another IMAP server, a dovecot-keywords file) is not trusted to keep them small.
MAX_KEYWORDS = 64
MAX_KEYWORD = 100
# RFC 9051 §9: atom-specials, which a keyword (a flag-keyword is an atom) cannot hold.
_ATOM_SPECIALS = frozenset('(){ %*"\\]')
# Octets and levels of a folder name, as IMAP allows them (kartero.imap.syntax MAX_MAILBOX_NAME/LEVELS).
MAX_FOLDER_NAME = 1000
MAX_FOLDER_LEVELS = 100


@dataclass(frozen=True, slots=True)
class FolderFound:
    """A folder of the source, by its name here (`/` between levels); messages for it follow."""

    name: str


@dataclass(frozen=True, slots=True)
class MessageFound:
    folder: str
    body: Captured
    flags: frozenset[str]
    internal_date: int  # unix seconds
    sender: str = ""  # the envelope sender, when the source knows it (mbox's From_ line)
    units: int = 1  # progress made by this message (in the source's `total` unit)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message or folder the source could not read (counted as failed; the run goes on)."""

    folder: str
    problem: str
    units: int = 1


Item = FolderFound | MessageFound | Unreadable


class Source(Protocol):
    identity: str  # names the source in the import ledger: the same source gives the same identity
    total: int  # the progress bar's length (messages or octets)
    unit: str  # what `total` counts: "messages" or "bytes"

    def items(self) -> Iterator[Item]:
        """The folders and messages, one at a time (never a whole folder in memory)."""
        ...


def clean_flags(flags: Iterable[str]) -> tuple[frozenset[str], list[str]]:
    """The flags the store may keep: system flags in their canonical case (\\Recent and unknown system
    flags dropped: the server sets those), keywords that are IMAP atoms, within the limits above; and
    what was dropped (to report)."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for flag in flags:
        if flag.startswith("\\"):
            canonical = SYSTEM_FLAGS.get(flag.lower())
            if canonical is not None:
                kept[canonical.lower()] = canonical
            elif flag.lower() != "\\recent":
                dropped.append(flag)
        elif is_keyword(flag) and len(kept) < MAX_KEYWORDS + len(SYSTEM_FLAGS):
            kept.setdefault(flag.lower(), flag)  # keywords compare case-insensitively (RFC 9051 §2.3.2)
        else:
            dropped.append(flag)
    return frozenset(kept.values()), dropped


def is_keyword(word: str) -> bool:
    return (
        0 < len(word) <= MAX_KEYWORD
        and word.isascii()
        and all(0x20 < ord(ch) < 0x7F and ch not in _ATOM_SPECIALS for ch in word)
    )


def check_folder_name(name: str) -> str | None:
    """Why `name` cannot be a Kartero folder (None: it can): the rules of IMAP CREATE."""
    if not name:
        return "an empty folder name"
    parts = name.split(SEPARATOR)
    if any(not part for part in parts):
        return f"folder {name!r} has an empty level"
    if any(ch in "*%" or ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        return f"folder {name!r} holds a wildcard or control character"
    if len(name.encode("utf-8")) > MAX_FOLDER_NAME or len(parts) > MAX_FOLDER_LEVELS:
        return f"folder {name[:60]!r}... is too long"
    return None


def canonical_folder(name: str) -> str:
    """INBOX in any case is INBOX (RFC 9051 §5.1), also as the first level of a longer name."""
    first, _, rest = name.partition(SEPARATOR)
    if first.upper() == INBOX:
        return INBOX + (SEPARATOR + rest if rest else "")
    return name
