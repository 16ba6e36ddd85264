"""A model-checking IMAP client: many sessions of one user on one mailbox, each checking every response.

Used by tests/integration/test_imap_stress.py (seconds, in the suite) and bench/imap_stress.py (minutes,
Kartero and Dovecot side by side). Each session speaks raw IMAP over asyncio so that it sees every
untagged response, and keeps a model of the selected mailbox built only from those responses: one slot
per message (UID, flags, MODSEQ), the keywords the last FLAGS response announced, the UIDs it has been
told are gone. Every response is checked against the model and the RFCs as it arrives; each command is
checked against what it must have done once its tagged response is in. The rules, each with its source:

- Sequence numbers: FETCH and EXPUNGE name a message between 1 and the number of messages; EXISTS never
  shrinks the mailbox (RFC 9051 §7.4.1, only EXPUNGE/VANISHED do); EXPUNGE and VANISHED come only while a
  command is in progress and never during FETCH, STORE or SEARCH by sequence number (RFC 9051 §7.5.1,
  RFC 7162 §3.2.10); VANISHED only after ENABLE QRESYNC, then never EXPUNGE (RFC 7162 §3.2.10), and only
  for messages the session was told of.
- UIDs: strictly ascending with the sequence numbers, below UIDNEXT for the messages SELECT announced and
  not below it for later ones, never a UID the session was told was expunged, each UID the same message
  (bytes and Message-ID) in every session and for its whole life, and UIDVALIDITY constant (RFC 9051
  §2.3.1.1); (UID) FETCH responses to a UID command carry UID (RFC 9051 §6.4.9).
- Flags: every keyword in a FETCH response was announced by the FLAGS response before it (RFC 9051
  §7.3.5, issue 9); a non-silent STORE returns, for every message it names that still exists, a FETCH
  showing its change (RFC 9051 §6.4.6); a message's MODSEQ never goes down and changes when its flags do
  (RFC 7162 §3.1); once CONDSTORE is on, every FETCH response carries UID and MODSEQ except those
  answering a FETCH that asked for neither (RFC 7162 §3.1).
- Each session owns the messages whose UID modulo the number of sessions is its index: only it sets or
  clears the OWNED_KEYWORDS on them, so once its STORE is answered every later FETCH it gets for that
  message must show exactly its choice (a lost update or a stale FETCH shows up here). \\Deleted is never
  cleared, so after EXPUNGE (and UID EXPUNGE of a message) no message the session saw with \\Deleted may
  remain (RFC 9051 §6.4.3), and after MOVE none of the moved ones.
- APPEND, COPY and MOVE report the new UIDs (APPENDUID/COPYUID, RFC 4315) and, when they land in the
  selected mailbox, the EXISTS for them comes before the tagged OK (RFC 9051 §6.3.12, issue 9).
- Tagged responses arrive in the order of the commands (pipelined UID commands included); no BAD ever
  (the client sends only valid commands against a checked model); no NO and no untagged NO/BAD/BYE except
  the races the RFCs allow, counted apart as "tolerated" and each verified: a COPY/MOVE by sequence
  number refused with NO because a message it names was expunged meanwhile, with that EXPUNGE in the same
  response (RFC 2180 §4.4.1); a STORE/COPY answered OK that skipped a message another session expunged,
  confirmed gone by the next NOOP (RFC 2180 §4.2.1, §4.4.2). A FETCH of a message expunged by another
  session must return its data (RFC 2180 §4.1.1, issue 9): a NO there is an error.

At the end every session, after a NOOP, must hold exactly the server's state as a fresh session reads it
(UIDs and flags, \\Recent aside).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

SYSTEM_FLAGS = frozenset({"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft", "\\recent"})
# Flags sessions set and clear freely (\Deleted is only ever set: see the module docstring).
SHARED_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Draft", "$Shared1", "$Shared2", "$Shared3")
OWNED_KEYWORDS = ("$Own1", "$Own2")
ARCHIVE = "Stress Archive"
RESPONSE_TIMEOUT_S = 60.0
TRANSCRIPT_LINES = 24

# Findings after which the model is still right (a response lacked an item, came late or was refused):
# the session goes on; after any other finding it SELECTs again so that one fault is not reported twice.
MODEL_INTACT = frozenset({
    "FETCH without MODSEQ under CONDSTORE", "FETCH without UID under CONDSTORE", "keyword not announced in FLAGS",
    "no EXISTS before tagged OK", "HIGHESTMODSEQ went down", "BODY[] NIL", "PERMANENTFLAGS", "APPENDUID missing",
})  # fmt: skip
Token = Any  # str (atom), bytes (string or literal), None (NIL) or list of tokens


class ProtocolError(Exception):
    """A response the client cannot parse."""


# -- framing and parsing ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Raw:
    """One response: its text pieces, split where the literals they announce go."""

    texts: list[bytes]
    literals: list[bytes]

    @property
    def head(self) -> bytes:
        return self.texts[0]

    def show(self, limit: int = 300) -> str:
        out = b""
        for i, text in enumerate(self.texts):
            out += text
            if i < len(self.literals):
                out += b"<%d octets>" % len(self.literals[i])
        text = out.decode("utf-8", "replace")
        return text if len(text) <= limit else text[:limit] + "..."


def _literal_size(line: bytes) -> int | None:
    """The size of the literal a response line ends with (`{12}` or `~{12}`), else None."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    digits = line[start + 1 : -1]
    if start < 0 or not digits.isdigit() or len(digits) > 12:
        return None
    return int(digits)


