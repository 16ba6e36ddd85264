"""A whole IMAP account as an import source (the way imapsync is used): LIST, then each folder read only
(EXAMINE) in batches of messages, BODY.PEEK[] with FLAGS and INTERNALDATE, over stdlib imaplib.

Memory: a batch's sizes are asked first (RFC822.SIZE) and its bodies fetched in groups of at most
FETCH_BYTES (one larger message alone): imaplib holds a fetched literal in memory, so that bounds what
the import holds at once. The other server is not trusted: its responses are read with linear patterns
and its folder names and flags checked like anyone's (kartero.migrate.model).
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kartero.imap import mutf7
from kartero.imap.syntax import parse_date_time
from kartero.imap.tokens import ParseError
from kartero.migrate.buffer import capture_bytes
from kartero.migrate.model import (
    SEPARATOR,
    FolderFound,
    Item,
    MessageFound,
    Unreadable,
    canonical_folder,
    check_folder_name,
    clean_flags,
)
from kartero.store.interface import SPECIAL_MAILBOXES

BATCH = 100  # messages whose sizes are asked in one FETCH
FETCH_BYTES = 16 * 1024 * 1024  # message octets fetched in one FETCH at most (one larger message alone)
MAX_FOLDERS = 10_000  # folders of one account taken at most (a LIST answer is the other server's)
MAX_MESSAGES = 10_000_000  # messages of one folder asked for at most (EXISTS is the other server's word)
TIMEOUT_S = 120.0
# RFC 6154 special-use attributes -> the mailbox every Kartero account has for it (store SPECIAL_MAILBOXES).
SPECIAL_USE = {use.lower(): name for name, use in SPECIAL_MAILBOXES if use is not None}
_LIST = re.compile(rb'\(([^)]*)\) (?:"((?:[^"\\]|\\.)*)"|NIL) (.*)', re.IGNORECASE)
_SEQ = re.compile(rb"(\d+) \(")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
# Only the openings: what follows is cut at the first closing character (`_delimited`), linear in the text.
_FLAGS = re.compile(rb"\bFLAGS \(")
_DATE = re.compile(rb'\bINTERNALDATE "')
_EXISTS = re.compile(rb"\d+")


class ImapSourceError(Exception):
    """The source server could not be reached or refused the login (the import cannot start)."""


@dataclass(frozen=True, slots=True)
class ImapUrl:
    host: str
    port: int
    user: str
    tls: bool  # imaps: TLS from the start; imap: STARTTLS

    @property
    def identity(self) -> str:
        return f"{'imaps' if self.tls else 'imap'}://{self.user}@{self.host}:{self.port}"


def parse_imap_url(url: str) -> ImapUrl:
    """`imaps://user@host:993` or `imap://user@host:143` (the user percent-encoded: `bob%40example.org`,
    or with a literal second @). Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("imap", "imaps"):
        raise ValueError(f"{url!r}: expected imaps://USER@HOST[:PORT] or imap://USER@HOST[:PORT]")
    user, at, _ = parts.netloc.rpartition("@")
    if not at or not user or not parts.hostname:
        raise ValueError(f"{url!r}: the user is missing (imaps://USER@HOST)")
    try:
        port = parts.port or (993 if parts.scheme == "imaps" else 143)
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    return ImapUrl(parts.hostname, port, unquote(user), parts.scheme == "imaps")


def tls_context(*, insecure: bool, ca_file: str | None) -> ssl.SSLContext:
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=ca_file)


def connect(url: ImapUrl, password: str, context: ssl.SSLContext, *, insecure: bool) -> imaplib.IMAP4:
    """A logged-in connection. Over imap://, STARTTLS when offered; without it the login is refused
    unless `insecure` (the password would cross the network in the clear). Raises ImapSourceError."""
    try:
        conn: imaplib.IMAP4
        if url.tls:
            conn = imaplib.IMAP4_SSL(url.host, url.port, ssl_context=context, timeout=TIMEOUT_S)
        else:
            conn = imaplib.IMAP4(url.host, url.port, timeout=TIMEOUT_S)
            if "STARTTLS" in conn.capabilities:
                conn.starttls(context)
            elif not insecure:
                conn.shutdown()
                raise ImapSourceError(f"{url.host} offers no STARTTLS: use imaps://, or --insecure")
        conn.login(url.user, password)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ImapSourceError(f"{url.identity}: {exc}") from None
    return conn


