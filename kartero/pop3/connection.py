"""The POP3 server core (RFC 1939, RFC 2449 CAPA/RESP-CODES/PIPELINING, RFC 2595 STLS, RFC 5034 SASL),
sans-I/O.

Theory of operation: AUTHORIZATION (USER/PASS or AUTH PLAIN; the password check is the adapter's
`LoginRequested`), then TRANSACTION over a snapshot of INBOX taken at login (`login_result`). DELE only
marks; QUIT asks the adapter to expunge the marked messages (`UpdateRequested`) and answers once it has.
A connection that ends any other way deletes nothing. RETR and TOP ask for the bytes (`MessageWanted`)
and send them dot-stuffed: the adapter hands them over in pieces (`message_start`, `message_chunk`
while `wants_message_data`, `message_end`) or whole (`message_result`), so a large message streams
with a constant amount of memory (issue 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from kartero.auth.sasl import SASLError, decode_base64, parse_plain

# RFC 2449 §4: a command line is at most 255 octets; SASL responses may be longer (RFC 5034 §4).
MAX_COMMAND = 255
MAX_SASL_LINE = 8192
# Of a line still in progress the core keeps at most this much, even while the adapter is busy: enough
# to answer "Line too long" once the line ends. Everything a POP3 client sends is lines (RFC 1939 §3), so
# this is safe; what else waits is complete pipelined lines (`buffered_bytes`: the adapter stops reading).
MAX_PARTIAL_LINE = MAX_SASL_LINE + 1


class ProtocolViolation(Exception):
    """The adapter answered something the core did not ask for."""


class Pop3State(Enum):
    AUTHORIZATION = auto()
    TRANSACTION = auto()
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    hostname: str
    is_tls_available: bool = False
    max_errors: int = 20


@dataclass(frozen=True, slots=True)
class MaildropEntry:
    uid: int
    size: int


@dataclass(frozen=True, slots=True)
class LoginRequested:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class MessageWanted:
    uid: int
    top_lines: int | None  # None: the whole message (RETR)


@dataclass(frozen=True, slots=True)
class UpdateRequested:
    deleted_uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StartTLSRequested:
    pass


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    reason: str


@dataclass(frozen=True, slots=True)
class OutputReady:
    """Responses to pipelined commands filled OUTPUT_HIGH_WATER: send them before asking for more
    events (a client that pipelines CAPA and reads nothing fills its own buffers, not ours)."""


Event = LoginRequested | MessageWanted | UpdateRequested | StartTLSRequested | OutputReady | ConnectionClosed
# Output that may wait in the core before it reports OutputReady.
OUTPUT_HIGH_WATER = 64 * 1024


def dot_stuff(data: bytes) -> bytes:
    """A whole message as multi-line response data (RFC 1939 §3), without the final ".\r\n"."""
    stuffer = DotStuffer()
    return stuffer.feed(data) + stuffer.finish()


class DotStuffer:
    """A message as multi-line response data (RFC 1939 §3), fed in pieces cut anywhere: lines starting
    with '.' doubled, every line ending in CRLF. A bare CR or LF becomes CRLF: left bare, "a\n.\r\n"
    would end the response early for a client that splits lines at LF, and what follows would be read
    as responses. For TOP it stops after the header, the blank line and `top_lines` lines of body
    (RFC 1939 §7)."""

    def __init__(self, top_lines: int | None = None) -> None:
        self._lines_left = top_lines
        self._carry = b""  # a CR at the end of a piece: it may be the first half of a CRLF
        self._at_line_start = True
        self._in_header = top_lines is not None
        self._tail = b""  # the last octets sent while in the header, to find its end across pieces
        self.is_done = False  # TOP has all it wants

    def feed(self, data: bytes) -> bytes:
        if self.is_done:
            return b""
        data = self._carry + data
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if self._lines_left is not None:
            data = self._cut_for_top(data)
        if not data:
            return b""
        out = (b"." if self._at_line_start and data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")
        self._at_line_start = data.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        """What is left, and the CRLF that ends an unterminated last line (the caller adds ".\r\n")."""
        out = b""
        if self._carry and not self.is_done:
            out = self.feed(b"\n")  # a bare CR at the very end becomes a line end
        if not self._at_line_start:
            out += b"\r\n"
            self._at_line_start = True
        return out

    def _cut_for_top(self, data: bytes) -> bytes:
        """Of normalised `data`, what TOP still sends."""
        assert self._lines_left is not None
        position = 0
        if self._in_header:
            window = self._tail + data
            blank = window.find(b"\r\n\r\n")
            if blank < 0:
                self._tail = window[-3:]
                return data
            self._in_header = False
            position = blank + 4 - len(self._tail)  # > 0: four octets never fit in the three kept
        while self._lines_left > 0:
            end = data.find(b"\r\n", position)
            if end < 0:
                return data
            position = end + 2
            self._lines_left -= 1
        self.is_done = True
        return data[:position]


class Pop3Connection:
    def __init__(self, settings: Pop3Settings, *, is_tls: bool = False, is_loopback: bool = False) -> None:
        self.settings = settings
        self.state = Pop3State.AUTHORIZATION
        self.is_tls = is_tls
        self.is_loopback = is_loopback
        self.user: str | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._is_output_reported = False
        self._is_eof = False
        self._maildrop: list[MaildropEntry] = []
        self._deleted: set[int] = set()  # message numbers marked by DELE
        self._pending_user: str | None = None
        self._awaiting: str | None = None  # "login", "message", "update", "sasl", "tls"
        self._top_lines: int | None = None  # of the message asked for: TOP's line count, None for RETR
        self._stuffer: DotStuffer | None = None  # the message being sent
        self._close_reason: str | None = None
        self._is_close_reported = False
        self._is_skipping_line = False
        self._partial_length = 0  # octets of the line in progress at the end of the input, kept or not
        self._errors = 0

    # -- adapter API -------------------------------------------------------------------------------

    def start(self) -> None:
        self._ok(f"{self.settings.hostname} Kartero POP3 ready")

    def receive_data(self, data: bytes) -> None:
        if self.state is Pop3State.CLOSED:
            return
        if not data:
            self._is_eof = True
            return
        if self._awaiting == "tls":
            return  # plaintext pipelined behind STLS is dropped (CVE-2011-0411)
        end = data.rfind(b"\n")
        if end >= 0:
            self._in += data[: end + 1]
            self._partial_length = 0
            data = data[end + 1 :]
        self._in += data[: max(0, MAX_PARTIAL_LINE - self._partial_length)]
        self._partial_length += len(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self._is_output_reported = False
        return out

    def login_result(self, user: str | None, maildrop: list[MaildropEntry] | None = None) -> None:
        self._expect("login")
        if user is None or maildrop is None:
            self._err("Authentication failed", "AUTH")
            self._count_error()
            return
        self.user = user
        self._maildrop = maildrop
        self.state = Pop3State.TRANSACTION
        self._ok(f"Logged in, {len(maildrop)} messages")

    def message_result(self, data: bytes | None) -> None:
        """The whole message at once (None: it is gone)."""
        if data is None:
            self._expect("message")
            self._err("Message no longer exists")
            return
        self.message_start()
        self.message_chunk(data)
        self.message_end()

    def message_start(self) -> None:
        """The message exists: its bytes follow in `message_chunk` calls, then `message_end` (commands
        pipelined behind wait until then)."""
        if self._awaiting != "message" or self._stuffer is not None:
            raise ProtocolViolation("message_start() when no message was asked for")
        self._stuffer = DotStuffer(self._top_lines)
        self._out += b"+OK message follows\r\n"

    @property
    def wants_message_data(self) -> bool:
        """False once TOP has sent all it was asked for (the adapter may stop reading the message)."""
        return self._stuffer is not None and not self._stuffer.is_done

    def message_chunk(self, data: bytes) -> None:
        if self._stuffer is None:
            raise ProtocolViolation("message_chunk() before message_start()")
        self._out += self._stuffer.feed(data)

    def message_end(self) -> None:
        if self._stuffer is None:
            raise ProtocolViolation("message_end() before message_start()")
        self._out += self._stuffer.finish() + b".\r\n"
        self._stuffer = None
        self._awaiting = None

    def update_result(self, ok: bool) -> None:
        self._expect("update")
        if ok:
            self._ok("Bye")
        else:
            self._err("Some deleted messages were not removed", "SYS/TEMP")
        self._close("quit")

    def tls_established(self) -> None:
        self._expect("tls")
        self.is_tls = True

    def close(self, text: str, reason: str) -> None:
        if self.state is Pop3State.CLOSED:
            return
        self._err(text)
        self._close(reason)

    @property
    def is_closed(self) -> bool:
        return self.state is Pop3State.CLOSED

    @property
    def is_idle(self) -> bool:
        return self._awaiting is None

    @property
    def buffered_bytes(self) -> int:
        """Input held but not yet processed; the adapter stops reading while this is large."""
        return len(self._in)

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
        if self.state is Pop3State.AUTHORIZATION:
            if self.settings.is_tls_available and not self.is_tls:
                caps.append("STLS")
            if self._may_login():
                caps += ["USER", "SASL PLAIN"]
        caps.append("IMPLEMENTATION Kartero")
        return caps

    def _may_login(self) -> bool:
        return self.is_tls or self.is_loopback

    # -- processing ----------------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        while True:
            if self.state is Pop3State.CLOSED:
                if self._is_close_reported:
                    return None
                self._is_close_reported = True
                return ConnectionClosed(self._close_reason or "closed")
            if self._awaiting not in (None, "sasl"):
                return None
            if len(self._out) >= OUTPUT_HIGH_WATER and not self._is_output_reported:
                self._is_output_reported = True
                return OutputReady()
            idx = self._in.find(b"\n")
            limit = MAX_SASL_LINE if self._awaiting == "sasl" else MAX_COMMAND
            if idx < 0:
                if len(self._in) > limit or self._is_skipping_line:
                    self._in.clear()
                    self._is_skipping_line = True
                if self._is_eof:
                    self._close("peer closed")  # RFC 1939 §6: no UPDATE without QUIT: nothing deleted
                    continue
                return None
            line = bytes(self._in[: idx + 1])
            del self._in[: idx + 1]
            if self._is_skipping_line or len(line) > limit:
                self._is_skipping_line = False
                self._err("Line too long")
                self._count_error()
                continue
            event = self._line(line.rstrip(b"\r\n"))
            if event is not None:
                return event

    def _line(self, line: bytes) -> Event | None:
        if self._awaiting == "sasl":
            self._awaiting = None
            return self._sasl_plain(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._err("Invalid characters in command")
            self._count_error()
            return None
        verb, _, arg = text.partition(" ")
        verb = verb.upper() if verb.isascii() else verb  # "\u017fTAT" (long s) is no STAT
        handler = (_AUTHORIZATION if self.state is Pop3State.AUTHORIZATION else _TRANSACTION).get(verb)
        if handler is None:
            known = verb in _AUTHORIZATION or verb in _TRANSACTION
            self._err(f"{verb} not allowed now" if known else "Unknown command")
            self._count_error()
            return None
        return handler(self, arg)

    # -- AUTHORIZATION ---------------------------------------------------------------------------------

    def _capa(self, arg: str) -> None:
        self._out += b"+OK Capability list follows\r\n"
        for cap in self.capabilities():
            self._out += cap.encode() + b"\r\n"
        self._out += b".\r\n"

    def _stls(self, arg: str) -> Event | None:
        if self.is_tls or not self.settings.is_tls_available:
            self._err("TLS not available" if not self.is_tls else "TLS already active")
            return None
        self._ok("Begin TLS negotiation")
        self._in.clear()  # nothing pipelined in clear counts as sent over TLS (CVE-2011-0411)
        self._partial_length = 0
        self._awaiting = "tls"
        return StartTLSRequested()

    def _user(self, arg: str) -> None:
        if not self._may_login():
            self._err("Use STLS first", "AUTH")
            return
        if not arg.strip():
            self._err("USER needs a name")
            self._count_error()
            return
        self._pending_user = arg.strip()
        self._ok("Send PASS")

    def _pass(self, arg: str) -> Event | None:
        if self._pending_user is None:
            self._err("Send USER first")
            self._count_error()
            return None
        user, self._pending_user = self._pending_user, None
        self._awaiting = "login"
        return LoginRequested(user, arg)

    def _auth(self, arg: str) -> Event | None:
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:
            self._out += b"+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"
            return None
        if not mechanism.isascii() or mechanism.upper() != "PLAIN":
            self._err("Unsupported mechanism")
            return None
        if not self._may_login():
            self._err("Use STLS first", "AUTH")
            return None
        if not initial:
            self._awaiting = "sasl"
            self._out += b"+ \r\n"
            return None
        return self._sasl_plain(initial.encode())

    def _sasl_plain(self, data: bytes) -> Event | None:
        if data == b"*":
            self._err("Authentication cancelled")
            return None
        try:
            credentials = parse_plain(decode_base64(data) if data != b"=" else b"")
        except SASLError as exc:
            self._err(f"Bad PLAIN response: {exc}")
            self._count_error()
            return None
        if credentials.authzid and credentials.authzid != credentials.authcid:
            self._err("Authorization identity not allowed", "AUTH")
            return None
        self._awaiting = "login"
        return LoginRequested(credentials.authcid, credentials.password)

    def _quit(self, arg: str) -> Event | None:
        if self.state is Pop3State.TRANSACTION:
            self._awaiting = "update"
            numbers = sorted(self._deleted)
            return UpdateRequested(tuple(self._maildrop[n - 1].uid for n in numbers))
        self._ok("Bye")
        self._close("quit")
        return None

    # -- TRANSACTION -----------------------------------------------------------------------------------

    def _message_number(self, arg: str) -> int | None:
        word = arg.strip().split(" ", 1)[0]
        # ASCII digits only: str.isdigit() is also true for "²", which int() refuses.
        if not (word.isascii() and word.isdigit()) or len(word) > 9:
            self._err("Invalid message number")
            self._count_error()
            return None
        number = int(word)
        if not 1 <= number <= len(self._maildrop):
            self._err("No such message")
            return None
        if number in self._deleted:
            self._err("Message is deleted")
            return None
        return number

    def _stat(self, arg: str) -> None:
        live = [e for i, e in enumerate(self._maildrop, 1) if i not in self._deleted]
        self._ok(f"{len(live)} {sum(e.size for e in live)}")

    def _listing(self, arg: str, value: str) -> None:
        if arg.strip():
            number = self._message_number(arg)
            if number is not None:
                entry = self._maildrop[number - 1]
                self._ok(f"{number} {entry.size if value == 'size' else entry.uid}")
            return
        self._out += b"+OK listing follows\r\n"
        for number, entry in enumerate(self._maildrop, 1):
            if number not in self._deleted:
                self._out += f"{number} {entry.size if value == 'size' else entry.uid}\r\n".encode()
        self._out += b".\r\n"

    def _list(self, arg: str) -> None:
        self._listing(arg, "size")

    def _uidl(self, arg: str) -> None:
        # The unique id is the message's IMAP UID in INBOX: stable across sessions and the same in IMAP.
        self._listing(arg, "uid")

    def _retr(self, arg: str) -> Event | None:
        number = self._message_number(arg)
        if number is None:
            return None
        self._awaiting = "message"
        self._top_lines = None
        return MessageWanted(self._maildrop[number - 1].uid, None)

    def _top(self, arg: str) -> Event | None:
        words = arg.split()
        if len(words) != 2 or not (words[1].isascii() and words[1].isdigit()):
            self._err("Syntax: TOP msg n")
            self._count_error()
            return None
        number = self._message_number(words[0])
        if number is None:
            return None
        self._awaiting = "message"
        self._top_lines = min(int(words[1]), 10**9)
        return MessageWanted(self._maildrop[number - 1].uid, self._top_lines)

    def _dele(self, arg: str) -> None:
        number = self._message_number(arg)
        if number is not None:
            self._deleted.add(number)
            self._ok(f"Message {number} deleted")

    def _rset(self, arg: str) -> None:
        self._deleted.clear()
        self._ok("Maildrop reset")

    def _noop(self, arg: str) -> None:
        self._ok("")

    # -- helpers ---------------------------------------------------------------------------------------

    def _expect(self, what: str) -> None:
        if self._awaiting != what:
            raise ProtocolViolation(f"POP3 core was not waiting for {what} (waiting for {self._awaiting})")
        self._awaiting = None

    def _ok(self, text: str) -> None:
        self._out += f"+OK {text}\r\n".encode() if text else b"+OK\r\n"

    def _err(self, text: str, code: str | None = None) -> None:
        prefix = f"[{code}] " if code else ""
        self._out += f"-ERR {prefix}{text}\r\n".encode()

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.settings.max_errors and self.state is not Pop3State.CLOSED:
            self.close("Too many errors", "too many errors")

    def _close(self, reason: str) -> None:
        self.state = Pop3State.CLOSED
        self._close_reason = reason
        self._in.clear()
        self._partial_length = 0


_AUTHORIZATION = {
    "CAPA": Pop3Connection._capa,
    "STLS": Pop3Connection._stls,
    "USER": Pop3Connection._user,
    "PASS": Pop3Connection._pass,
    "AUTH": Pop3Connection._auth,
    "QUIT": Pop3Connection._quit,
}
_TRANSACTION = {
    "CAPA": Pop3Connection._capa,
    "STAT": Pop3Connection._stat,
    "LIST": Pop3Connection._list,
    "UIDL": Pop3Connection._uidl,
    "RETR": Pop3Connection._retr,
    "TOP": Pop3Connection._top,
    "DELE": Pop3Connection._dele,
    "RSET": Pop3Connection._rset,
    "NOOP": Pop3Connection._noop,
    "QUIT": Pop3Connection._quit,
}
