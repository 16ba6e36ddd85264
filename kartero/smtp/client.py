"""The SMTP client core of the delivery agent (sans-I/O): replies in, commands out.

Theory of operation: after the greeting the client says EHLO (HELO if EHLO is refused), upgrades with
STARTTLS whenever it is offered and allowed (then EHLO again, RFC 3207), and reports `Ready` with the
server's extensions. Each `send_message()` runs one transaction: MAIL and every RCPT (and DATA) go in
one write when the server offers PIPELINING (RFC 2920), the body goes by BDAT when CHUNKING is offered
and by dot-stuffed DATA otherwise, and `MessageResult` carries the reply to each recipient. A message
larger than the server's SIZE, or needing SMTPUTF8 it lacks, fails before anything is sent. After a
transaction the connection is reused for the next message (RSET first if it failed early).

A large message is not handed over in memory: `OutgoingMessage.streamed_size` announces it, the core asks
for its bytes with `BodyWanted`, and the adapter feeds them with `send_body` and `end_body`, a piece at
a time (dot-stuffed for DATA across pieces, checked against the announced size for BDAT).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, auto

from kartero.mail import replies
from kartero.mail.replies import Reply, make_printable

_REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -])(.*)")
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3}) (.*)", re.S)  # ASCII digits: "2.\u0661.0" is none
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200


def parse_reply_lines(lines: list[tuple[int, str]]) -> Reply:
    """A Reply from the lines of one (possibly multi-line) server reply, text made printable ASCII."""
    code = lines[0][0]
    texts = []
    enhanced = None
    for _, text in lines:
        m = _ENHANCED.fullmatch(text)
        if m and m.group(1) == str(code)[0]:
            enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
            text = m.group(4)
        texts.append(make_printable(text))
    return Reply(code, enhanced if code >= 200 and code != 334 and code != 354 else None, "\n".join(texts))


class ClientState(Enum):
    GREETING = auto()
    EHLO = auto()
    HELO = auto()
    STARTTLS = auto()
    AWAITING_TLS = auto()
    READY = auto()
    IN_TRANSACTION = auto()
    RSET = auto()
    QUIT = auto()
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class ClientSettings:
    helo: str
    use_starttls: bool = True
    require_tls: bool = False  # MTA-STS enforce: no STARTTLS means no delivery over this session


@dataclass(frozen=True, slots=True)
class OutgoingRecipient:
    address: str
    notify: tuple[str, ...] = ()  # DSN NOTIFY values, passed on when the server offers DSN
    orcpt: str | None = None  # "rfc822;user@example.org" (unencoded)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    sender: str  # "" for the null reverse-path
    recipients: tuple[OutgoingRecipient, ...]
    data: bytes  # CRLF line ends, not dot-stuffed (empty when streamed)
    needs_smtputf8: bool = False
    is_8bit: bool = False
    ret: str | None = None
    envid: str | None = None
    streamed_size: int = 0  # > 0: the body comes through BodyWanted / send_body / end_body instead

    @property
    def size(self) -> int:
        return self.streamed_size or len(self.data)


@dataclass(frozen=True, slots=True)
class Ready:
    extensions: dict[str, str]
    is_tls: bool


@dataclass(frozen=True, slots=True)
class StartTLSReady:
    """The server said 220 to STARTTLS: upgrade the transport, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class MessageResult:
    """One transaction's outcome: the reply for each recipient (in the order given) and whether the
    server took DSN responsibility (it offered DSN, so NOTIFY and ORCPT went along)."""

    replies: tuple[Reply, ...]
    remote_dsn: bool


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session cannot go on (refused greeting or EHLO/HELO, garbage, closed connection)."""

    reply: Reply | None
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    pass


@dataclass(frozen=True, slots=True)
class BodyWanted:
    """Send the streamed message's bytes now: `send_body` piece by piece, then `end_body`."""


ClientEvent = Ready | StartTLSReady | MessageResult | SessionFailed | Closed | BodyWanted