class Framer:
    """Cuts the server's byte stream into responses (lines joined by their literals)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._texts: list[bytes] = []
        self._literals: list[bytes] = []
        self._need: int | None = None  # octets of a literal still to come

    def feed(self, data: bytes) -> list[Raw]:
        self._buffer += data
        out: list[Raw] = []
        while True:
            if self._need is not None:
                if len(self._buffer) < self._need:
                    return out
                self._literals.append(bytes(self._buffer[: self._need]))
                del self._buffer[: self._need]
                self._need = None
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._texts.append(line)
            size = _literal_size(line)
            if size is not None:
                self._need = size
                continue
            out.append(Raw(self._texts, self._literals))
            self._texts, self._literals = [], []


def tokenize(texts: list[bytes], literals: list[bytes], start: int = 0) -> list[Token]:
    """The tokens of a response from offset `start` of its first text: atoms as str (brackets kept whole,
    so `BODY[HEADER.FIELDS (A)]<0>` is one atom), strings and literals as bytes, NIL as None, lists as
    lists. A loop with an explicit stack: no recursion."""
    root: list[Token] = []
    stack = [root]
    for i, text in enumerate(texts):
        end = len(text)
        if i < len(literals):
            end = text.rfind(b"{")
            if end > 0 and text[end - 1 : end] == b"~":
                end -= 1
        pos = start if i == 0 else 0
        while pos < end:
            c = text[pos]
            if c == 0x20:
                pos += 1
            elif c == 0x28:  # (
                inner: list[Token] = []
                stack[-1].append(inner)
                stack.append(inner)
                pos += 1
            elif c == 0x29:  # )
                if len(stack) == 1:
                    raise ProtocolError("unbalanced ')'")
                stack.pop()
                pos += 1
            elif c == 0x22:  # "
                pos += 1
                value = bytearray()
                while True:
                    if pos >= end:
                        raise ProtocolError("unterminated quoted string")
                    c = text[pos]
                    if c == 0x5C and pos + 1 < end:  # backslash
                        value.append(text[pos + 1])
                        pos += 2
                    elif c == 0x22:
                        pos += 1
                        break
                    else:
                        value.append(c)
                        pos += 1
                stack[-1].append(bytes(value))
            else:
                first = pos
                while pos < end and text[pos] not in b" ()":
                    if text[pos] == 0x5B:  # [ ... ] is part of the atom, spaces and parentheses included
                        close = text.find(b"]", pos)
                        if close < 0:
                            raise ProtocolError("unterminated '['")
                        pos = close + 1
                    else:
                        pos += 1
                atom = text[first:pos].decode("latin-1")
                stack[-1].append(None if atom.upper() == "NIL" else atom)
        if i < len(literals):
            stack[-1].append(literals[i])
    if len(stack) != 1:
        raise ProtocolError("unbalanced '('")
    return root


@dataclass(frozen=True, slots=True)
class Status:
    """A status response (tagged, or untagged OK/NO/BAD/BYE): its word, response code and text."""

    tag: str
    word: str  # OK NO BAD BYE PREAUTH
    code: str  # e.g. "COPYUID", or ""
    code_args: str
    text: str

    def show(self) -> str:
        code = f"[{self.code}{' ' + self.code_args if self.code_args else ''}] " if self.code else ""
        return f"{self.tag} {self.word} {code}{self.text}"


def parse_status(tag: str, rest: str) -> Status:
    word, _, text = rest.partition(" ")
    code = args = ""
    if text.startswith("["):
        close = text.find("]")
        if close > 0:
            code, _, args = text[1:close].partition(" ")
            text = text[close + 1 :].lstrip(" ")
    return Status(tag, word.upper(), code.upper(), args, text)


def parse_set(text: str) -> list[int]:
    """`1:3,7` as [1, 2, 3, 7] (the client only sees sets it caused, so they are small)."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        a, b = int(low), int(high or low)
        a, b = min(a, b), max(a, b)
        if b - a > 100_000:
            raise ProtocolError(f"set range too large: {part}")
        out.extend(range(a, b + 1))
    return out


def format_set(numbers: Iterable[int]) -> str:
    ordered = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def fetch_items(data: list[Token]) -> dict[str, Token]:
    """The items of a FETCH response's list, by upper-case name (BODY[] keeps its section)."""
    if len(data) != 1 or not isinstance(data[0], list) or len(data[0]) % 2:
        raise ProtocolError("FETCH data is not a list of name/value pairs")
    pairs = data[0]
    items: dict[str, Token] = {}
    for i in range(0, len(pairs), 2):
        name = pairs[i]
        if not isinstance(name, str):
            raise ProtocolError(f"FETCH item name {name!r}")
        items[name.upper()] = pairs[i + 1]
    return items


def message_id_of(message: bytes) -> bytes | None:
    """The Message-ID field value of a message's header, unfolded and stripped."""
    header = message.split(b"\r\n\r\n", 1)[0]
    for line in header.split(b"\r\n"):
        if line[:11].lower() == b"message-id:":
            return line[11:].strip()
    return None


# -- the load's shared state -------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str
    session: str
    command: str
    what: str
    transcript: list[str] = field(default_factory=list)

    def show(self) -> str:
        lines = [f"[{self.session}] {self.command}: {self.what}"]
        if self.transcript:
            lines += ["    " + line for line in self.transcript]
        return "\n".join(lines)


@dataclass
class Run:
    """What every session of one load shares: the server, the UID -> message registry, the findings."""

    host: str
    port: int
    user: str
    password: str
    sessions: int
    seed: int = 1
    weights: dict[str, float] | None = None  # action -> weight; None: every action (ACTIONS)
    new_keywords: int = 8  # keywords introduced during the run (Dovecot's Maildir holds 26 in all)
    transcripts: int = 3  # findings of each kind that keep a transcript
    transcript_lines: int = TRANSCRIPT_LINES  # lines of each session's traffic a finding shows
    errors: list[Finding] = field(default_factory=list)
    tolerated: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    commands: int = 0
    error_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    contents: dict[int, bytes] = field(default_factory=dict)  # UID -> sha256 of its bytes
    message_ids: dict[int, bytes] = field(default_factory=dict)  # UID -> Message-ID
    next_keyword: int = 0

    def add_error(self, finding: Finding) -> None:
        """Count every finding; keep the first 20 of each kind, the first few with their transcript."""
        kind = finding.kind
        self.error_kinds[kind] += 1
        if self.error_kinds[kind] > self.transcripts:
            finding.transcript = []
        if self.error_kinds[kind] <= 20:
            self.errors.append(finding)

    def latency_table(self) -> dict[str, tuple[int, float, float, float]]:
        """Command -> (count, mean, p50, p99) in milliseconds."""
        table = {}
        for name, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
            table[name] = (len(ordered), statistics.fmean(ordered) * 1000, statistics.median(ordered) * 1000,
                           p99 * 1000)  # fmt: skip
        return table


# -- one session -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Slot:
    uid: int | None = None
    flags: frozenset[str] | None = None  # lower-case, \Recent left out
    modseq: int | None = None
    below: int | None = None  # announced by SELECT: the UID is below that UIDNEXT
    at_least: int = 1  # announced later: the UID is at least the UIDNEXT SELECT gave


@dataclass
class Pending:
    """A command sent and not yet answered, and what its responses did."""

    tag: str
    name: str
    line: str
    kind: str = ""  # FETCH, STORE or SEARCH by sequence number: no EXPUNGE may come during it
    targets: frozenset[int] = frozenset()  # UIDs the command names
    fetch_asks: frozenset[str] = frozenset()  # for FETCH: the items asked for
    sent_at: float = 0.0
    timed: bool = True
    future: asyncio.Future[Status] | None = None
    fetched: dict[int, list[dict[str, Token]]] = field(default_factory=lambda: collections.defaultdict(list))
    gone: set[int] = field(default_factory=set)  # UIDs reported expunged during the command
    gone_unknown: int = 0  # slots of unknown UID expunged during it
    copyuid: str = ""  # MOVE's untagged OK [COPYUID ...]
    errors: int = 0
    on_ok: Callable[[], None] | None = None  # run when the tagged OK arrives, before later responses
    # Run when the server starts on the command (sent with none before it, or the one before is answered):
    # the client's own view of a STORE .SILENT, which the command's responses may then update.
    on_start: Callable[[], None] | None = None


