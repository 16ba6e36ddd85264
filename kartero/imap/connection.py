"""The IMAP server core: bytes in, events and responses out (sans-I/O).

The adapter feeds bytes with `receive_data`, drains `next_event()`, and answers what needs I/O:
- `CommandReady`: run the handler (store access), `send()` its untagged responses, then `finish()`;
- `LoginRequested`: check the password, then `login_result()`;
- `StartTLSRequested`, `CompressRequested`: change the transport, then `tls_established()` / nothing;
- `IdleStarted`: push updates with `send()` until `IdleDone`, then `finish()`;
- `AppendData`: a piece of a large APPEND message, for the adapter's spool file (nothing to answer);
- `OutputReady`: responses filled OUTPUT_HIGH_WATER: send them before asking for the next event;
- `Unauthenticated`: UNAUTHENTICATE done: forget the user's session (nothing to answer).
Framing, literals (with their size limits), tags, syntax, state rules, CAPABILITY, ENABLE, ID,
NAMESPACE and LOGOUT are handled here. One command runs at a time; pipelined input waits in the buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from kartero.auth.sasl import SASLError, decode_base64, parse_plain
from kartero.imap import metadata
from kartero.imap import response as r
from kartero.imap.response import Status
from kartero.imap.state import ALLOWED, ImapState, ProtocolViolation
from kartero.imap.syntax import (
    MAX_URL,
    Append,
    Authenticate,
    Command,
    Compress,
    Enable,
    Id,
    Login,
    Refused,
    Simple,
    parse_command,
)
from kartero.imap.tokens import (
    MAX_TOKENS,
    Atom,
    LiteralRequest,
    ParseError,
    RawCommand,
    Token,
    first_words,
    split_literal,
    tokenize,
    upper_ascii,
)

# tag = 1*<any ASTRING-CHAR except "+"> (RFC 9051 §9): printable, without ( ) { SP % * " \ +.
_TAG = re.compile(r"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
# Bounds on what a client may make us buffer (RFC 9051 §4.3 leaves them to the server).
MAX_LINE = 64 * 1024
MAX_LITERAL_UNAUTHENTICATED = 4 * 1024
MAX_LITERAL = 64 * 1024
MAX_COMMAND = 1024 * 1024
# An APPEND literal larger than this is not held: it leaves the core in AppendData pieces as it arrives,
# so a session holds about this much of a message, whatever its size (issue 8, finding 6).
APPEND_SPOOL_THRESHOLD = 1024 * 1024
# The command names counted (`take_command_counts`, for the adapter's metrics): those of the state table,
# UID with its subcommand ("UID FETCH"); any other word counts as OTHER, so no client grows the table.
COUNTED_COMMANDS = frozenset().union(*ALLOWED.values())
UID_SUBCOMMANDS = frozenset({"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD", "EXPUNGE"})
APPEND_PIECE = 64 * 1024
# MULTIAPPEND (RFC 3502): the messages of one APPEND take at most this many times APPENDLIMIT together
# (each one APPENDLIMIT at most). They go to one spool file once past APPEND_SPOOL_THRESHOLD in memory,
# so this bounds the disk one command fills before the store sees it, not memory.
MULTIAPPEND_LIMIT_FACTOR = 4
# Responses that may wait in the core before it reports OutputReady (pipelined CAPABILITY, NOOP, ...).
OUTPUT_HIGH_WATER = 64 * 1024


@dataclass(frozen=True, slots=True)
class ImapSettings:
    hostname: str
    append_limit: int = 50_000_000
    is_tls_available: bool = False
    is_compress_available: bool = True
    max_errors: int = 30
    default_quota: int = 0  # [limits] default_quota, for the handlers (RFC 9208 STORAGE); 0: none

    def __post_init__(self) -> None:
        if self.append_limit < 1:
            raise ValueError("append_limit must be positive")


@dataclass(frozen=True, slots=True)
class CommandReady:
    tag: str
    command: Command


@dataclass(frozen=True, slots=True)
class LoginRequested:
    tag: str
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class StartTLSRequested:
    tag: str


@dataclass(frozen=True, slots=True)
class CompressRequested:
    tag: str


@dataclass(frozen=True, slots=True)
class IdleStarted:
    tag: str


@dataclass(frozen=True, slots=True)
class IdleDone:
    tag: str


@dataclass(frozen=True, slots=True)
class AppendData:
    """The next piece of a large APPEND message (see APPEND_SPOOL_THRESHOLD). `is_first` starts a new
    message: whatever the adapter kept of an earlier one (whose command then failed) is not wanted."""

    data: bytes
    is_first: bool = False


@dataclass(frozen=True, slots=True)
class OutputReady:
    pass


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """UNAUTHENTICATE (RFC 8437) succeeded: the adapter drops what it kept for the user (the selected
    mailbox, without expunging); the core is back in NOT_AUTHENTICATED with no extension enabled."""

    tag: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    reason: str


Event = (
    CommandReady | LoginRequested | StartTLSRequested | CompressRequested | IdleStarted | IdleDone | AppendData
    | OutputReady | Unauthenticated | ConnectionClosed
)  # fmt: skip


@dataclass
class _Pending:
    """The command being assembled from lines and literals (a literal grows in place as octets arrive)."""

    lines: list[bytes] = field(default_factory=list)
    literals: list[bytearray] = field(default_factory=list)
    size: int = 0
    held: int = 0  # octets of APPEND literals kept in memory
    # (literal index, size) of the APPEND literals handed out in AppendData events instead of kept
    spooled: list[tuple[int, int]] = field(default_factory=list)
    is_spooling: bool = False  # the literal being read is one of them
    is_catenate: bool = False  # an APPEND with CATENATE so far (RFC 4469): URL literals are not spooled
    urls: int = 0  # octets of CATENATE URL literals held (within MAX_COMMAND, not the messages' allowance)


class ImapConnection:
    """One IMAP session, greeting to BYE."""

    def __init__(self, settings: ImapSettings, *, is_tls: bool = False, is_loopback: bool = False) -> None:
        self.settings = settings
        self.state = ImapState.NOT_AUTHENTICATED
        self.is_tls = is_tls
        self.is_loopback = is_loopback
        self.enabled: set[str] = set()
        self.user: str | None = None
        self._in = bytearray()
        self._scanned = 0  # octets at the start of _in known to hold no LF: each octet is searched once
        self._out = bytearray()
        self._is_output_reported = False
        self._is_eof = False
        self._pending = _Pending()
        self._literal_left = 0  # octets of a literal still to read
        self._discard_left = 0  # octets of a refused non-synchronising literal still to drop
        self._discard_reply: bytes = b""
        # After such a literal, the rest of its command is dropped too (more LITERAL+ ones included, up to
        # `_discard_budget` octets in all), then `_discard_reply` goes out (RFC 7888 §4).
        self._is_dropping = False
        self._discard_budget = 0
        self._is_skipping_line = False
        self._running: str | None = None  # tag of the command the adapter is executing
        self._idle_tag: str | None = None
        self._auth_tag: str | None = None  # AUTHENTICATE waiting for the client's response line
        self._awaiting_tls = False
        self._close_reason: str | None = None
        self._is_close_reported = False
        self._errors = 0
        self._command_counts: dict[str, int] = {}

    # -- adapter API -------------------------------------------------------------------------------

    def start(self) -> None:
        self._out += r.status_line(Status.OK, f"{self.settings.hostname} Kartero IMAP4rev2 ready",
                                   f"CAPABILITY {self.capabilities()}")  # fmt: skip

    def receive_data(self, data: bytes) -> None:
        if self.state is ImapState.LOGOUT:
            return
        if not data:
            self._is_eof = True
        elif not self._awaiting_tls:
            self._in += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self._is_output_reported = False
        return out

    def take_command_counts(self) -> dict[str, int]:
        """The commands received since the last call, by name (COUNTED_COMMANDS, "UID FETCH", or OTHER)."""
        counts = self._command_counts
        if counts:
            self._command_counts = {}
        return counts

    def send(self, data: bytes) -> None:
        """Queue untagged responses of the running command (or of IDLE)."""
        self._out += data

    def finish(self, tag: str, status: Status, text: str, code: str | None = None,
               state: ImapState | None = None, bye: str | None = None) -> None:  # fmt: skip
        """Complete the running command with its tagged response, optionally changing state; with `bye`,
        end the session with `* BYE bye` instead (the selected mailbox was deleted elsewhere)."""
        if self._running != tag:
            raise ProtocolViolation(f"finish({tag}) but running {self._running}")
        if bye is not None:
            self.close(bye, "selected mailbox deleted")
            return
        self._running = None
        self._idle_tag = None
        if state is not None:
            self.state = state
        self._out += r.tagged(tag, status, text, code)
        if status is Status.BAD:
            self._count_error()

    def login_result(self, tag: str, user: str | None, *, unavailable: bool = False) -> None:
        """The password check is done: `user` is the account now logged in, None for a failure
        (`unavailable`: the check could not be made, the store is away; RFC 5530 UNAVAILABLE)."""
        if self._running != tag:
            raise ProtocolViolation(f"login_result({tag}) but running {self._running}")
        self._running = None
        if unavailable:
            self._out += r.tagged(tag, Status.NO, "Mail store unavailable, try again later", "UNAVAILABLE")
            return
        if user is None:
            self._out += r.tagged(tag, Status.NO, "Authentication failed", "AUTHENTICATIONFAILED")
            self._count_error()
            return
        self.user = user
        self.state = ImapState.AUTHENTICATED
        self._out += r.tagged(tag, Status.OK, "Logged in", f"CAPABILITY {self.capabilities()}")

    def tls_established(self) -> None:
        self._awaiting_tls = False
        self.is_tls = True

    def close(self, text: str, reason: str) -> None:
        """End the session with `* BYE text` (shutdown, timeout)."""
        if self.state is ImapState.LOGOUT:
            return
        self._out += r.bye(text)
        self._close(reason)

    @property
    def is_closed(self) -> bool:
        return self.state is ImapState.LOGOUT

    @property
    def is_idle(self) -> bool:
        """Between commands (or in IDLE): a shutdown may end the session here."""
        return (self._running is None or self._idle_tag is not None) and not self._pending.lines

    @property
    def is_idling(self) -> bool:
        return self._idle_tag is not None

    @property
    def buffered_bytes(self) -> int:
        return len(self._in)

    @property
    def is_utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE"]
        if self.state is ImapState.NOT_AUTHENTICATED:
            if self.settings.is_tls_available and not self.is_tls:
                caps.append("STARTTLS")
            if self._may_login():
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
            return " ".join(caps)
        caps += [
            "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE",
            "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "ESEARCH", "SEARCHRES", "SORT", "CONDSTORE", "QRESYNC",
            "BINARY", "UTF8=ACCEPT", f"APPENDLIMIT={self.settings.append_limit}", "SAVEDATE", "MULTIAPPEND",
            "UNAUTHENTICATE", "NOTIFY", "OBJECTID", "PREVIEW", "METADATA", "METADATA-SERVER", "LIST-METADATA",
        ]  # fmt: skip
        caps += ["SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",  # RFC 5957, RFC 5256
                 "ESORT", "CONTEXT=SEARCH", "CONTEXT=SORT",  # RFC 5267
                 "CATENATE",  # RFC 4469
                 "QUOTA", "QUOTA=RES-STORAGE"]  # RFC 9208  # fmt: skip
        if self.settings.is_compress_available:
            caps.append("COMPRESS=DEFLATE")
        return " ".join(caps)

    def _may_login(self) -> bool:
        # RFC 9051 §6.2.3 / DESIGN: plaintext passwords only over TLS, or on a loopback connection.
        return self.is_tls or self.is_loopback

    # -- input processing --------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        while True:
            if self.state is ImapState.LOGOUT:
                if self._is_close_reported:
                    return None
                self._is_close_reported = True
                return ConnectionClosed(self._close_reason or "logout")
            if self._awaiting_tls:
                return None
            if self._running is not None and self._idle_tag is None:
                return None
            if len(self._out) >= OUTPUT_HIGH_WATER and not self._is_output_reported:
                self._is_output_reported = True
                return OutputReady()
            event = self._step()
            if event is _NEED_DATA:
                if self._is_eof:
                    self._close("peer closed")
                    continue
                return None
            if event is not None:
                assert not isinstance(event, _NeedData)
                return event

    def _step(self) -> Event | _NeedData | None:
        if self._discard_left:
            n = min(self._discard_left, len(self._in))
            del self._in[:n]
            self._discard_left -= n
            if self._discard_left:
                return _NEED_DATA
            self._is_dropping = True  # the command goes on after the literal: drop up to its end
            return None
        if self._literal_left:
            n = min(self._literal_left, len(self._in))
            if not n:
                return _NEED_DATA
            if self._pending.is_spooling:
                n = min(n, APPEND_PIECE)
                piece = bytes(self._in[:n])
                del self._in[:n]
                spooled = self._pending.spooled
                is_first = len(spooled) == 1 and self._literal_left == spooled[0][1]
                self._literal_left -= n
                self._pending.is_spooling = self._literal_left > 0
                return AppendData(piece, is_first)
            with memoryview(self._in) as view:
                self._pending.literals[-1] += view[:n]
            del self._in[:n]
            self._literal_left -= n
            return None
        idx = self._in.find(b"\n", self._scanned)
        if idx < 0:
            if self._is_skipping_line or len(self._in) > MAX_LINE:
                self._in.clear()
                self._is_skipping_line = True
            self._scanned = len(self._in)
            return _NEED_DATA
        # More than MAX_LINE octets before the LF: too long, whether or not they arrived with the LF.
        is_too_long = self._is_skipping_line or idx > MAX_LINE
        line = b"" if is_too_long else bytes(self._in[: idx + 1])
        del self._in[: idx + 1]
        self._scanned = 0
        if self._is_dropping:
            self._drop_line(b"" if is_too_long else line)
            return None
        if is_too_long:
            self._is_skipping_line = False
            self._pending = _Pending()
            self._out += r.status_line(Status.BAD, "Line too long")
            self._count_error()
            return None
        if self._idle_tag is not None:
            return self._idle_line(line)
        if self._auth_tag is not None:
            return self._auth_line(line)
        return self._command_line(line)

    def _command_line(self, line: bytes) -> Event | None:
        pending = self._pending
        pending.size += len(line)
        text, request = split_literal(line)
        if request is None:
            pending.lines.append(line)
            self._pending = _Pending()
            event = self._dispatch(RawCommand(tuple(pending.lines), tuple(bytes(lit) for lit in pending.literals)))
            if pending.spooled:
                return self._spooled_append(event, pending)
            return event
        pending.lines.append(text)
        tag, name = first_words(pending.lines[0])
        tag = tag if _TAG.fullmatch(tag) else "*"  # never echo what is not a tag (it may hold a CR)
        # A CATENATE URL (RFC 4469) sent as a literal is held like any argument, never spooled as message text.
        # (The tag is left out: a command tagged CATENATE is no CATENATE for that.)
        args = text if len(pending.lines) > 1 else text.partition(b" ")[2]
        pending.is_catenate = pending.is_catenate or (name == "APPEND" and b"CATENATE" in args.upper())
        is_url = pending.is_catenate and _ends_with_url(text)
        # A URL longer than MAX_URL is refused anyway; the URLs of one command are held in memory, so they
        # share MAX_COMMAND rather than the allowance of the messages, which may be spooled.
        limit = MAX_URL if is_url else self._literal_limit(name)
        # Only APPEND carries messages; any other command stays within MAX_COMMAND, lines and literals.
        total_limit = MAX_COMMAND + (MULTIAPPEND_LIMIT_FACTOR * self.settings.append_limit if name == "APPEND" else 0)
        if is_url:
            pending.urls += request.size
        if request.size > limit or pending.size + request.size > total_limit or pending.urls > MAX_COMMAND:
            is_message = name == "APPEND" and not is_url
            too_big = r.tagged(tag, Status.NO if is_message else Status.BAD,
                               f"Literal too large ({limit} octets allowed)",
                               "TOOBIG" if is_message else None)  # fmt: skip
            if name == "SETMETADATA" and request.size > limit:  # RFC 5464 §4.3: a value over the limit
                too_big = r.tagged(tag, Status.NO, "Value too large", f"METADATA MAXSIZE {metadata.MAX_VALUE}")
            self._refuse_literal(request, too_big, limit)
            return None
        if len(pending.literals) >= MAX_TOKENS:  # each literal is a token: refused now, not after reading all
            too_many = r.tagged(tag, Status.BAD, f"too many arguments ({MAX_TOKENS} at most)")
            self._refuse_literal(request, too_many, limit)
            return None
        pending.size += request.size
        pending.literals.append(bytearray())
        self._literal_left = request.size
        if name == "APPEND" and request.size and not is_url:
            # A large message, or one past what the command already holds in memory, goes to the
            # adapter's spool file (one per command, the spooled messages back to back).
            if max(request.size, pending.held + request.size) > APPEND_SPOOL_THRESHOLD:
                pending.spooled.append((len(pending.literals) - 1, request.size))
                pending.is_spooling = True
            else:
                pending.held += request.size
        if request.is_sync:
            self._out += b"+ Ready for literal data\r\n"
        return None

    def _spooled_append(self, event: Event | None, pending: _Pending) -> Event | None:
        """The command around messages that left in AppendData pieces: an APPEND with their sizes (each
        message is one literal, the last ones of the command); for anything else (a parse error) the
        adapter is told to drop its spool file."""
        if isinstance(event, CommandReady) and isinstance(event.command, Append):
            # By literal index: a spooled literal that is no message (or CATENATE TEXT) is a mailbox
            # name, gone: the APPEND fails on the name.
            sizes = dict(pending.spooled)
            messages = []
            for message in event.command.messages:
                if message.parts:
                    parts = tuple(replace(p, spooled=sizes.get(p.literal, 0)) for p in message.parts)
                    message = replace(message, parts=parts)
                else:
                    message = replace(message, spooled=sizes.get(message.literal, 0))
                messages.append(message)
            return CommandReady(event.tag, replace(event.command, messages=tuple(messages)))
        if isinstance(event, CommandReady) and isinstance(event.command, Refused):
            return event  # an APPEND to an impossible name: the adapter drops the spool file
        if isinstance(event, CommandReady):  # cannot happen: only APPEND literals are spooled
            raise ProtocolViolation(f"spooled literal for {type(event.command).__name__}")
        return event

    def _refuse_literal(self, request: LiteralRequest, reply: bytes, limit: int) -> None:
        """Drop the command being read; a non-synchronising literal already on its way is read and dropped
        (an absurd one ends the session), then `reply` goes out."""
        self._pending = _Pending()
        self._count_error()
        if request.is_sync or not request.size:
            self._out += reply  # the client sends no literal after a refusal
            return
        budget = 4 * max(limit, MAX_LITERAL)
        if request.size > budget:
            self.close("Literal too large", "oversized literal")
            return
        self._discard_left, self._discard_reply = request.size, reply
        self._discard_budget = budget - request.size

    def _drop_line(self, line: bytes) -> None:
        """A line of a command whose literal was refused: a further non-synchronising literal is dropped
        as well (within the budget, else the session ends); otherwise the command ends here and the
        refusal goes out. Before a synchronising literal the client waits for a `+` it never gets, and
        takes the tagged refusal as the end of the command."""
        self._is_skipping_line = False
        request = split_literal(line)[1] if line else None
        if request is not None and not request.is_sync and request.size:
            if request.size > self._discard_budget:
                self.close("Literal too large", "oversized literal")
                return
            self._discard_budget -= request.size
            self._discard_left = request.size
            return
        self._is_dropping = False
        self._out += self._discard_reply

    def _literal_limit(self, name: str) -> int:
        if self.state is ImapState.NOT_AUTHENTICATED:
            return MAX_LITERAL_UNAUTHENTICATED
        if name == "APPEND":
            return self.settings.append_limit
        if name == "SETMETADATA":
            return metadata.MAX_VALUE
        return MAX_LITERAL

    def _dispatch(self, raw: RawCommand) -> Event | None:
        tag, _ = raw.first_words()
        try:
            tokens = tokenize(raw)
        except ParseError as exc:
            return self._bad(tag if _TAG.fullmatch(tag) else "*", str(exc))
        if not tokens or not isinstance(tokens[0], Atom) or not _TAG.fullmatch(tokens[0].value):
            return self._bad("*", "Missing or invalid tag")
        tag = tokens[0].value
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            return self._bad(tag, "Missing command")
        name = upper_ascii(tokens[1].value)
        self._count_command(name, tokens)
        if name not in ALLOWED[self.state]:
            known = any(name in commands for commands in ALLOWED.values())
            return self._bad(tag, f"{name} not allowed now" if known else f"Unknown command {name}")
        try:
            command = parse_command(name, tokens[2:], utf8=self.is_utf8)
        except ParseError as exc:
            return self._bad(tag, str(exc))
        return self._handle(tag, command)

    def _count_command(self, name: str, tokens: list[Token]) -> None:
        if name not in COUNTED_COMMANDS:
            name = "OTHER"
        elif name == "UID" and len(tokens) > 2 and isinstance(tokens[2], Atom):
            sub = upper_ascii(tokens[2].value)
            if sub in UID_SUBCOMMANDS:
                name = f"UID {sub}"
        self._command_counts[name] = self._command_counts.get(name, 0) + 1

    def _handle(self, tag: str, command: Command) -> Event | None:
        match command:
            case Simple(name="CAPABILITY"):
                self._out += r.untagged(f"CAPABILITY {self.capabilities()}")
                self._out += r.tagged(tag, Status.OK, "CAPABILITY completed")
            case Simple(name="LOGOUT"):
                self._out += r.bye("Logging out")
                self._out += r.tagged(tag, Status.OK, "LOGOUT completed")
                self._close("logout")
            case Simple(name="NOOP") if self.state is not ImapState.SELECTED:
                self._out += r.tagged(tag, Status.OK, "NOOP completed")  # nothing selected: nothing to report
            case Simple(name="UNAUTHENTICATE"):
                # RFC 8437 §3: back to NOT_AUTHENTICATED, nothing selected, nothing enabled; TLS and
                # compression stay.
                self._out += r.tagged(tag, Status.OK, "UNAUTHENTICATE completed")
                self.state = ImapState.NOT_AUTHENTICATED
                self.user = None
                self.enabled.clear()
                return Unauthenticated(tag)
            case Simple(name="NAMESPACE"):
                self._out += r.untagged('NAMESPACE (("" "/")) NIL NIL')
                self._out += r.tagged(tag, Status.OK, "NAMESPACE completed")
            case Simple(name="STARTTLS"):
                if self.is_tls or not self.settings.is_tls_available:
                    return self._bad(tag, "TLS already active" if self.is_tls else "STARTTLS not available")
                self._out += r.tagged(tag, Status.OK, "Begin TLS negotiation now")
                self._in.clear()  # CVE-2011-0411: nothing pipelined in clear counts as sent over TLS
                self._awaiting_tls = True
                return StartTLSRequested(tag)
            case Simple(name="IDLE"):
                self._running = self._idle_tag = tag
                self._out += b"+ idling\r\n"
                return IdleStarted(tag)
            case Id():
                self._out += r.untagged('ID ("name" "Kartero" "vendor" "Kartero")')
                self._out += r.tagged(tag, Status.OK, "ID completed")
            case Enable(capabilities=caps):
                known = {"CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "IMAP4REV2"}
                newly = [cap for cap in caps if cap in known and cap not in self.enabled]
                self.enabled.update(newly)
                if "QRESYNC" in newly and "CONDSTORE" not in self.enabled:
                    self.enabled.add("CONDSTORE")  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
                if newly:
                    self._out += r.untagged(
                        "ENABLED " + " ".join("IMAP4rev2" if c == "IMAP4REV2" else c for c in newly)
                    )
                self._out += r.tagged(tag, Status.OK, "ENABLE completed")
            case Login(user=user, password=password):
                if not self._may_login():
                    self._out += r.tagged(tag, Status.NO, "Use STARTTLS first", "PRIVACYREQUIRED")
                    self._count_error()
                    return None
                self._running = tag
                return LoginRequested(tag, user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
            case Authenticate(mechanism=mechanism, initial=initial):
                if mechanism != "PLAIN":
                    self._out += r.tagged(tag, Status.NO, f"Unsupported mechanism {mechanism}", "CANNOT")
                    return None
                if not self._may_login():
                    self._out += r.tagged(tag, Status.NO, "Use STARTTLS first", "PRIVACYREQUIRED")
                    self._count_error()
                    return None
                if initial is None:
                    self._auth_tag = tag
                    self._out += b"+ \r\n"
                    return None
                return self._plain(tag, initial)
            case Compress(mechanism=mechanism):
                if mechanism != "DEFLATE" or not self.settings.is_compress_available:
                    self._out += r.tagged(tag, Status.NO, "Unsupported compression", "CANNOT")
                    return None
                self._out += r.tagged(tag, Status.OK, "DEFLATE active")
                return CompressRequested(tag)
            case _:
                self._running = tag
                return CommandReady(tag, command)
        return None

    def _plain(self, tag: str, data: bytes) -> Event | None:
        try:
            credentials = parse_plain(decode_base64(data) if data else b"")
        except SASLError as exc:
            self._out += r.tagged(tag, Status.BAD, f"Bad PLAIN response: {exc}")
            self._count_error()
            return None
        if credentials.authzid and credentials.authzid != credentials.authcid:
            self._out += r.tagged(tag, Status.NO, "Authorization identity not allowed", "AUTHORIZATIONFAILED")
            return None
        self._running = tag
        return LoginRequested(tag, credentials.authcid, credentials.password)

    def _auth_line(self, line: bytes) -> Event | None:
        tag, self._auth_tag = self._auth_tag, None
        assert tag is not None
        data = line.rstrip(b"\r\n")
        if data == b"*":  # RFC 9051 §6.2.2: the client cancels
            self._out += r.tagged(tag, Status.BAD, "AUTHENTICATE cancelled")
            return None
        return self._plain(tag, data)

    def _idle_line(self, line: bytes) -> Event | None:
        tag = self._idle_tag
        assert tag is not None
        if line.rstrip(b"\r\n").upper() == b"DONE":
            return IdleDone(tag)
        self._out += r.status_line(Status.BAD, "Expected DONE")
        self._count_error()
        return None

    def _bad(self, tag: str, text: str) -> Event | None:
        """Answer BAD (counted against the error budget); returns no event, for `return self._bad(...)`."""
        self._out += r.tagged(tag, Status.BAD, text)
        self._count_error()
        return None

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.settings.max_errors and self.state is not ImapState.LOGOUT:
            self.close("Too many errors", "too many errors")

    def _close(self, reason: str) -> None:
        self.state = ImapState.LOGOUT
        self._close_reason = reason
        self._in.clear()
        self._running = None
        self._idle_tag = None


class _NeedData:
    pass


_NEED_DATA = _NeedData()


def _ends_with_url(line: bytes) -> bool:
    """Whether a literal announced after `line` is the astring after URL (RFC 4469 §5: "URL" SP astring)."""
    words = line.split()
    return bool(words) and words[-1].lstrip(b"(").upper() == b"URL"
