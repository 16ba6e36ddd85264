"""The ManageSieve server core (RFC 5804), sans-I/O.

Theory of operation: the greeting is the capability list. NOT_AUTHENTICATED takes CAPABILITY, NOOP,
LOGOUT, STARTTLS and AUTHENTICATE (PLAIN, SCRAM-SHA-256; both only over TLS or on loopback, IMAP's rule);
AUTHENTICATED the script commands and UNAUTHENTICATE. Whatever needs I/O leaves as an event and the core
waits in `_awaiting` until the adapter answers: a password (`LoginRequested` -> `login_result`), SCRAM
keys (`ScramRequested` -> `scram_credentials`), the TLS handshake (`tls_established`), and each store
operation (`ScriptsWanted` -> `scripts_result`, `ScriptWanted` -> `script_result`, the changes ->
`store_result`; any of them -> `unavailable()` when the store cannot be reached: `NO (TRYLATER)`).
A script is checked by the adapter (`CheckRequested` -> `check_result`: kartero.sieve, in a worker
thread) before PUTSCRIPT stores it.

Input: a command is line segments joined by literals (`{n+}` CRLF n octets, see syntax.py). A segment
is at most MAX_LINE octets (a longer one is dropped as it arrives and answered NO); a literal's size is
known from its header, so one that is too big (a script over `max_script_size`, any other string over
MAX_STRING) is refused before its octets are read: they are counted off, never kept. A command that
went wrong midway is read to its end (its literals skipped the same way) before the NO, so the next
command starts where the client thinks it does. No exception leaves the core for any input.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from kartero.auth.sasl import SASLError, ScramCredentials, ScramServer, decode_base64, parse_plain
from kartero.managesieve.syntax import (
    MAX_NAME_OCTETS,
    SyntaxProblem,
    Word,
    check_name,
    literal_at_end,
    parse_number,
    split_words,
    string,
)

# A line segment (a command without its literals), and any string that is not a script (a name, a SASL
# response): both far above what a client sends, far below what would cost anything to hold.
MAX_LINE = 8 * 1024
MAX_STRING = 8 * 1024
MAX_WORDS = 8  # the most any command takes is 3 (RENAMESCRIPT, AUTHENTICATE), plus its name
# Output that may wait in the core before it reports OutputReady: a client that pipelines GETSCRIPTs and
# reads nothing fills its own buffers, not ours.
OUTPUT_HIGH_WATER = 64 * 1024


class ProtocolViolation(Exception):
    """The adapter answered something the core did not ask for."""


class SieveState(Enum):
    NOT_AUTHENTICATED = auto()
    AUTHENTICATED = auto()
    CLOSED = auto()


class Outcome(Enum):
    """What a script change in the store came to (`store_result`)."""

    OK = auto()
    NONEXISTENT = auto()
    ALREADYEXISTS = auto()
    ACTIVE = auto()
    MAXSCRIPTS = auto()


@dataclass(frozen=True, slots=True)
class ManageSieveSettings:
    extensions: tuple[str, ...] = ()  # the SIEVE capability (kartero.sieve.EXTENSIONS)
    is_tls_available: bool = False
    max_script_size: int = 1 << 20  # octets of one script (QUOTA/MAXSIZE)
    max_scripts: int = 100  # scripts per account (QUOTA/MAXSCRIPTS)
    max_redirects: int = 5
    max_errors: int = 20  # NO answers to bad commands before BYE

    def __post_init__(self) -> None:
        if self.max_script_size <= 0 or self.max_scripts <= 0 or self.max_errors <= 0:
            raise ValueError("ManageSieve limits must be positive")


# -- events --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """Check this password (`login_result`)."""

    user: str
    password: str


@dataclass(frozen=True, slots=True)
class ScramRequested:
    """The SCRAM-SHA-256 keys of `user` (`scram_credentials`; fake ones for an unknown user)."""

    user: str


@dataclass(frozen=True, slots=True)
class ScramFinished:
    """The SCRAM proof was checked (`ok`): the adapter settles the throttle, then `login_result`."""

    user: str
    ok: bool


@dataclass(frozen=True, slots=True)
class StartTLSRequested:
    pass


@dataclass(frozen=True, slots=True)
class ScriptsWanted:
    """The logged-in account's scripts (`scripts_result`): LISTSCRIPTS, and HAVESPACE counting them."""