class _BodyWriter:
    """The body of a streamed message on the wire: dot-stuffed for DATA (a CR at the end of a piece is
    held back, so a CRLF "." split across pieces is still seen), as it is for BDAT."""

    def __init__(self, *, dot_stuffed: bool) -> None:
        self.dot_stuffed = dot_stuffed
        self.written = 0  # octets of message taken
        self._at_line_start = True
        self._carry = b""
        self._last = b""  # the last two octets written, to end DATA with CRLF

    def write(self, data: bytes) -> bytes:
        self.written += len(data)
        if not self.dot_stuffed:
            return data
        data = self._carry + data
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        if not data:
            return b""
        out = (b"." if self._at_line_start and data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")
        self._at_line_start = data.endswith(b"\r\n")
        self._last = (self._last + data)[-2:]
        return out

    def end(self) -> bytes:
        if not self.dot_stuffed:
            return b""
        out = self._carry
        tail = (self._last + out)[-2:]
        if (self.written or out) and tail != b"\r\n":
            out += b"\r\n"
        return out + b".\r\n"


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext encoding: "+" "=" and anything outside printable ASCII as +XX."""
    return "".join(ch if 33 <= ord(ch) <= 126 and ch not in "+=" else f"+{ord(ch):02X}" for ch in value)


def dot_stuff(data: bytes) -> bytes:
    """The DATA form of a message: leading dots doubled, a final CRLF ensured, then the end marker."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


@dataclass
class _Transaction:
    message: OutgoingMessage
    expected: list[str] = field(default_factory=list)  # what each pending reply answers: mail/rcpt/data/bdat/body
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = field(default_factory=list)
    remote_dsn: bool = False


class ClientConnection:
    def __init__(self, settings: ClientSettings, *, is_tls: bool = False) -> None:
        self.settings = settings
        self.state = ClientState.GREETING
        self.is_tls = is_tls
        self.extensions: dict[str, str] = {}
        self._in = bytearray()
        self._out = bytearray()
        self._reply_lines: list[tuple[int, str]] = []
        self._events: list[ClientEvent] = []
        self._tx: _Transaction | None = None
        self._queued: list[str] = []  # commands still to send one by one (no PIPELINING)
        self._next_message: OutgoingMessage | None = None  # sent once our RSET is answered
        self._body: _BodyWriter | None = None  # a streamed message's body being sent
        self._is_eof = False

    # -- adapter API -------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._is_eof = True
        elif self.state not in (ClientState.CLOSED, ClientState.AWAITING_TLS):
            # Clear text that arrives before the handshake is dropped: it must not be read as the
            # server's answer over TLS (STARTTLS response injection; RFC 3207 §4.2).
            self._in += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ClientEvent | None:
        while not self._events:
            if self.state is ClientState.CLOSED:
                return None
            reply = self._next_reply()
            if reply is None:
                if self._events:
                    break
                if self._is_eof:
                    self._fail(None, "connection closed by server")
                    continue
                return None
            self._handle(reply)
        return self._events.pop(0)

    def tls_established(self) -> None:
        if self.state is not ClientState.AWAITING_TLS:
            raise RuntimeError("tls_established() without STARTTLS")
        self.is_tls = True
        self.extensions = {}
        self._send_command(f"EHLO {self.settings.helo}")
        self.state = ClientState.EHLO

    def send_message(self, message: OutgoingMessage) -> MessageResult | None:
        """Start a transaction; returns a result at once when the message cannot go to this server.

        Allowed when Ready, and right after a MessageResult: a transaction that failed early is reset
        with RSET first, and the message then goes out once the server has answered the RSET.
        """
        if self.state not in (ClientState.READY, ClientState.RSET) or self._next_message is not None:
            raise RuntimeError(f"send_message() in state {self.state.name}")
        refusal = self._refusal(message)
        if refusal is not None:
            return MessageResult(tuple(refusal for _ in message.recipients), remote_dsn=False)
        if self.state is ClientState.RSET:
            self._next_message = message
            return None
        self._start(message)
        return None

    def _start(self, message: OutgoingMessage) -> None:
        tx = self._tx = _Transaction(message)
        tx.remote_dsn = "DSN" in self.extensions
        pipelining = "PIPELINING" in self.extensions
        commands = [self._mail_command(message)] + [self._rcpt_command(r, tx.remote_dsn) for r in message.recipients]
        tx.expected = ["mail"] + ["rcpt"] * len(message.recipients)
        use_bdat = "CHUNKING" in self.extensions
        if not use_bdat:
            commands.append("DATA")
            tx.expected.append("data")
        self.state = ClientState.IN_TRANSACTION
        if pipelining:
            for command in commands:
                self._send_command(command)
        else:
            self._queued = commands[1:]
            self._send_command(commands[0])

    def send_body(self, data: bytes) -> None:
        """The next piece of a streamed message (after BodyWanted)."""
        body, tx = self._body, self._tx
        if body is None or tx is None:
            raise RuntimeError("send_body() without BodyWanted")
        if not body.dot_stuffed and body.written + len(data) > tx.message.size:
            raise RuntimeError("more body than the announced size")
        self._out += body.write(data)

    def end_body(self) -> None:
        """The streamed message is complete: DATA is ended (its reply then comes as for any message).
        A BDAT body must have exactly the announced size: a short one cannot be framed, so the session
        fails rather than send another message's commands as body."""
        body, tx = self._body, self._tx
        if body is None or tx is None:
            raise RuntimeError("end_body() without BodyWanted")
        self._body = None
        if not body.dot_stuffed and body.written != tx.message.size:
            self._fail(None, f"message body of {body.written} octets, {tx.message.size} announced")
            return
        self._out += body.end()
        tx.expected.append("body" if body.dot_stuffed else "bdat")

    def quit(self) -> None:
        if self.state in (ClientState.READY, ClientState.GREETING, ClientState.EHLO, ClientState.HELO):
            self._send_command("QUIT")
            self.state = ClientState.QUIT

    @property
    def buffered_bytes(self) -> int:
        """Input held but not yet processed: at most one partial reply line (MAX_REPLY_LINE)."""
        return len(self._in)

    @property
    def timeout_s(self) -> float:
        """RFC 5321 §4.5.3.2 client timeouts for what we now wait for."""
        if self._tx is not None and self._tx.expected[:1] == ["body"]:
            return 600.0  # DATA termination: 10 minutes
        if self._tx is not None and self._tx.expected[:1] == ["data"]:
            return 120.0  # DATA initiation: 2 minutes
        return 300.0  # greeting, MAIL, RCPT: 5 minutes

    # -- replies -----------------------------------------------------------------------------------------

    def _next_reply(self) -> Reply | None:
        while True:
            idx = self._in.find(b"\n")
            # Too long whether the line arrived whole or in pieces that overflowed the buffer first.
            if idx > MAX_REPLY_LINE or (idx < 0 and len(self._in) > MAX_REPLY_LINE):
                self._fail(None, "reply line too long")
                return None
            if idx < 0:
                return None
            raw = bytes(self._in[:idx]).rstrip(b"\r")
            del self._in[: idx + 1]
            m = _REPLY_LINE.fullmatch(raw) or (_REPLY_LINE.fullmatch(raw + b" ") if len(raw) == 3 else None)
            if m is None:
                self._fail(None, f"garbled reply {raw[:80]!r}")
                return None
            self._reply_lines.append((int(m.group(1)), m.group(3).decode("utf-8", "replace")))
            if len(self._reply_lines) > MAX_REPLY_LINES:
                self._fail(None, "reply too long")
                return None
            if m.group(2) == b" ":
                lines, self._reply_lines = self._reply_lines, []
                return parse_reply_lines(lines)

    def _handle(self, reply: Reply) -> None:
        match self.state:
            case ClientState.GREETING:
                if reply.code != 220:
                    self._fail(reply, "greeting refused")
                    return
                self._send_command(f"EHLO {self.settings.helo}")
                self.state = ClientState.EHLO
            case ClientState.EHLO:
                if reply.code != 250:
                    if reply.is_permanent:  # RFC 5321 §3.2: fall back to HELO
                        self._send_command(f"HELO {self.settings.helo}")
                        self.state = ClientState.HELO
                    else:
                        self._fail(reply, "EHLO refused")
                    return
                self.extensions = _extensions(reply)
                if "STARTTLS" in self.extensions and self.settings.use_starttls and not self.is_tls:
                    self._send_command("STARTTLS")
                    self.state = ClientState.STARTTLS
                    return
                if self.settings.require_tls and not self.is_tls:
                    self._fail_and_quit("the server does not offer STARTTLS, which the policy requires")
                    return
                self.state = ClientState.READY
                self._events.append(Ready(self.extensions, self.is_tls))
            case ClientState.HELO:
                if reply.code != 250:
                    self._fail(reply, "HELO refused")
                    return
                if self.settings.require_tls and not self.is_tls:
                    self._fail_and_quit("the server does not offer STARTTLS, which the policy requires")
                    return
                self.extensions = {}
                self.state = ClientState.READY
                self._events.append(Ready({}, self.is_tls))
            case ClientState.STARTTLS:
                if reply.code != 220:
                    if self.settings.require_tls:
                        self._fail_and_quit(f"STARTTLS refused ({reply}), and the policy requires TLS")
                        return
                    # Opportunistic TLS: the server offered it but refused; go on in clear.
                    self.state = ClientState.READY
                    self._events.append(Ready(self.extensions, self.is_tls))
                    return
                self.state = ClientState.AWAITING_TLS
                self._in.clear()  # nothing the server sent in clear counts as sent over TLS (RFC 3207 §4.2)
                self._events.append(StartTLSReady())
            case ClientState.IN_TRANSACTION:
                self._transaction_reply(reply)
            case ClientState.RSET:
                self.state = ClientState.READY  # whatever RSET got, the next MAIL starts afresh
                message, self._next_message = self._next_message, None
                if message is not None:
                    self._start(message)
                else:
                    self._events.append(Ready(self.extensions, self.is_tls))
            case ClientState.QUIT:
                self.state = ClientState.CLOSED
                self._in.clear()
                self._events.append(Closed())
            case _:
                self._fail(reply, f"unexpected reply in state {self.state.name}")

    def _transaction_reply(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        kind = tx.expected.pop(0)
        if self._queued and kind in ("mail", "rcpt"):  # no PIPELINING: one command per reply
            next_command = self._queued.pop(0)
            if kind == "mail" and not reply.is_positive:
                self._queued = []
                tx.expected = []
            else:
                self._send_command(next_command)
        match kind:
            case "mail":
                tx.mail_reply = reply
            case "rcpt":
                tx.rcpt_replies.append(reply)
            case "data":
                accepted = any(r.is_positive for r in tx.rcpt_replies)
                if reply.code == 354 and accepted and tx.mail_reply is not None and tx.mail_reply.is_positive:
                    if tx.message.streamed_size:
                        self._body = _BodyWriter(dot_stuffed=True)
                        self._events.append(BodyWanted())
                        return
                    self._out += dot_stuff(tx.message.data)
                    tx.expected.append("body")
                    return
                if reply.code == 354:  # nobody to deliver to, but the server wants data: end it empty
                    self._out += b".\r\n"
                    tx.expected.append("discard")
                    return
                self._finish(reply if tx.mail_reply and tx.mail_reply.is_positive else tx.mail_reply, early=True)
                return
            case "body" | "bdat":
                self._finish(reply, early=False)
                return
            case "discard":
                self._finish(None, early=True)
                return
        if tx.expected:
            return
        # All MAIL/RCPT replies are in (the BDAT path, or MAIL refused without pipelining).
        if tx.mail_reply is None or not tx.mail_reply.is_positive:
            self._finish(tx.mail_reply, early=True)
        elif not any(r.is_positive for r in tx.rcpt_replies):
            self._finish(None, early=True)
        else:
            self._out += f"BDAT {tx.message.size} LAST\r\n".encode()
            if tx.message.streamed_size:
                self._body = _BodyWriter(dot_stuffed=False)
                self._events.append(BodyWanted())
                return
            self._out += tx.message.data
            tx.expected.append("bdat")

    def _finish(self, final: Reply | None, *, early: bool) -> None:
        tx = self._tx
        assert tx is not None
        self._tx = None
        self._queued = []
        answers: list[Reply] = []
        mail = tx.mail_reply
        for i, _ in enumerate(tx.message.recipients):
            rcpt = tx.rcpt_replies[i] if i < len(tx.rcpt_replies) else None
            if mail is not None and not mail.is_positive:
                answers.append(mail)
            elif rcpt is None:
                answers.append(final or replies.NO_RCPT_REPLY)
            elif not rcpt.is_positive or final is None:
                answers.append(rcpt)
            else:
                answers.append(final)
        self._events.append(MessageResult(tuple(answers), tx.remote_dsn))
        if early:
            self._send_command("RSET")
            self.state = ClientState.RSET
        else:
            self.state = ClientState.READY

    # -- commands ----------------------------------------------------------------------------------------

    def _refusal(self, message: OutgoingMessage) -> Reply | None:
        size_limit = self.extensions.get("SIZE", "")
        # RFC 1870 §4: "SIZE [number]", 0 or none meaning no fixed limit. MAX_REPLY_LINE keeps the number
        # below the 4,300 digits int() refuses.
        if size_limit.isascii() and size_limit.isdigit():
            limit = int(size_limit)
            if limit and message.size > limit:
                return replies.REMOTE_SIZE_EXCEEDED.with_text(
                    f"Message too large for the remote server (limit {limit})"
                )
        if message.needs_smtputf8 and "SMTPUTF8" not in self.extensions:
            return replies.REMOTE_NO_SMTPUTF8
        return None

    def _mail_command(self, message: OutgoingMessage) -> str:
        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={message.size}")
        if message.is_8bit and "8BITMIME" in self.extensions:
            params.append("BODY=8BITMIME")
        if message.needs_smtputf8:
            params.append("SMTPUTF8")
        if "DSN" in self.extensions:
            if message.ret:
                params.append(f"RET={message.ret}")
            if message.envid:
                params.append(f"ENVID={xtext(message.envid)}")
        return f"MAIL FROM:<{message.sender}>" + "".join(f" {p}" for p in params)

    @staticmethod
    def _rcpt_command(recipient: OutgoingRecipient, dsn: bool) -> str:
        params = []
        if dsn and recipient.notify:
            params.append("NOTIFY=" + ",".join(recipient.notify))
        if dsn and recipient.orcpt:
            addr_type, _, address = recipient.orcpt.partition(";")
            params.append(f"ORCPT={addr_type};{xtext(address)}")
        return f"RCPT TO:<{recipient.address}>" + "".join(f" {p}" for p in params)

    def _send_command(self, command: str) -> None:
        self._out += command.encode("utf-8") + b"\r\n"

    def _fail_and_quit(self, reason: str) -> None:
        """End the session politely for a reason of ours (the server said nothing wrong)."""
        self._send_command("QUIT")
        self._fail(None, reason)

    def _fail(self, reply: Reply | None, reason: str) -> None:
        self._events.append(SessionFailed(reply, reason))
        self.state = ClientState.CLOSED
        self._tx = None
        self._next_message = None
        self._body = None
        self._in.clear()
        self._reply_lines = []


def _extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-cased) and their parameters; the first line is the greeting."""
    extensions: dict[str, str] = {}
    for line in reply.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params
    return extensions