class Session:
    """One connection of the load: sends commands, applies every response to its model and checks it."""

    def __init__(self, run: Run, index: int, mode: str, rng: random.Random) -> None:
        self.run = run
        self.index = index
        self.name = f"s{index}/{mode or 'rev1'}"
        self.mode = mode  # "", "CONDSTORE", "QRESYNC" or "IMAP4rev2": what the session ENABLEs
        self.rng = rng
        self.enabled: set[str] = set()
        self.slots: list[Slot] = []
        self.gone: set[int] = set()
        self.announced: set[str] = set()
        self.uidvalidity: int | None = None
        self.uidnext: int | None = None
        self.selecting = False
        self.owned: dict[int, dict[str, bool]] = {}
        self.pending: collections.deque[Pending] = collections.deque()
        self.continuation: asyncio.Future[str] | None = None
        self.transcript: collections.deque[str] = collections.deque(maxlen=run.transcript_lines)
        self.check_late: list[int] = []  # APPEND/COPY UIDs not announced by EXISTS before the tagged OK
        self.check_gone: list[tuple[int, str, str]] = []  # UIDs a command skipped: the next NOOP must expunge them
        self.dirty = False  # the model may be wrong after an error: SELECT again
        self.broken = False
        self.highest = 0  # the highest HIGHESTMODSEQ reported
        self.tags = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.greeting: asyncio.Future[Status] | None = None
        self.logging_out = False
        self.appended = 0

    # -- findings --------------------------------------------------------------------------------------

    @property
    def condstore(self) -> bool:
        return bool(self.enabled & {"CONDSTORE", "QRESYNC"})

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    def error(self, what: str, kind: str, command: Pending | None = None, *, intact: bool = False) -> None:
        cmd = command or (self.pending[0] if self.pending else None)
        if cmd is not None:
            cmd.errors += 1
        if not intact and kind not in MODEL_INTACT:
            self.dirty = True
        self.run.add_error(Finding(kind, self.name, cmd.line if cmd else "(no command)", what,
                                   list(self.transcript)))  # fmt: skip

    def tolerate(self, kind: str) -> None:
        self.run.tolerated[kind] += 1

    # -- connection --------------------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.reader, self.writer = await asyncio.open_connection(self.run.host, self.run.port)
        self.greeting = loop.create_future()
        self.reader_task = asyncio.create_task(self._read_loop())
        async with asyncio.timeout(RESPONSE_TIMEOUT_S):
            greeting = await self.greeting
        if greeting.word != "OK":
            raise ConnectionError(f"greeting: {greeting.show()}")
        status = await self.command(f"LOGIN {self.run.user} {self.run.password}", "LOGIN", timed=False)
        if status.word != "OK":
            raise ConnectionError(f"LOGIN: {status.show()}")
        if self.mode:
            await self.command(f"ENABLE {self.mode}", "ENABLE", timed=False)

    async def close(self) -> None:
        if self.writer is None:
            return
        if not self.broken:
            self.logging_out = True
            with contextlib.suppress(Exception):
                await self.command("LOGOUT", "LOGOUT", timed=False)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader_task

    async def _read_loop(self) -> None:
        assert self.reader is not None
        framer = Framer()
        try:
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    break
                for raw in framer.feed(data):
                    try:
                        self._dispatch(raw)
                    except ProtocolError as exc:
                        self.error(f"unparseable response ({exc}): {raw.show()}", "unparseable response")
                    except (ValueError, IndexError, TypeError) as exc:
                        self.error(f"malformed response ({exc!r}): {raw.show()}", "malformed response")
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.logging_out:
                self.broken = True
            failure = ConnectionError("connection closed")
            for cmd in self.pending:
                if cmd.future is not None and not cmd.future.done():
                    cmd.future.set_exception(failure)
            for future in (self.greeting, self.continuation):
                if future is not None and not future.done():
                    future.set_exception(failure)

    def _note(self, direction: str, text: str) -> None:
        self.transcript.append(f"{direction}: {text if len(text) <= 200 else text[:200] + '...'}")

    # -- sending -------------------------------------------------------------------------------------------

    def _new_pending(self, line: str, name: str, **kw: Any) -> Pending:
        self.tags += 1
        cmd = Pending(tag=f"{self.index}.{self.tags}", name=name, line=line, **kw)
        cmd.future = asyncio.get_running_loop().create_future()
        return cmd

    async def _send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def _wait(self, cmd: Pending) -> Status:
        assert cmd.future is not None
        try:
            async with asyncio.timeout(RESPONSE_TIMEOUT_S):
                status = await cmd.future
        except TimeoutError:
            self.broken = True
            self.error(f"no tagged response in {RESPONSE_TIMEOUT_S:.0f} s", "timeout", cmd)
            raise ConnectionError("timeout") from None
        self.run.commands += 1
        if cmd.timed:
            self.run.latencies[cmd.name].append(time.perf_counter() - cmd.sent_at)
        return status

    async def command(self, line: str, name: str, **kw: Any) -> Status:
        """Send one command and wait for its tagged response (untagged ones are applied as they come)."""
        status, _ = await self.command_with(line, name, **kw)
        return status

    async def command_with(self, line: str, name: str, **kw: Any) -> tuple[Status, Pending]:
        cmd = self._new_pending(line, name, **kw)
        self.pending.append(cmd)
        if len(self.pending) == 1:
            self._start(cmd)
        cmd.sent_at = time.perf_counter()
        self._note("C", f"{cmd.tag} {line}")
        await self._send(f"{cmd.tag} {line}\r\n".encode())
        status = await self._wait(cmd)
        self._check_status(cmd, status)
        return status, cmd

    def _check_status(self, cmd: Pending, status: Status) -> None:
        if status.word == "BAD":
            self.error(f"tagged BAD: {status.show()}", f"{cmd.name} BAD", cmd)
        elif status.word == "NO" and not self._no_tolerated(cmd, status):
            self.error(f"tagged NO: {status.show()}", f"{cmd.name} NO [{status.code}]", cmd,
                       intact=cmd.name in ("FETCH", "UID FETCH"))  # fmt: skip

    def _no_tolerated(self, cmd: Pending, status: Status) -> bool:
        """RFC 2180 §4.4.1: a COPY/MOVE by sequence number may fail when a message it names was expunged,
        and the pending EXPUNGE must come with the NO."""
        if cmd.name.removeprefix("UID ") in ("COPY", "MOVE") and status.code == "EXPUNGEISSUED" and (
            cmd.gone & cmd.targets
        ):
            self.tolerate(f"{cmd.name} NO [EXPUNGEISSUED] with the EXPUNGE (RFC 2180 §4.4.1)")
            return True
        return False

    # -- responses -------------------------------------------------------------------------------------------

    def _dispatch(self, raw: Raw) -> None:
        head = raw.head
        self._note("S", raw.show(200))
        if head.startswith(b"+"):
            if self.continuation is not None and not self.continuation.done():
                self.continuation.set_result(head.decode("latin-1"))
            else:
                self.error(f"unexpected continuation: {raw.show()}", "unexpected continuation")
            return
        if head.startswith(b"* "):
            self._untagged(raw)
            return
        tag, _, rest = head.decode("latin-1").partition(" ")
        status = parse_status(tag, rest)
        if status.word not in ("OK", "NO", "BAD"):
            raise ProtocolError(f"tagged response {status.word}")
        if not self.pending:
            self.error(f"tagged response to no command: {raw.show()}", "tag out of order")
            return
        cmd = self.pending[0]
        if cmd.tag != tag:
            self.error(f"tagged response {tag} while {cmd.tag} is the oldest command", "tag out of order")
            if not any(p.tag == tag for p in self.pending):
                return
            while self.pending[0].tag != tag:  # answer the skipped ones with the same failure
                skipped = self.pending.popleft()
                if skipped.future is not None and not skipped.future.done():
                    skipped.future.set_result(Status(skipped.tag, "BAD", "", "", "(no tagged response)"))
            cmd = self.pending[0]
        self.pending.popleft()
        if status.word == "OK" and cmd.on_ok is not None:
            cmd.on_ok()
        if self.pending:
            self._start(self.pending[0])
        assert cmd.future is not None
        if not cmd.future.done():
            cmd.future.set_result(status)

    @staticmethod
    def _start(cmd: Pending) -> None:
        if cmd.on_start is not None:
            cmd.on_start()
            cmd.on_start = None

    def _untagged(self, raw: Raw) -> None:
        cmd = self.pending[0] if self.pending else None
        text = raw.head[2:].decode("latin-1")
        first, _, rest = text.partition(" ")
        word = first.upper()
        if word in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
            self._untagged_status(parse_status("*", text), cmd)
            return
        if first.isdigit():
            number = int(first)
            kind, _, rest = rest.partition(" ")
            kind = kind.upper()
            if kind == "EXISTS":
                self._exists(number, cmd)
            elif kind == "EXPUNGE":
                self._expunge(number, cmd)
            elif kind == "FETCH":
                offset = 2 + len(first) + 1 + len("FETCH") + 1
                self._fetch(number, fetch_items(tokenize(raw.texts, raw.literals, offset)), cmd)
            elif kind == "RECENT":
                if number > len(self.slots) and not self.selecting:
                    self.error(f"* {number} RECENT with {len(self.slots)} messages", "RECENT beyond EXISTS", cmd)
            else:
                self.error(f"unexpected response: {raw.show()}", f"unexpected {kind}", cmd)
            return
        if word == "FLAGS":
            tokens = tokenize(raw.texts, raw.literals, 2 + len(first) + 1)
            if len(tokens) != 1 or not isinstance(tokens[0], list):
                raise ProtocolError("FLAGS without a list")
            self.announced = {str(f).lower() for f in tokens[0]}
        elif word == "VANISHED":
            self._vanished(rest, cmd)
        elif word == "ENABLED":
            self.enabled |= {w.upper() for w in rest.split()}
        elif word == "CAPABILITY" and cmd is not None and cmd.name in ("LOGIN", "CAPABILITY"):
            pass
        else:
            self.error(f"unexpected response: {raw.show()}", f"unexpected {word}", cmd)

    def _untagged_status(self, status: Status, cmd: Pending | None) -> None:
        if self.greeting is not None and not self.greeting.done():
            self.greeting.set_result(status)
            return
        if status.word == "BYE" and self.logging_out:
            return
        if status.word != "OK":
            self.error(f"untagged {status.show()}", f"untagged {status.word}", cmd)
            return
        match status.code:
            case "UIDVALIDITY":
                value = int(status.code_args)
                if self.uidvalidity is not None and value != self.uidvalidity:
                    self.error(f"UIDVALIDITY changed from {self.uidvalidity} to {value}", "UIDVALIDITY changed", cmd)
                self.uidvalidity = value
            case "UIDNEXT":
                self.uidnext = int(status.code_args)
            case "HIGHESTMODSEQ":
                self._highestmodseq(int(status.code_args), cmd)
            case "PERMANENTFLAGS":
                if "\\*" not in status.code_args:
                    self.error(f"PERMANENTFLAGS without \\*: {status.show()}", "PERMANENTFLAGS", cmd)
            case "COPYUID":
                if cmd is not None:
                    cmd.copyuid = status.code_args
            case _:
                pass  # UNSEEN, CLOSED, READ-WRITE, ...: no state in the model

    def _highestmodseq(self, value: int, cmd: Pending | None) -> None:
        """HIGHESTMODSEQ never goes down (RFC 7162 §3.1.2.1). It may lag behind the MODSEQs of messages the
        session already saw (Dovecot's does): a client then asks for a few changes twice, which is safe."""
        if value < self.highest:
            self.error(f"HIGHESTMODSEQ {value} below the {self.highest} reported before", "HIGHESTMODSEQ went down",
                       cmd)  # fmt: skip
        self.highest = max(self.highest, value)

    def _exists(self, number: int, cmd: Pending | None) -> None:
        if self.selecting and cmd is not None and cmd.name == "SELECT" and not self.slots:
            self.slots = [Slot() for _ in range(number)]
            return
        if number < len(self.slots):
            self.error(f"* {number} EXISTS with {len(self.slots)} messages and no EXPUNGE", "EXISTS shrank", cmd)
            del self.slots[number:]
            return
        floor = self.uidnext or 1
        self.slots.extend(Slot(at_least=floor) for _ in range(number - len(self.slots)))

    def _may_expunge(self, what: str, cmd: Pending | None) -> None:
        if cmd is None:
            self.error(f"{what} while no command was in progress (RFC 9051 §7.5.1)", "EXPUNGE outside a command")
        elif cmd.kind:
            self.error(f"{what} during {cmd.name} (RFC 9051 §7.5.1)", f"EXPUNGE during {cmd.name}", cmd)

    def _remove(self, index: int, cmd: Pending | None) -> None:
        slot = self.slots.pop(index)
        if slot.uid is None:
            if cmd is not None:
                cmd.gone_unknown += 1
            return
        self.gone.add(slot.uid)
        self.owned.pop(slot.uid, None)
        if cmd is not None:
            cmd.gone.add(slot.uid)

    def _expunge(self, number: int, cmd: Pending | None) -> None:
        self._may_expunge(f"* {number} EXPUNGE", cmd)
        if self.qresync:
            self.error("EXPUNGE after ENABLE QRESYNC (RFC 7162 §3.2.10: VANISHED instead)", "EXPUNGE under QRESYNC",
                       cmd)  # fmt: skip
        if not 1 <= number <= len(self.slots):
            self.error(f"* {number} EXPUNGE with {len(self.slots)} messages", "EXPUNGE out of range", cmd)
            return
        self._remove(number - 1, cmd)

    def _vanished(self, rest: str, cmd: Pending | None) -> None:
        if rest.upper().startswith("(EARLIER)"):
            self.error(f"VANISHED (EARLIER) {rest} unasked", "VANISHED (EARLIER)", cmd)
            return
        self._may_expunge(f"* VANISHED {rest}", cmd)
        if not self.qresync:
            self.error("VANISHED without ENABLE QRESYNC", "VANISHED without QRESYNC", cmd)
        for uid in parse_set(rest.strip()):
            index = next((i for i, s in enumerate(self.slots) if s.uid == uid), None)
            if index is None:
                index = self._gap(uid)
                if index is not None:
                    self.gone.add(uid)
            if index is None:
                self.error(f"VANISHED names UID {uid}, not a message of this session (RFC 7162 §3.2.10)",
                           "VANISHED unknown UID", cmd)  # fmt: skip
                continue
            self._remove(index, cmd)
            if cmd is not None:
                cmd.gone.add(uid)

    def _gap(self, uid: int) -> int | None:
        """A slot of unknown UID where `uid` fits between the known UIDs around it, or None. The unknown
        slots between two known ones are alike to the model, so any of them may stand for `uid`."""
        after = next((i for i, s in enumerate(self.slots) if s.uid is not None and s.uid > uid), len(self.slots))
        if after == 0 or self.slots[after - 1].uid is not None:
            return None
        slot = self.slots[after - 1]
        if uid < slot.at_least or (slot.below is not None and uid >= slot.below):
            return None
        return after - 1

    def _set_uid(self, seq: int, slot: Slot, uid: int, cmd: Pending | None) -> bool:
        if slot.uid is not None:
            if slot.uid != uid:
                self.error(f"* {seq} FETCH (UID {uid}) but message {seq} is UID {slot.uid}", "UID mismatch", cmd)
                return False
            return True
        problems = []
        if uid in self.gone:
            problems.append("was expunged")
        before = next((s.uid for s in reversed(self.slots[: seq - 1]) if s.uid is not None), 0)
        after = next((s.uid for s in self.slots[seq:] if s.uid is not None), None)
        if uid <= before or (after is not None and uid >= after):
            problems.append(f"is not between its neighbours' UIDs {before} and {after}")
        if slot.below is not None and uid >= slot.below:
            problems.append(f"is not below UIDNEXT {slot.below} announced by SELECT")
        if uid < slot.at_least:
            problems.append(f"arrived after SELECT but is below its UIDNEXT {slot.at_least}")
        if problems:
            self.error(f"* {seq} FETCH (UID {uid}): the UID " + "; ".join(problems), "UID order", cmd)
            return False
        slot.uid = uid
        return True

    def _fetch(self, seq: int, items: dict[str, Token], cmd: Pending | None) -> None:
        if not 1 <= seq <= len(self.slots):
            self.error(f"* {seq} FETCH with {len(self.slots)} messages", "FETCH out of range", cmd)
            return
        slot = self.slots[seq - 1]
        if "UID" in items and not self._set_uid(seq, slot, int(items["UID"]), cmd):
            return
        uid = slot.uid
        solicited = cmd is not None and cmd.name in ("FETCH", "UID FETCH") and uid in cmd.targets
        if uid is None:
            return  # announced by EXISTS and not fetched yet: learn() checks it
        if self.condstore and not solicited:
            if "MODSEQ" not in items:
                self.error(f"* {seq} FETCH {sorted(items)} without MODSEQ after ENABLE CONDSTORE (RFC 7162 §3.1)",
                           "FETCH without MODSEQ under CONDSTORE", cmd)  # fmt: skip
            elif "UID" not in items:
                self.error(f"* {seq} FETCH {sorted(items)} without UID after ENABLE CONDSTORE (RFC 7162 §3.2.4, a "
                           "server offering QRESYNC)", "FETCH without UID under CONDSTORE", cmd)  # fmt: skip
        if "MODSEQ" in items:
            value = items["MODSEQ"]
            modseq = int(value[0])
            if slot.modseq is not None and modseq < slot.modseq:
                self.error(f"UID {uid} MODSEQ went down from {slot.modseq} to {modseq}", "MODSEQ went down", cmd)
        else:
            modseq = None
        if "FLAGS" in items:
            self._flags(seq, uid, slot, items["FLAGS"], modseq, cmd)
        if modseq is not None:
            slot.modseq = modseq
        body = items.get("BODY[]", b"")
        if "BODY[]" in items:
            if not isinstance(body, bytes):
                self.error(f"* {seq} FETCH (UID {uid} BODY[] {body!r}): a message expunged meanwhile must still be "
                           "readable (RFC 2180 §4.1.1, issue 9), not NIL (§4.1.3)", "BODY[] NIL", cmd)  # fmt: skip
            else:
                digest = hashlib.sha256(body).digest()
                known = self.run.contents.setdefault(uid, digest)
                if known != digest:
                    self.error(f"UID {uid} BODY[] ({len(body)} octets) differs from the message stored under it",
                               "BODY[] differs", cmd)  # fmt: skip
                msgid = message_id_of(body)
                if msgid is not None:
                    self._message_id(uid, msgid, "BODY[]", cmd)
        envelope = items.get("ENVELOPE")
        if envelope is not None:
            if not isinstance(envelope, list) or len(envelope) != 10:
                self.error(f"UID {uid} ENVELOPE is not a 10-item list", "ENVELOPE malformed", cmd)
            elif isinstance(envelope[9], bytes):
                self._message_id(uid, envelope[9], "ENVELOPE", cmd)
        if cmd is not None:
            cmd.fetched[uid].append(items)

    def _message_id(self, uid: int, msgid: bytes, where: str, cmd: Pending | None) -> None:
        known = self.run.message_ids.setdefault(uid, msgid)
        if known != msgid:
            self.error(f"UID {uid} {where} Message-ID {msgid!r}, earlier {known!r}", "Message-ID differs", cmd)

    def _flags(self, seq: int, uid: int, slot: Slot, value: Token, modseq: int | None, cmd: Pending | None) -> None:
        if not isinstance(value, list):
            raise ProtocolError("FLAGS is not a list")
        flags = frozenset(str(f).lower() for f in value)
        unannounced = sorted(f for f in flags if f not in SYSTEM_FLAGS and f not in self.announced)
        if unannounced:
            self.error(f"* {seq} FETCH (UID {uid} FLAGS {value}): keyword {', '.join(unannounced)} used before"
                       " a FLAGS response announced it (RFC 9051 §7.3.5)", "keyword not announced in FLAGS",
                       cmd)  # fmt: skip
            self.announced |= set(unannounced)  # one finding per keyword, not one per message
        for keyword, expected in self.owned.get(uid, {}).items():
            if (keyword in flags) != expected:
                self.error(f"* {seq} FETCH (UID {uid} FLAGS {value}): {keyword} is {'missing' if expected else 'back'}"
                           f" though this session's STORE {'set' if expected else 'cleared'} it and nobody else "
                           "touches it", "owned keyword lost", cmd)  # fmt: skip
        flags -= {"\\recent"}
        if modseq is not None and modseq == slot.modseq and slot.flags is not None and flags != slot.flags:
            self.error(f"UID {uid} flags changed at the same MODSEQ {modseq}", "MODSEQ unchanged", cmd)
        slot.flags = flags

    # -- commands with their checks ----------------------------------------------------------------------

    def _uids(self) -> list[int]:
        return [s.uid for s in self.slots if s.uid is not None]

    def _seq(self, uid: int) -> int:
        return next(i + 1 for i, s in enumerate(self.slots) if s.uid == uid)

    async def select(self) -> None:
        self.selecting = True
        self.slots = []
        self.owned = {}
        self.uidnext = None
        self.dirty = False
        self.check_late.clear()
        self.check_gone.clear()
        try:
            status, cmd = await self.command_with("SELECT INBOX", "SELECT")
        finally:
            self.selecting = False
        if status.word != "OK":
            self.broken = True
            return
        if self.uidnext is None:
            self.error("SELECT without UIDNEXT", "SELECT incomplete", cmd)
        for slot in self.slots:
            slot.below = self.uidnext
        await self.learn()

    async def learn(self) -> None:
        """FETCH the UIDs and flags of the messages announced by EXISTS and not fetched yet."""
        unknown = [i + 1 for i, s in enumerate(self.slots) if s.uid is None]
        if not unknown:
            return
        items = "UID FLAGS MODSEQ" if self.condstore else "UID FLAGS"
        first, last = unknown[0], len(self.slots)
        status, cmd = await self.command_with(f"FETCH {first}:{last} ({items})", "FETCH", kind="FETCH",
                                              timed=False)  # fmt: skip
        missing = [i + 1 for i, s in enumerate(self.slots) if s.uid is None and i + 1 <= last]
        if status.word == "OK" and missing:
            self.error(f"FETCH {first}:{last} answered OK without messages {format_set(missing)}", "FETCH skipped", cmd)

    async def noop(self) -> Pending:
        _, cmd = await self.command_with("NOOP", "NOOP")
        return cmd

    async def _settle(self) -> None:
        """Checks that needed a NOOP: UIDs a command skipped must be gone, late UIDs must not be there."""
        if not self.check_late and not self.check_gone:
            return
        await self.noop()
        await self.learn()
        present = set(self._uids())
        for uid, name, what in self.check_gone:
            if uid in present:
                self.error(f"UID {uid}: {what}; the message still exists", f"{name} skipped a message")
            else:
                self.tolerate(f"{name} skipped a message expunged meanwhile (RFC 2180 §4.2.1, §4.4.2)")
        for uid in self.check_late:
            if uid in present:
                self.error(f"UID {uid} (APPEND/COPY into the selected mailbox) was announced only after the "
                           "tagged OK (RFC 9051 §6.3.12, issue 9: EXISTS before the tagged OK)",
                           "no EXISTS before tagged OK")  # fmt: skip
            else:
                self.tolerate("new message expunged before its EXISTS")
        self.check_late.clear()
        self.check_gone.clear()

    def _covers(self, uid: int) -> bool:
        """Whether the model has room for a new UID: known, told gone, or a slot of unknown UID where it fits."""
        return uid in self.gone or any(s.uid == uid for s in self.slots) or self._gap(uid) is not None

    def _pick(self, count: int) -> list[int]:
        uids = self._uids()
        return sorted(self.rng.sample(uids, min(count, len(uids))))

    def _set_of(self, uids: list[int], by_uid: bool) -> str:
        return format_set(uids if by_uid else [self._seq(u) for u in uids])

    async def fetch(self, with_body: bool) -> None:
        by_uid = self.rng.random() < 0.5
        if with_body:
            uids = self._pick(self.rng.randint(1, 3))
            asks = ["UID", "FLAGS", "BODY.PEEK[]", "ENVELOPE"]
        else:
            uids = self._pick(self.rng.randint(1, 8))
            asks = ["FLAGS"] + (["UID"] if self.rng.random() < 0.5 else [])
        if not uids:
            return
        if self.condstore and self.rng.random() < 0.5:
            asks.append("MODSEQ")
        name = "UID FETCH" if by_uid else "FETCH"
        line = f"{name} {self._set_of(uids, by_uid)} ({' '.join(asks)})"
        status, cmd = await self.command_with(line, name, kind="" if by_uid else "FETCH", targets=frozenset(uids),
                                              fetch_asks=frozenset(asks))  # fmt: skip
        if status.word != "OK":
            return
        for uid in uids:
            responses = cmd.fetched.get(uid, [])
            if uid in cmd.gone:
                continue  # UID FETCH may report the expunge instead (RFC 9051 §7.5.1 allows it there)
            got = set().union(*responses) if responses else set()
            wanted = {"BODY[]" if a == "BODY.PEEK[]" else a for a in asks} | ({"UID"} if by_uid else set())
            if not wanted <= got:
                self.error(f"{name} answered OK without {sorted(wanted - got)} for UID {uid}", "FETCH incomplete",
                           cmd)  # fmt: skip

    def _store_flags(self) -> tuple[str, list[str]]:
        op = self.rng.choice("+-")
        flags = self.rng.sample(SHARED_FLAGS, self.rng.randint(1, 3))
        return op, flags

    async def store(self, op: str, flags: list[str], uids: list[int], *, silent: bool | None = None,
                    by_uid: bool | None = None) -> tuple[Status, Pending] | None:  # fmt: skip
        uids = [u for u in uids if any(s.uid == u for s in self.slots)]
        if not uids:
            return None
        if by_uid is None:
            by_uid = self.rng.random() < 0.5
        if silent is None:
            silent = self.rng.random() < 0.25
        name = "UID STORE" if by_uid else "STORE"
        item = f"{op}FLAGS{'.SILENT' if silent else ''}"
        line = f"{name} {self._set_of(uids, by_uid)} {item} ({' '.join(flags)})"
        wanted = {f.lower() for f in flags}
        owned = sorted(wanted & {k.lower() for k in OWNED_KEYWORDS})
        mine = [u for u in uids if u % self.run.sessions == self.index] if owned else []
        for uid in mine:  # while the STORE runs a FETCH may show either state
            for keyword in owned:
                self.owned.get(uid, {}).pop(keyword, None)

        def on_start() -> None:
            if silent:
                self._apply_silent(uids, op, wanted)

        def on_ok() -> None:
            for uid in mine:
                if any(s.uid == uid for s in self.slots):
                    self.owned.setdefault(uid, {}).update(dict.fromkeys(owned, op == "+"))

        status, cmd = await self.command_with(line, name, kind="" if by_uid else "STORE", targets=frozenset(uids),
                                              on_start=on_start, on_ok=on_ok)  # fmt: skip
        if status.word != "OK":
            return status, cmd
        for uid in uids:
            slot = next((s for s in self.slots if s.uid == uid), None)
            if uid in cmd.gone or slot is None:
                continue
            if not silent:
                responses = cmd.fetched.get(uid, [])
                shown = [frozenset(str(f).lower() for f in r["FLAGS"]) for r in responses if "FLAGS" in r]
                # Only this session changes its owned keywords and nobody clears \Deleted, so some FETCH must
                # show those; other flags may have been changed again by another session before the server
                # reported them (Dovecot reports the latest state). A STORE that changes nothing may send
                # no FETCH at all: then the session's flags must already show the request.
                stable = wanted & ({k.lower() for k in OWNED_KEYWORDS} | ({"\\deleted"} if op == "+" else set()))
                if shown:
                    bad = stable and not any(self._shows(op, stable, f) for f in shown)
                else:
                    bad = slot.flags is not None and not self._shows(op, wanted, slot.flags)
                if bad:
                    # The message may be gone (moved or expunged by another session): the next NOOP says.
                    self.check_gone.append((uid, name, f"{line} answered OK but no FETCH shows {op}FLAGS for it: "
                                                       f"{[sorted(f) for f in shown]} (RFC 9051 §6.4.6)"))  # fmt: skip
            got_fetch = any("FLAGS" in r for r in cmd.fetched.get(uid, []))
            changed = slot.flags is not None and any((k in slot.flags) != (op == "+") for k in owned)
            if uid in mine and got_fetch and changed:  # a FETCH after the one showing the change undid it
                self.error(f"after {line} UID {uid} has flags {sorted(slot.flags)}", "owned keyword lost", cmd)
        return status, cmd

    @staticmethod
    def _shows(op: str, wanted: set[str], flags: frozenset[str]) -> bool:
        return wanted <= flags if op == "+" else not (wanted & flags)

    def _apply_silent(self, uids: Iterable[int], op: str, flags: set[str]) -> None:
        """With STORE .SILENT the client works out the new flags itself (RFC 9051 §6.4.6), as the server
        starts on the command; FETCH responses after that (changes by others) override it. The MODSEQ is
        then unknown."""
        chosen = set(uids)
        for slot in self.slots:
            if slot.uid in chosen and slot.flags is not None:
                slot.flags = slot.flags | flags if op == "+" else slot.flags - flags
                slot.modseq = None

    async def store_shared(self) -> None:
        op, flags = self._store_flags()
        await self.store(op, flags, self._pick(self.rng.randint(1, 4)))

    async def store_owned(self) -> None:
        mine = [u for u in self._uids() if u % self.run.sessions == self.index % self.run.sessions]
        if not mine:
            return
        uids = sorted(self.rng.sample(mine, min(len(mine), self.rng.randint(1, 3))))
        await self.store(self.rng.choice("+-"), self.rng.sample(OWNED_KEYWORDS, self.rng.randint(1, 2)), uids)

    async def new_keyword(self) -> None:
        if self.run.next_keyword >= self.run.new_keywords:
            return await self.store_shared()
        self.run.next_keyword += 1
        keyword = f"$New{self.run.next_keyword}"
        await self.store("+", [keyword], self._pick(1), silent=False)

    async def expunge(self) -> None:
        uids = self._pick(self.rng.randint(1, 2))
        if not uids or await self.store("+", ["\\Deleted"], uids) is None:
            return
        deleted = {s.uid for s in self.slots if s.flags is not None and "\\deleted" in s.flags}
        status, cmd = await self.command_with("EXPUNGE", "EXPUNGE")
        if status.word != "OK":
            return
        left = sorted(u for u in deleted if any(s.uid == u for s in self.slots))
        if left:
            self.error(f"EXPUNGE answered OK but UIDs {format_set(left)} with \\Deleted are still there "
                       "(RFC 9051 §6.4.3)", "EXPUNGE left deleted messages", cmd)  # fmt: skip
        if status.code == "HIGHESTMODSEQ":
            self._highestmodseq(int(status.code_args), cmd)

    async def uid_expunge(self) -> None:
        uids = self._pick(1)
        if not uids or await self.store("+", ["\\Deleted"], uids, by_uid=True) is None:
            return
        status, cmd = await self.command_with(f"UID EXPUNGE {uids[0]}", "UID EXPUNGE")
        if status.word == "OK" and any(s.uid == uids[0] for s in self.slots):
            self.error(f"UID EXPUNGE answered OK but UID {uids[0]} is still there", "UID EXPUNGE left it", cmd)

    def new_message(self) -> bytes:
        self.appended += 1
        n = self.appended
        words = " ".join(self.rng.choice(("alpha", "bravo", "charlie", "delta", "echo")) for _ in range(8))
        body = "\r\n".join(f"{words} line {i}" for i in range(self.rng.randint(3, 60)))
        return (
            f"From: Stress {self.index} <s{self.index}@example.test>\r\nTo: bob@example.test\r\n"
            f"Subject: stress {self.index}.{n} {words[:20]}\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <stress-{self.run.seed}-{self.index}-{n}@example.test>\r\n\r\n{body}\r\n"
        ).encode()

    async def append(self, mailbox: str = "INBOX", timed: bool = True) -> None:
        message = self.new_message()
        flags = self.rng.sample(SHARED_FLAGS, self.rng.randint(0, 2))
        cmd = self._new_pending("", "APPEND", timed=timed)
        sync = self.rng.random() < 0.5
        head = f'{cmd.tag} APPEND "{mailbox}" ({" ".join(flags)}) {{{len(message)}{"" if sync else "+"}}}'
        cmd.line = head.partition(" ")[2]
        self.pending.append(cmd)
        cmd.sent_at = time.perf_counter()
        self._note("C", head)
        if sync:
            loop = asyncio.get_running_loop()
            self.continuation = loop.create_future()
            await self._send(head.encode() + b"\r\n")
            assert cmd.future is not None
            done, _ = await asyncio.wait({self.continuation, cmd.future}, timeout=RESPONSE_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if self.continuation in done:
                await self._send(message + b"\r\n")
            else:
                self.continuation.cancel()
        else:
            await self._send(head.encode() + b"\r\n" + message + b"\r\n")
        status = await self._wait(cmd)
        self._check_status(cmd, status)
        if status.word != "OK" or mailbox != "INBOX":
            return
        if status.code != "APPENDUID":
            self.error(f"APPEND OK without APPENDUID: {status.show()} (RFC 4315 §3)", "APPENDUID missing", cmd)
            return
        validity, uid_text = status.code_args.split()
        uid = int(uid_text)
        if self.uidvalidity is not None and int(validity) != self.uidvalidity:
            self.error(f"APPENDUID UIDVALIDITY {validity} != {self.uidvalidity}", "APPENDUID UIDVALIDITY", cmd)
        self.run.contents[uid] = hashlib.sha256(message).digest()
        msgid = message_id_of(message)
        assert msgid is not None
        self.run.message_ids[uid] = msgid
        if not self._covers(uid):
            self.check_late.append(uid)

    async def copy(self, move: bool) -> None:
        by_uid = self.rng.random() < 0.5
        uids = self._pick(self.rng.randint(1, 3))
        if not uids:
            return
        verb = "MOVE" if move else "COPY"
        name = ("UID " if by_uid else "") + verb
        target = ARCHIVE if move else "INBOX"
        line = f'{name} {self._set_of(uids, by_uid)} "{target}"'
        status, cmd = await self.command_with(line, name, targets=frozenset(uids))
        if status.word != "OK":
            return
        code = cmd.copyuid if move else (status.code_args if status.code == "COPYUID" else "")
        if code:
            validity, source_text, dest_text = code.split()
            sources, dests = parse_set(source_text), parse_set(dest_text)
            if len(sources) != len(dests) or not set(sources) <= set(uids):
                self.error(f"COPYUID {code} does not match {line}", "COPYUID wrong", cmd)
                return
            if not move and self.uidvalidity is not None and int(validity) != self.uidvalidity:
                self.error(f"COPYUID UIDVALIDITY {validity} != {self.uidvalidity}", "COPYUID UIDVALIDITY", cmd)
        else:  # RFC 4315 §3: COPYUID when messages were copied; with none copied there is none to give
            sources, dests = [], []
        for uid in sorted(set(uids) - set(sources)):
            if uid in cmd.gone:
                continue
            if not by_uid:
                self.error(f"{name} answered {status.word} without UID {uid} and without its pending EXPUNGE (RFC 2180 "
                           "§4.4: pending EXPUNGE responses MUST be returned to the COPY)",
                           f"{verb} skipped a message without EXPUNGE", cmd)  # fmt: skip
            else:
                self.check_gone.append((uid, name, f"{line} answered OK without {verb.lower()}ing it (not in COPYUID)"))
        if move:
            left = sorted(u for u in sources if any(s.uid == u for s in self.slots))
            if left:
                self.error(f"{name} answered OK but UIDs {format_set(left)} are still in INBOX (RFC 6851 §3.3)",
                           "MOVE left messages", cmd)  # fmt: skip
            return
        for source, dest in zip(sources, dests, strict=True):
            for registry in (self.run.contents, self.run.message_ids):
                if source in registry:
                    registry.setdefault(dest, registry[source])
            if not self._covers(dest):
                self.check_late.append(dest)

    async def idle(self) -> None:
        cmd = self._new_pending("IDLE", "IDLE", timed=False)
        self.pending.append(cmd)
        self.continuation = asyncio.get_running_loop().create_future()
        self._note("C", f"{cmd.tag} IDLE")
        await self._send(f"{cmd.tag} IDLE\r\n".encode())
        assert cmd.future is not None
        done, _ = await asyncio.wait({self.continuation, cmd.future}, timeout=RESPONSE_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if self.continuation in done:
            await asyncio.sleep(self.rng.uniform(0.01, 0.15))
            self._note("C", "DONE")
            await self._send(b"DONE\r\n")
        else:
            self.continuation.cancel()
        status = await self._wait(cmd)
        self._check_status(cmd, status)

    async def pipelined(self) -> None:
        """UID FETCH, UID STORE and NOOP sent at once: the tagged responses must come back in order. The
        STORE is not .SILENT: a server may run pipelined commands together (Dovecot does), so the client
        could not tell which untagged FETCH came before a silent change of its own."""
        uids = self._pick(2)
        if not uids:
            return
        op, flags = self._store_flags()
        lines = [
            (f"UID FETCH {format_set(uids)} (UID FLAGS)", "UID FETCH"),
            (f"UID STORE {format_set(uids)} {op}FLAGS ({' '.join(flags)})", "UID STORE"),
            ("NOOP", "NOOP"),
        ]
        cmds = [self._new_pending(line, name, timed=False, targets=frozenset(uids if i < 2 else ()))
                for i, (line, name) in enumerate(lines)]  # fmt: skip
        data = b""
        for cmd in cmds:
            self.pending.append(cmd)
            cmd.sent_at = time.perf_counter()
            self._note("C", f"{cmd.tag} {cmd.line}")
            data += f"{cmd.tag} {cmd.line}\r\n".encode()
        await self._send(data)
        for cmd in cmds:
            self._check_status(cmd, await self._wait(cmd))

    # -- the load --------------------------------------------------------------------------------------

    def _actions(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {
            "fetch_flags": lambda: self.fetch(False),
            "fetch_body": lambda: self.fetch(True),
            "store": self.store_shared,
            "store_owned": self.store_owned,
            "new_keyword": self.new_keyword,
            "expunge": self.expunge,
            "uid_expunge": self.uid_expunge,
            "append": self.append,
            "copy": lambda: self.copy(False),
            "move": lambda: self.copy(True),
            "idle": self.idle,
            "noop": lambda: self.noop_only(),
            "select": self.select,
            "pipeline": self.pipelined,
        }

    async def noop_only(self) -> None:
        await self.noop()

    def _choose(self, weights: dict[str, float]) -> str:
        count = len(self.slots)
        adjusted = dict(weights)
        # Keep the mailbox between about 15 and 80 messages: more arrive when it is small, fewer when large.
        for grow in ("append", "copy"):
            if grow in adjusted:
                adjusted[grow] *= 3.0 if count < 15 else 0.2 if count > 80 else 1.0
        for shrink in ("expunge", "uid_expunge", "move"):
            if shrink in adjusted:
                adjusted[shrink] *= 0.2 if count < 15 else 3.0 if count > 80 else 1.0
        names = list(adjusted)
        return self.rng.choices(names, [adjusted[n] for n in names])[0]

    async def step(self, weights: dict[str, float]) -> None:
        if self.dirty:
            await self.select()
            return
        await self._settle()
        await self.learn()
        action = self._choose(weights)
        await self._actions()[action]()

    async def finish(self) -> None:
        """The end of the load: a NOOP brings every change in, then the messages still unknown are fetched."""
        if self.broken:
            return
        if self.dirty:
            await self.select()
        await self._settle()
        await self.noop()
        await self.learn()


ACTIONS: dict[str, float] = {
    "fetch_flags": 10, "fetch_body": 8, "store": 14, "store_owned": 8, "new_keyword": 1, "expunge": 4,
    "uid_expunge": 3, "append": 6, "copy": 3, "move": 2, "idle": 3, "noop": 5, "select": 1, "pipeline": 3,
}  # fmt: skip
MODES = ("", "CONDSTORE", "QRESYNC", "IMAP4rev2")
LOGINS_AT_ONCE = 5


async def seed_mailbox(run: Run, messages: int) -> None:
    """Create the MOVE target and APPEND the starting messages (through a model session, so checked too)."""
    session = Session(run, 0, "", random.Random(run.seed))
    await session.open()
    await session.command(f'CREATE "{ARCHIVE}"', "CREATE", timed=False)
    for _ in range(messages):
        await session.append("INBOX", timed=False)
    await session.close()


async def read_server(run: Run) -> dict[int, frozenset[str]]:
    """The mailbox as a fresh session reads it: UID -> flags (\\Recent aside)."""
    session = Session(run, run.sessions, "", random.Random(0))
    session.name = "fresh"
    await session.open()
    await session.select()
    state = {s.uid: s.flags or frozenset() for s in session.slots if s.uid is not None}
    await session.close()
    return state


def compare(session: Session, truth: dict[int, frozenset[str]]) -> None:
    """A session's model after its final NOOP against the server's state."""
    uids = session._uids()
    if uids != sorted(truth):
        extra, missing = sorted(set(uids) - set(truth)), sorted(set(truth) - set(uids))
        session.error(f"at the end the session has {len(uids)} messages, the server {len(truth)}; only in the "
                      f"session: {format_set(extra) or '-'}, only on the server: {format_set(missing) or '-'}",
                      "final state: messages differ")  # fmt: skip
    for slot in session.slots:
        if slot.uid in truth and slot.flags is not None and slot.flags != truth[slot.uid]:
            session.error(f"at the end UID {slot.uid} has flags {sorted(slot.flags)} in the session, "
                          f"{sorted(truth[slot.uid])} on the server", "final state: flags differ")  # fmt: skip


async def stress(run: Run, seconds: float, *, seed_messages: int = 0) -> dict[str, Any]:
    """Run the load: `run.sessions` sessions for `seconds`, then the final comparison. Returns a summary;
    the findings are in `run.errors` / `run.error_kinds`, the races allowed in `run.tolerated`."""
    await seed_mailbox(run, seed_messages)
    weights = run.weights or ACTIONS
    sessions = [Session(run, i, MODES[i % len(MODES)], random.Random(run.seed * 1000 + i)) for i in range(run.sessions)]
    # Five logins at a time: the load is about one mailbox, not about LOGIN (Kartero's throttle refuses
    # more than ten at once from one address: test_imap_stress.py covers that apart).
    for first in range(0, len(sessions), LOGINS_AT_ONCE):
        await asyncio.gather(*(s.open() for s in sessions[first : first + LOGINS_AT_ONCE]))
    await asyncio.gather(*(s.select() for s in sessions))
    run.commands = 0
    run.latencies.clear()
    started = time.monotonic()
    deadline = started + seconds

    async def drive(session: Session) -> None:
        while time.monotonic() < deadline and not session.broken:
            try:
                await session.step(weights)
            except ConnectionError:
                session.broken = True
                session.error("connection lost", "connection lost")

    await asyncio.gather(*(drive(s) for s in sessions))
    elapsed = time.monotonic() - started
    commands = run.commands
    await asyncio.gather(*(s.finish() for s in sessions))
    truth = await read_server(run)
    for session in sessions:
        if not session.broken:
            compare(session, truth)
    await asyncio.gather(*(s.close() for s in sessions))
    return {
        "sessions": run.sessions,
        "seconds": elapsed,
        "commands": commands,
        "commands_per_s": commands / elapsed if elapsed else 0.0,
        "messages_at_end": len(truth),
        "errors": sum(run.error_kinds.values()),
        "broken_sessions": sum(s.broken for s in sessions),
    }


def report(run: Run, summary: dict[str, Any], *, findings: int = 12) -> str:
    """A readable account of a run: throughput, error kinds, tolerated races and the first findings."""
    lines = [
        f"{summary['sessions']} sessions, {summary['seconds']:.1f} s: {summary['commands']} commands, "
        f"{summary['commands_per_s']:.0f} commands/s; {summary['messages_at_end']} messages at the end; "
        f"{summary['errors']} errors; {summary['broken_sessions']} sessions lost"
    ]
    for kind, count in run.error_kinds.most_common():
        lines.append(f"  error {count:6d} x {kind}")
    for kind, count in run.tolerated.most_common():
        lines.append(f"  tolerated {count:6d} x {kind}")
    for finding in run.errors[:findings]:
        lines.append(finding.show())
    return "\n".join(lines)


def copy_run(run: Run, **changes: Any) -> Run:
    """A new Run with the same settings and fresh results."""
    names = ("host", "port", "user", "password", "sessions", "seed", "weights", "new_keywords", "transcripts",
             "transcript_lines")  # fmt: skip
    keep = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name in names}
    return Run(**{**keep, **changes})