@dataclass(frozen=True, slots=True)
class ScriptWanted:
    """One script's text (`script_result`)."""

    name: str


@dataclass(frozen=True, slots=True)
class CheckRequested:
    """Compile this script (`check_result`): PUTSCRIPT and CHECKSCRIPT. The adapter runs the compiler in
    a worker thread: a hostile 1 MiB script may take a second (kartero.sieve caps the work, not to zero)."""

    text: str


@dataclass(frozen=True, slots=True)
class PutScript:
    """Store a checked script, creating it only while the account has fewer than `max_scripts`
    (`store_result`: OK or MAXSCRIPTS)."""

    name: str
    text: str
    max_scripts: int


@dataclass(frozen=True, slots=True)
class DeleteScript:
    """`store_result`: OK, NONEXISTENT or ACTIVE."""

    name: str


@dataclass(frozen=True, slots=True)
class RenameScript:
    """`store_result`: OK, NONEXISTENT or ALREADYEXISTS."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ActivateScript:
    """Make `name` the active script, or none (None) (`store_result`: OK or NONEXISTENT)."""

    name: str | None


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """UNAUTHENTICATE done: the adapter forgets the user (the connection and its TLS stay)."""


@dataclass(frozen=True, slots=True)
class OutputReady:
    """Responses filled OUTPUT_HIGH_WATER: send them (with flow control) before asking for more events."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    reason: str


Event = (
    LoginRequested | ScramRequested | ScramFinished | StartTLSRequested | CheckRequested | ScriptsWanted | ScriptWanted
    | PutScript
    | DeleteScript | RenameScript | ActivateScript | Unauthenticated | OutputReady | ConnectionClosed
)  # fmt: skip

_CODES = {
    Outcome.NONEXISTENT: ("NONEXISTENT", "No such script"),
    Outcome.ALREADYEXISTS: ("ALREADYEXISTS", "A script of that name exists"),
    Outcome.ACTIVE: ("ACTIVE", "The active script cannot be deleted"),
    Outcome.MAXSCRIPTS: ("QUOTA/MAXSCRIPTS", "Too many scripts"),
}


class _Reader(Enum):
    LINE = auto()  # reading a line segment
    LITERAL = auto()  # reading a literal's octets into the command
    SKIP_LITERAL = auto()  # counting off a refused literal's octets
    SKIP_LINE = auto()  # dropping a segment over MAX_LINE up to its LF


@dataclass(slots=True)
class _Command:
    """The command being read: its words so far, or why it is already refused."""

    words: list[Word]
    problem: tuple[str | None, str] | None = None  # (response code, text) to answer once it ends