def parse_list_line(line: bytes | tuple[bytes, bytes]) -> tuple[frozenset[str], str, bytes] | None:
    """(attributes, delimiter, the name as sent) of one LIST answer as imaplib gives it (a name sent as a
    literal comes as a tuple); None for one it cannot read."""
    literal = None
    if isinstance(line, tuple):
        line, literal = line
    m = _LIST.fullmatch(line.strip())
    if m is None:
        return None
    attributes = frozenset(a.lower() for a in m.group(1).decode("ascii", "replace").split())
    delimiter = re.sub(rb"\\(.)", rb"\1", m.group(2)).decode("ascii", "replace") if m.group(2) is not None else ""
    raw = m.group(3).strip()
    if literal is not None:
        name = literal
    elif raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        name = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    else:
        name = raw
    return attributes, delimiter, name


def folder_of(name: bytes, delimiter: str) -> str:
    """The Kartero folder of a remote mailbox name (modified UTF-7, levels by its delimiter). Raises
    ValueError."""
    try:
        text = mutf7.decode(name.decode("ascii"))
    except (UnicodeDecodeError, mutf7.MUTF7Error):
        raise ValueError(f"mailbox name {name[:60]!r} is not modified UTF-7") from None
    if delimiter and delimiter != SEPARATOR:
        text = text.replace(delimiter, SEPARATOR)
    return canonical_folder(text)


def quote(name: bytes) -> bytes:
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def parse_fetch(data: list[bytes | tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes | None]]:
    """(the response's text outside its literal, the literal or None) per message of a FETCH answer."""
    pending: list[bytes] = []
    literal: bytes | None = None
    for part in data:
        if isinstance(part, tuple):
            if pending:
                yield b"".join(pending), literal
            pending, literal = [part[0]], part[1]
        elif part is not None:
            if _SEQ.match(part) and pending:
                yield b"".join(pending), literal
                pending, literal = [], None
            pending.append(part)
    if pending:
        yield b"".join(pending), literal