class ManageSieveConnection:
    def __init__(self, settings: ManageSieveSettings, *, is_tls: bool = False, is_loopback: bool = False,
                 sasl_nonce: str = "") -> None:  # fmt: skip
        """`sasl_nonce` is the server's random part of a SCRAM nonce (from the adapter)."""
        self.settings = settings
        self.state = SieveState.NOT_AUTHENTICATED
        self.is_tls = is_tls
        self.is_loopback = is_loopback
        self.user: str | None = None
        self._checking: PutScript | None = None  # PUTSCRIPT's script while it is checked (None: CHECKSCRIPT)
        self._next: Event | None = None  # an event a decision made due (PUTSCRIPT's store after its check)
        self._sasl_nonce = sasl_nonce
        self._in = bytearray()
        self._out = bytearray()
        self._is_output_reported = False
        self._is_eof = False
        self._reader = _Reader.LINE
        self._literal_left = 0
        self._literal = bytearray()
        self._command = _Command([])
        # "login", "scram", "tls", "sasl" (a client response), "check" (a script compiled), "store"
        self._awaiting: str | None = None
        self._pending = ""  # the command whose store result is awaited
        self._have_space: str | None = None  # HAVESPACE's script name, while its scripts are counted
        self._sasl_mechanism = ""
        self._scram: ScramServer | None = None
        self._scram_user = ""
        self._sasl_final = b""  # SCRAM's server-final message, sent with the OK (RFC 5804 §2.1)
        self._close_reason: str | None = None
        self._is_close_reported = False
        self._errors = 0

    # -- adapter API -------------------------------------------------------------------------------

    def start(self) -> None:
        """The greeting (RFC 5804 §1.7: the capabilities, then OK)."""
        self._capabilities()
        self._ok(None, "Kartero ManageSieve ready")

    def receive_data(self, data: bytes) -> None:
        if self.state is SieveState.CLOSED:
            return
        if not data:
            self._is_eof = True
            return
        if self._awaiting == "tls":
            return  # plaintext pipelined behind STARTTLS is dropped (CVE-2011-0411)
        self._in += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self._is_output_reported = False
        return out

    @property
    def buffered_bytes(self) -> int:
        """Input held but not yet processed; the adapter stops reading while this is large."""
        return len(self._in)

    @property
    def is_closed(self) -> bool:
        return self.state is SieveState.CLOSED

    @property
    def is_idle(self) -> bool:
        return self._awaiting is None and self._reader is _Reader.LINE and not self._command.words

    def login_result(self, user: str | None) -> None:
        """The password or SCRAM proof was right (the account's address), or not (None)."""
        self._expect("login")
        final, self._sasl_final = self._sasl_final, b""
        if user is None:
            self._no(None, "Authentication failed")
            self._count_error()
            return
        self.user = user
        self.state = SieveState.AUTHENTICATED
        if final:
            self._out += b"OK (SASL " + string(final) + b') "Logged in"\r\n'
        else:
            self._ok(None, "Logged in")

    def scram_credentials(self, credentials: ScramCredentials | None) -> None:
        """The user's SCRAM keys, or None: no attempt may be made now (the login throttle)."""
        self._expect("scram")
        if credentials is None:
            self._end_sasl()
            self._no(None, "Authentication failed")
            return
        assert self._scram is not None
        self._out += string(_b64(self._scram.server_first(credentials))) + b"\r\n"
        self._awaiting = "sasl"

    def tls_established(self) -> None:
        """RFC 5804 §2.2: after the handshake the server sends its capabilities again, then OK."""
        self._expect("tls")
        self.is_tls = True
        self._capabilities()
        self._ok(None, "TLS negotiation successful")

    def check_result(self, problem: str | None) -> None:
        """Why the script does not compile (`line:column: message`, sent in the NO as RFC 5804 §2.6 asks),
        or None: CHECKSCRIPT is answered, PUTSCRIPT's script goes to the store (the next event)."""
        self._expect("check")
        put, self._checking = self._checking, None
        if problem is not None:
            self._no(None, problem)
        elif put is None:
            self._ok(None, "Script is valid")
        else:
            self._next = self._ask("PUTSCRIPT", put)

    def scripts_result(self, scripts: list[tuple[str, bool]]) -> None:
        """The account's scripts: (name, active)."""
        self._expect("store")
        if self._pending == "HAVESPACE":
            assert self._have_space is not None
            name, self._have_space = self._have_space, None
            if len(scripts) >= self.settings.max_scripts and name not in {n for n, _ in scripts}:
                self._no("QUOTA/MAXSCRIPTS", "Too many scripts")
            else:
                self._ok(None, "Putscript would succeed")
            return
        for name, active in scripts:
            self._out += string(name.encode()) + (b" ACTIVE\r\n" if active else b"\r\n")
        self._ok(None, "Listscripts completed")

    def script_result(self, text: str | None) -> None:
        """GETSCRIPT's script, or None: there is none of that name."""
        self._expect("store")
        if text is None:
            self._no("NONEXISTENT", "No such script")
            return
        data = text.encode()
        self._out += b"{%d}\r\n" % len(data) + data + b"\r\n"
        self._ok(None, "Getscript completed")

    def store_result(self, outcome: Outcome) -> None:
        self._expect("store")
        if outcome is Outcome.OK:
            self._ok(None, f"{self._pending.capitalize()} completed")
        else:
            self._no(*_CODES[outcome])

    def unavailable(self) -> None:
        """The store cannot be reached now (RFC 5804 §1.3 TRYLATER), whatever was asked of it."""
        if self._awaiting not in ("login", "scram", "store"):
            raise ProtocolViolation(f"unavailable() while waiting for {self._awaiting}")
        self._awaiting = None
        self._have_space = None
        self._end_sasl()
        self._no("TRYLATER", "Mail store unavailable, try again later")

    def close(self, text: str, reason: str, code: str | None = None) -> None:
        """End the session with BYE (a deadline, shutdown, a connection limit)."""
        if self.state is SieveState.CLOSED:
            return
        self._response(b"BYE", code, text)
        self._close(reason)

    # -- processing ----------------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        while True:
            if self.state is SieveState.CLOSED:
                if self._is_close_reported:
                    return None
                self._is_close_reported = True
                return ConnectionClosed(self._close_reason or "closed")
            if self._next is not None:
                queued, self._next = self._next, None
                return queued
            if self._awaiting not in (None, "sasl"):
                return None
            if len(self._out) >= OUTPUT_HIGH_WATER and not self._is_output_reported:
                self._is_output_reported = True
                return OutputReady()
            words = self._read_command()
            if words is None:
                if self._is_eof:
                    self._close("peer closed")
                    continue
                return None
            event = self._sasl_response(words) if self._awaiting == "sasl" else self._dispatch(words)
            if event is not None:
                return event

    def _read_command(self) -> list[Word] | None:
        """The next whole command's words (its problem answered already, and [] returned, when it went
        wrong), or None until more input arrives."""
        while True:
            if self._reader in (_Reader.LITERAL, _Reader.SKIP_LITERAL):
                take = min(self._literal_left, len(self._in))
                if self._reader is _Reader.LITERAL:
                    self._literal += self._in[:take]
                del self._in[:take]
                self._literal_left -= take
                if self._literal_left:
                    return None
                if self._reader is _Reader.LITERAL:
                    self._command.words.append(Word(bytes(self._literal), True))
                    self._literal.clear()
                self._reader = _Reader.LINE
            idx = self._in.find(b"\n")
            if idx < 0:
                if len(self._in) > MAX_LINE:
                    self._in.clear()
                    self._reader = _Reader.SKIP_LINE
                return None
            segment = bytes(self._in[:idx])
            del self._in[: idx + 1]
            if self._reader is _Reader.SKIP_LINE or len(segment) > MAX_LINE + 1:
                self._reader = _Reader.LINE
                self._refuse(None, "Line too long")
                segment = b""  # the rest of the command, if a literal followed, is lost with the line
            segment = segment.removesuffix(b"\r")
            literal = literal_at_end(segment)
            if literal is not None:
                segment = segment[: segment.rfind(b"{")]
            if self._command.problem is None:
                try:
                    self._command.words += split_words(segment)
                except SyntaxProblem as exc:
                    self._refuse(None, str(exc))
            if len(self._command.words) > MAX_WORDS:
                self._refuse(None, "Too many arguments")
            if literal is None:
                command, self._command = self._command, _Command([])
                if command.problem is not None:
                    if self._awaiting == "sasl":  # a SASL response that went wrong ends the exchange
                        self._awaiting = None
                        self._end_sasl()
                    self._no(*command.problem)
                    self._count_error()
                    return []
                return command.words
            self._literal_left = literal.size
            self._reader = _Reader.SKIP_LITERAL if self._command.problem is not None else _Reader.LITERAL
            limit = self._literal_limit()
            if self._reader is _Reader.LITERAL and literal.size > limit:
                is_script = limit == self.settings.max_script_size
                self._refuse("QUOTA/MAXSIZE" if is_script else None,
                             "Script is too big" if is_script else "String too long")  # fmt: skip
                self._reader = _Reader.SKIP_LITERAL

    def _literal_limit(self) -> int:
        """How long the literal about to be read may be: a script (PUTSCRIPT's second argument,
        CHECKSCRIPT's first) up to `max_script_size`, anything else MAX_STRING."""
        words = self._command.words
        name = words[0].data.upper() if words and not words[0].is_string else b""
        if self._awaiting != "sasl" and (
            (name == b"PUTSCRIPT" and len(words) == 2) or (name == b"CHECKSCRIPT" and len(words) == 1)
        ):
            return self.settings.max_script_size
        return MAX_STRING

    def _refuse(self, code: str | None, text: str) -> None:
        """The command being read is refused (the first reason counts); the rest of it is skipped."""
        if self._command.problem is None:
            self._command.problem = (code, text)
        self._command.words.clear()

    # -- commands ------------------------------------------------------------------------------------

    def _dispatch(self, words: list[Word]) -> Event | None:
        if not words:
            return None  # refused while it was read, or an empty line
        if words[0].is_string:
            self._error("Expected a command")
            return None
        name = words[0].data.upper().decode("ascii")
        handler = _ANY.get(name) or (_UNAUTH if self.state is SieveState.NOT_AUTHENTICATED else _AUTH).get(name)
        if handler is None:
            if name in _AUTH:
                self._error("Authenticate first")
                return None
            if name in _UNAUTH:
                self._error("Already authenticated")
                return None
            self._error("Unknown command")
            return None
        method, shape, usage = handler
        args = words[1:]
        if not _fits(args, shape):
            self._error(f"Syntax: {name} {usage}".rstrip())
            return None
        result: Event | None = method(self, args)
        return result

    def _capability(self, args: list[Word]) -> None:
        self._capabilities()
        self._ok(None, "Capability completed")

    def _noop(self, args: list[Word]) -> None:
        if args:  # RFC 5804 §2.13: the tag comes back in a TAG response code
            self._out += b"OK (TAG " + string(args[0].data) + b') "Done"\r\n'
        else:
            self._ok(None, "Done")

    def _logout(self, args: list[Word]) -> None:
        # RFC 5804 §2.3 (errata 7825): OK, and nothing the client sends after it is read.
        self._ok(None, "Logout completed")
        self._close("logout")

    def _starttls(self, args: list[Word]) -> Event | None:
        if self.is_tls or not self.settings.is_tls_available:
            self._error("TLS already active" if self.is_tls else "TLS not available")
            return None
        self._ok(None, "Begin TLS negotiation")
        self._in.clear()  # nothing pipelined in clear counts as sent over TLS (CVE-2011-0411)
        self._awaiting = "tls"
        return StartTLSRequested()

    def _authenticate(self, args: list[Word]) -> Event | None:
        mechanism = args[0].data.upper()
        if mechanism not in (b"PLAIN", b"SCRAM-SHA-256"):
            self._error("Unsupported mechanism")
            return None
        if not self._may_login():
            self._no("ENCRYPT-NEEDED", "Use STARTTLS first")
            return None
        self._sasl_mechanism = mechanism.decode()
        self._end_sasl()
        if mechanism == b"SCRAM-SHA-256":
            self._scram = ScramServer(self._sasl_nonce)
        if len(args) == 2:  # an initial response (RFC 5804 §2.1); "" is an empty one
            return self._sasl_step(args[1].data)
        self._out += b'""\r\n'
        self._awaiting = "sasl"
        return None

    def _sasl_response(self, words: list[Word]) -> Event | None:
        self._awaiting = None
        if len(words) != 1 or not words[0].is_string:
            self._end_sasl()
            self._error("Expected a string")
            return None
        if words[0].data == b"*":  # RFC 5804 §2.1: the client cancels
            self._end_sasl()
            self._no(None, "Authentication cancelled")
            return None
        return self._sasl_step(words[0].data)

    def _sasl_step(self, data: bytes) -> Event | None:
        """One client response: an event for the adapter, or a NO."""
        try:
            decoded = decode_base64(data) if data else b""
            if self._sasl_mechanism == "PLAIN":
                credentials = parse_plain(decoded)
                if credentials.authzid and credentials.authzid != credentials.authcid:
                    self._no(None, "Authorization identity not allowed")
                    return None
                self._awaiting = "login"
                return LoginRequested(credentials.authcid, credentials.password)
            assert self._scram is not None
            if not self._scram_user:
                self._scram_user = self._scram.client_first(decoded)
                self._awaiting = "scram"
                return ScramRequested(self._scram_user)
            user, self._scram_user = self._scram_user, ""
            scram, self._scram = self._scram, None
            try:
                self._sasl_final = scram.client_final(decoded)
            except SASLError as exc:
                if str(exc) != "wrong password":
                    raise
                self._awaiting = "login"
                return ScramFinished(user, ok=False)
            self._awaiting = "login"
            self._sasl_final = _b64(self._sasl_final)
            return ScramFinished(user, ok=True)
        except SASLError as exc:
            self._end_sasl()
            self._error(f"Bad SASL response: {exc}")
            return None

    def _end_sasl(self) -> None:
        self._scram, self._scram_user, self._sasl_final = None, "", b""

    def _unauthenticate(self, args: list[Word]) -> Event:
        # RFC 5804 §2.14.1: back to the non-authenticated state; TLS stays.
        self.user = None
        self.state = SieveState.NOT_AUTHENTICATED
        self._ok(None, "Unauthenticate completed")
        return Unauthenticated()

    def _listscripts(self, args: list[Word]) -> Event:
        return self._ask("LISTSCRIPTS", ScriptsWanted())

    def _getscript(self, args: list[Word]) -> Event | None:
        name = self._name(args[0])
        return None if name is None else self._ask("GETSCRIPT", ScriptWanted(name))

    def _deletescript(self, args: list[Word]) -> Event | None:
        name = self._name(args[0])
        return None if name is None else self._ask("DELETESCRIPT", DeleteScript(name))

    def _renamescript(self, args: list[Word]) -> Event | None:
        old, new = self._name(args[0]), self._name(args[1])
        return None if old is None or new is None else self._ask("RENAMESCRIPT", RenameScript(old, new))

    def _setactive(self, args: list[Word]) -> Event | None:
        if not args[0].data:  # RFC 5804 §2.8: the empty name deactivates
            return self._ask("SETACTIVE", ActivateScript(None))
        name = self._name(args[0])
        return None if name is None else self._ask("SETACTIVE", ActivateScript(name))

    def _havespace(self, args: list[Word]) -> Event | None:
        name, size = self._name(args[0]), parse_number(args[1])
        if name is None:
            return None
        if size is None:
            self._error("Syntax: HAVESPACE name size")
            return None
        if size > self.settings.max_script_size:
            self._no("QUOTA/MAXSIZE", f"Scripts may have at most {self.settings.max_script_size} octets")
            return None
        self._have_space = name
        return self._ask("HAVESPACE", ScriptsWanted())

    def _putscript(self, args: list[Word]) -> Event | None:
        name = self._name(args[0])
        text = self._script_text(args[1]) if name is not None else None
        if name is None or text is None:
            return None
        self._checking = PutScript(name, text, self.settings.max_scripts)
        self._awaiting = "check"
        return CheckRequested(text)

    def _checkscript(self, args: list[Word]) -> Event | None:
        text = self._script_text(args[0])
        if text is None:
            return None
        self._checking = None
        self._awaiting = "check"
        return CheckRequested(text)

    def _script_text(self, word: Word) -> str | None:
        """A script argument as text, or None after the NO."""
        if len(word.data) > self.settings.max_script_size:  # a quoted string can carry a script too
            self._no("QUOTA/MAXSIZE", "Script is too big")
            return None
        try:
            return word.data.decode("utf-8")
        except UnicodeDecodeError:
            self._no(None, "Script is not UTF-8")
            return None

    # -- helpers ---------------------------------------------------------------------------------------

    def _name(self, word: Word) -> str | None:
        name = check_name(word.data)
        if name is None:
            self._error(f"Invalid script name (1 to {MAX_NAME_OCTETS} octets of UTF-8, no controls, NFC)")
        return name

    def _ask(self, command: str, event: Event) -> Event:
        self._pending = command
        self._awaiting = "store"
        return event

    def _may_login(self) -> bool:
        return self.is_tls or self.is_loopback

    def _capabilities(self) -> None:
        s = self.settings
        lines: list[bytes] = [b'"IMPLEMENTATION" "Kartero"']
        if self.state is SieveState.NOT_AUTHENTICATED and self._may_login():
            lines.append(b'"SASL" "PLAIN SCRAM-SHA-256"')
        else:
            lines.append(b'"SASL" ""')
        lines.append(b'"SIEVE" ' + string(" ".join(s.extensions).encode()))
        if s.is_tls_available and not self.is_tls and self.state is SieveState.NOT_AUTHENTICATED:
            lines.append(b'"STARTTLS"')
        lines += [b'"MAXREDIRECTS" ' + string(str(s.max_redirects).encode()), b'"UNAUTHENTICATE"']
        if self.user is not None:
            lines.append(b'"OWNER" ' + string(self.user.encode()))
        lines.append(b'"VERSION" "1.0"')
        self._out += b"\r\n".join(lines) + b"\r\n"

    def _expect(self, what: str) -> None:
        if self._awaiting != what:
            raise ProtocolViolation(f"ManageSieve core was not waiting for {what} (waiting for {self._awaiting})")
        self._awaiting = None

    def _response(self, status: bytes, code: str | None, text: str | None) -> None:
        out = status
        if code is not None:
            out += b" (" + code.encode() + b")"
        if text:
            out += b" " + string(text.encode())
        self._out += out + b"\r\n"

    def _ok(self, code: str | None, text: str | None) -> None:
        self._response(b"OK", code, text)

    def _no(self, code: str | None, text: str | None) -> None:
        self._response(b"NO", code, text)

    def _error(self, text: str) -> None:
        """A NO for a command the client got wrong; too many of them end the session."""
        self._no(None, text)
        self._count_error()

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.settings.max_errors and self.state is not SieveState.CLOSED:
            self.close("Too many errors", "too many errors")

    def _close(self, reason: str) -> None:
        self.state = SieveState.CLOSED
        self._close_reason = reason
        self._awaiting = None
        self._in.clear()


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _fits(args: list[Word], shape: str) -> bool:
    """Whether the arguments have the shape: "s" a string, "a" anything (a number), "?" the last one
    optional."""
    if shape.endswith("?"):
        required = shape[:-1]
        return _fits(args, required) or _fits(args, required[:-1])
    if len(args) != len(shape):
        return False
    return all(a.is_string or kind == "a" for a, kind in zip(args, shape, strict=True))


# Each command: its handler, its arguments' shape (see _fits) and the usage a NO shows.
_Handler = tuple[Callable[[ManageSieveConnection, list[Word]], Event | None], str, str]
_ANY: dict[str, _Handler] = {
    "CAPABILITY": (ManageSieveConnection._capability, "", ""),
    "NOOP": (ManageSieveConnection._noop, "s?", "[tag]"),
    "LOGOUT": (ManageSieveConnection._logout, "", ""),
}
_UNAUTH: dict[str, _Handler] = {
    "STARTTLS": (ManageSieveConnection._starttls, "", ""),
    "AUTHENTICATE": (ManageSieveConnection._authenticate, "ss?", "mechanism [response]"),
}
_AUTH: dict[str, _Handler] = {
    "LISTSCRIPTS": (ManageSieveConnection._listscripts, "", ""),
    "GETSCRIPT": (ManageSieveConnection._getscript, "s", "name"),
    "PUTSCRIPT": (ManageSieveConnection._putscript, "ss", "name script"),
    "CHECKSCRIPT": (ManageSieveConnection._checkscript, "s", "script"),
    "DELETESCRIPT": (ManageSieveConnection._deletescript, "s", "name"),
    "RENAMESCRIPT": (ManageSieveConnection._renamescript, "ss", "old new"),
    "SETACTIVE": (ManageSieveConnection._setactive, "s", "name"),
    "HAVESPACE": (ManageSieveConnection._havespace, "sa", "name size"),
    "UNAUTHENTICATE": (ManageSieveConnection._unauthenticate, "", ""),
}