class ImapSource:
    """Every selectable folder of the account, each read with EXAMINE (nothing changes there: BODY.PEEK
    leaves \\Seen alone), by message sequence numbers: they cannot shift meanwhile, as a server sends no
    EXPUNGE while it answers FETCH, and nothing else is asked (RFC 9051 §7.5.1). A folder marked with a
    special use (RFC 6154) goes into the account's folder of that use (Sent, Drafts, Trash, Junk,
    Archive), whatever its name there."""

    unit = "messages"

    def __init__(self, conn: imaplib.IMAP4, url: ImapUrl, work_dir: Path) -> None:
        self._conn = conn
        self.identity = url.identity
        self._work_dir = work_dir
        self.problems: list[Unreadable] = []
        self.folders: list[tuple[str, bytes, int]] = []  # (folder here, name there, messages)
        typ, data = conn.list()
        if typ != "OK":
            raise ImapSourceError(f"LIST failed: {data!r}")
        for line in data[:MAX_FOLDERS]:
            if not line:  # None, or the b"" imaplib leaves after a name sent as a literal
                continue
            parsed = parse_list_line(line)
            if parsed is None:
                self.problems.append(Unreadable("?", f"unreadable LIST answer {str(line)[:80]}", 0))
                continue
            attributes, delimiter, raw = parsed
            if {"\\noselect", "\\nonexistent"} & attributes:
                continue
            try:
                folder = folder_of(raw, delimiter)
            except ValueError as exc:
                self.problems.append(Unreadable(raw.decode("ascii", "replace"), str(exc), 0))
                continue
            # RFC 6154: the other server's Sent ("Sent Items", "[Gmail]/Sent Mail") is our Sent, and so on.
            folder = next((SPECIAL_USE[a] for a in sorted(attributes) if a in SPECIAL_USE), folder)
            if (problem := check_folder_name(folder)) is not None:
                self.problems.append(Unreadable(folder, problem, 0))
                continue
            typ, status = conn.status(quote(raw).decode("ascii", "replace"), "(MESSAGES)")
            count = _EXISTS.findall(status[0] if typ == "OK" and isinstance(status[0], bytes) else b"0 0")
            self.folders.append((folder, raw, int(count[-1]) if count else 0))
        self.folders.sort(key=lambda f: (f[0] != "INBOX", f[0]))
        self.total = sum(count for _, _, count in self.folders)

    def items(self) -> Iterator[Item]:
        yield from self.problems
        for folder, raw, _ in self.folders:
            yield FolderFound(folder)
            yield from self._folder(folder, raw)

    def _folder(self, folder: str, raw: bytes) -> Iterator[Item]:
        try:
            typ, data = self._conn.select(quote(raw).decode("ascii", "replace"), readonly=True)
            if typ != "OK":
                yield Unreadable(folder, f"EXAMINE failed: {data!r}", 0)
                return
            exists = int(data[0] or b"0") if isinstance(data[0], bytes) and data[0].isdigit() else 0
            if exists > MAX_MESSAGES:
                yield Unreadable(folder, f"the server says {exists} messages: only the first {MAX_MESSAGES} are read",
                                 0)  # fmt: skip
                exists = MAX_MESSAGES
            for low in range(1, exists + 1, BATCH):
                high = min(low + BATCH - 1, exists)
                typ, sizes = self._conn.fetch(f"{low}:{high}", "(UID RFC822.SIZE)")
                if typ != "OK":
                    yield Unreadable(folder, f"FETCH {low}:{high} failed", high - low + 1)
                    continue
                groups = _group_by_size(list(sizes))
                if not groups:  # none of them there: EXISTS named messages the server does not have
                    yield Unreadable(folder, f"the server has no messages {low}:{exists} it counted", 0)
                    break
                yield from self._fetch_bodies(folder, groups)
        except (OSError, imaplib.IMAP4.error) as exc:
            yield Unreadable(folder, f"the connection failed: {exc}", 0)
            raise ImapSourceError(f"{self.identity}: {exc}") from None

    def _fetch_bodies(self, folder: str, groups: list[list[int]]) -> Iterator[Item]:
        for group in groups:
            wanted = ",".join(str(n) for n in group)
            typ, data = self._conn.fetch(wanted, "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            if typ != "OK":
                yield Unreadable(folder, f"FETCH {wanted[:40]} failed", len(group))
                continue
            got = 0
            for text, literal in parse_fetch(data):  # type: ignore[arg-type]
                if literal is None:
                    continue  # an unsolicited FETCH (a flag change by another client)
                got += 1
                yield self._message(folder, text, literal)
            if got < len(group):
                yield Unreadable(folder, f"{len(group) - got} messages vanished while read", len(group) - got)

    def _message(self, folder: str, text: bytes, literal: bytes) -> Item:
        raw_flags, raw_date = _delimited(_FLAGS, b")", text), _delimited(_DATE, b'"', text)
        flags, _ = clean_flags(raw_flags.decode("ascii", "replace").split() if raw_flags is not None else ())
        try:
            date = int(parse_date_time(raw_date.decode("ascii")).timestamp()) if raw_date is not None else None
        except (ParseError, UnicodeDecodeError):
            date = None
        if date is None:
            uid = _UID.search(text)
            return Unreadable(folder, f"no INTERNALDATE for UID {uid.group(1).decode() if uid else '?'}")
        return MessageFound(folder, capture_bytes(literal, self._work_dir, crlf=False), flags, date)


def _delimited(opening: re.Pattern[bytes], close: bytes, text: bytes) -> bytes | None:
    """The bytes between the first match of `opening` and the next `close` (None: no such pair), as the
    regex search `FLAGS [(]([^)]*)[)]` finds them, in one pass: that search scans to the end from every
    `FLAGS (` when the other server sends no `)`, quadratic in a response line (imaplib takes 1 MB ones;
    140 KB took 14 s)."""
    found = opening.search(text)
    if found is None:
        return None
    end = text.find(close, found.end())
    return None if end < 0 else text[found.end() : end]


def _group_by_size(data: list[bytes | tuple[bytes, bytes] | None]) -> list[list[int]]:
    """Sequence numbers in groups of at most FETCH_BYTES octets (a larger message alone)."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for part in data:
        if not isinstance(part, bytes):
            continue
        seq, found = _SEQ.match(part), _SIZE.search(part)
        if seq is None or found is None:
            continue
        octets = int(found.group(1))
        if current and size + octets > FETCH_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(int(seq.group(1)))
        size += octets
    if current:
        groups.append(current)
    return groups
