"""The SMTP server core: bytes in, events and replies out (sans-I/O).

The adapter feeds whatever the socket gave with `receive_data`, drains `next_event()` until it returns
None, answers the events that need a decision with `answer()`, and writes `data_to_send()`. Protocol
errors (500, 501, 503, 555, ...) are answered here and never reach the adapter. See state.py for the
state machine and events.py for the events.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from kartero.auth.sasl import SASLError, ScramCredentials, ScramServer, decode_base64, parse_plain
from kartero.mail import replies
from kartero.mail.address import Path
from kartero.mail.replies import Reply
from kartero.smtp.commands import (
    DEFAULT_LINE_LIMIT,
    FORBIDDEN_VERBS,
    LINE_LIMITS,
    MAX_BUFFERED_AUTH_LINE,
    MAX_BUFFERED_LINE,
    SMTPError,
    Verb,
    parse_bdat,
    parse_helo_name,
    parse_mail,
    parse_rcpt,
    split_command,
)
from kartero.smtp.data import SPILL_PIECE, BodyCollector, DataReader
from kartero.smtp.events import (
    AuthRequested,
    ConnectionClosed,
    Envelope,
    Event,
    Hello,
    MailFrom,
    MailParams,
    MessageData,
    MessageReceived,
    MessageRefused,
    OutputReady,
    RcptTo,
    Recipient,
    ScramFinished,
    ScramRequested,
    StartTLSRequested,
)
from kartero.smtp.state import ProtocolViolation, State, Trigger, next_state


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What one listener's sessions need to know; made from the config by server.py."""

    hostname: str
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    max_errors: int = 20
    is_tls_available: bool = False
    # RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command.
    command_timeout_s: float = 300.0
    # RFC 5321 §4.5.3.2.5 (client side): 3 minutes per data block; we grant the peer the same.
    data_timeout_s: float = 180.0
    # SASL mechanisms offered once TLS is active (submission); none on the MX listener.
    auth_mechanisms: tuple[str, ...] = ()
    # Submission (RFC 6409 §4.3): no MAIL before a successful AUTH.
    is_auth_required: bool = False
    # A message larger than this leaves the core in MessageData pieces as it arrives (the adapter
    # spools it), so a session holds about this much of a message, whatever its size.
    spool_threshold: int = 1024 * 1024
    # Submission refuses a message holding NUL (the MX stores what it is sent).
    refuse_nul: bool = False

    def __post_init__(self) -> None:
        if not self.hostname.isascii() or not self.hostname:
            raise ValueError("hostname must be a non-empty ASCII (A-label) name")
        if self.max_message_size < 1 or self.max_recipients < 1 or self.max_errors < 1:
            raise ValueError("limits must be positive")


class _NeedData:
    pass


_NEED_DATA = _NeedData()
# Output that may wait in the core before it reports OutputReady (1 MiB of pipelined EHLO made 18 MB).
OUTPUT_HIGH_WATER = 64 * 1024
# Commands that move no mail forward; past JUNK_LIMIT of them (since the session began or the last
# accepted message) each one counts against the error budget, so a flood of them ends with 421 instead
# of costing CPU forever (like Postfix's smtpd_junk_command_limit).
JUNK_VERBS = frozenset({Verb.EHLO, Verb.HELO, Verb.NOOP, Verb.RSET, Verb.VRFY, Verb.HELP})
JUNK_LIMIT = 100
_Pending = MailFrom | RcptTo | MessageReceived | AuthRequested | ScramRequested | ScramFinished


@dataclass(slots=True)
class _AuthExchange:
    """An AUTH command waiting for the client's next SASL response line."""

    mechanism: str
    user: str = ""
    scram: ScramServer | None = None


class ServerConnection:
    """One SMTP session, from greeting to close."""

    def __init__(self, settings: ServerSettings, *, is_tls: bool = False, sasl_nonce: str = "") -> None:
        self.settings = settings
        self.state = State.CONNECTED
        self.is_tls = is_tls
        self.helo: str | None = None
        self.is_esmtp = False
        self.authenticated_as: str | None = None
        self._auth: _AuthExchange | None = None
        self._sasl_nonce = sasl_nonce  # the server's part of a SCRAM nonce (random, from the adapter)
        self._max_line = MAX_BUFFERED_AUTH_LINE if settings.auth_mechanisms else MAX_BUFFERED_LINE
        self._in = bytearray()
        self._out = bytearray()
        self._replies_by_digit = [0] * 6  # replies queued, by the first digit of their code (for metrics)
        self._is_output_reported = False
        self._is_eof = False
        self._pending: _Pending | None = None
        self._errors = 0
        self._junk = 0
        self._is_skipping_line = False
        self._close_reason: str | None = None
        self._is_close_reported = False
        # Transaction
        self._mail: tuple[Path, MailParams] | None = None
        self._recipients: list[Recipient] = []
        self._used_bdat = False
        self._data: DataReader | None = None
        # BDAT: the message being collected, the chunk being read, and octets to throw away after a
        # refused BDAT command.
        self._bdat_body: BodyCollector | None = None
        self._bdat_size = 0
        self._bdat_remaining = 0
        self._bdat_is_last = False
        self._discard_remaining = 0
        self._discard_reply: Reply | None = None

    # -- adapter API -------------------------------------------------------------------------------

    def start(self, refusal: Reply | None = None) -> None:
        """Queue the greeting, or a refusal (e.g. 554 or 421) that also closes the session."""
        if refusal is not None:
            self.close(refusal, "refused at connect")
            return
        self._send(replies.GREETING.with_text(f"{self.settings.hostname} ESMTP Kartero"))

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer; b"" means the peer closed its side."""
        if self.state is State.CLOSED:
            return
        if not data:
            self._is_eof = True
        elif self.state is not State.AWAITING_TLS:
            # In AWAITING_TLS, plaintext sent after STARTTLS is dropped (CVE-2011-0411 and kin).
            self._in += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self._is_output_reported = False
        return out

    def take_reply_counts(self) -> list[int]:
        """How many replies were queued since the last call, indexed by the first digit of their code
        (2 to 5); the adapter adds them to its metrics."""
        counts, self._replies_by_digit = self._replies_by_digit, [0] * 6
        return counts

    def next_event(self) -> Event | None:
        """Process buffered input up to the next event; None means: send output, then read more."""
        while True:
            if self._pending is not None or self.state is State.AWAITING_TLS:
                return None
            if self.state is State.CLOSED:
                if self._is_close_reported:
                    return None
                self._is_close_reported = True
                return ConnectionClosed(self._close_reason or "closed")
            if len(self._out) >= OUTPUT_HIGH_WATER and not self._is_output_reported:
                self._is_output_reported = True
                return OutputReady()
            event = self._step()
            if event is _NEED_DATA:
                if not self._is_eof:
                    return None
                in_message = self.state in (State.IN_DATA, State.IN_BDAT)
                self._close_silently("peer closed during message data" if in_message else "peer closed")
                continue
            if event is not None:
                assert not isinstance(event, _NeedData)
                return event

    def answer(self, reply: Reply) -> None:
        """Hand back the decision for the pending MailFrom, RcptTo or MessageReceived."""
        pending = self._pending
        if pending is None:
            raise ProtocolViolation(f"answer() with nothing to answer in state {self.state.name}")
        self._pending = None
        if reply.code == 421:  # "closing transmission channel" (RFC 5321 §3.8): a filter's SHUTDOWN, say
            self.close(reply, "closed by a 421 decision")
            return
        if isinstance(pending, MailFrom):
            if reply.is_positive:
                self._mail = (pending.path, pending.params)
                self._recipients = []
                self._used_bdat = False
                self.state = next_state(self.state, Trigger.MAIL_ACCEPTED)
            self._reply(reply)
        elif isinstance(pending, RcptTo):
            if reply.is_positive:
                self._recipients.append(Recipient(pending.path, pending.params))
            self._reply(reply)
        elif isinstance(pending, (AuthRequested, ScramRequested, ScramFinished)):
            raise ProtocolViolation("use auth_result() or scram_credentials() for AUTH")
        else:
            self._end_transaction()
            if reply.is_positive:
                self._junk = 0  # mail moved: the client earns a fresh allowance of junk commands
            self._reply(reply)

    def auth_result(self, user: str | None, refusal: Reply | None = None) -> None:
        """The password check of the pending AUTH is done: `user` on success; else `refusal` (default
        535 5.7.8, or e.g. 454 4.7.0 when the client is throttled)."""
        pending = self._pending
        if not isinstance(pending, (AuthRequested, ScramRequested, ScramFinished)):
            raise ProtocolViolation("auth_result() without a pending AUTH")
        if user is not None and (
            isinstance(pending, ScramRequested) or (isinstance(pending, ScramFinished) and not pending.ok)
        ):
            raise ProtocolViolation("a SCRAM exchange succeeds on the client's proof, not by auth_result()")
        self._pending = None
        self._auth = None
        if user is None:
            self._error(refusal or replies.AUTH_FAILED)
            return
        self.authenticated_as = user
        self._send(replies.AUTH_OK)

    def scram_credentials(self, credentials: ScramCredentials) -> None:
        """The SCRAM keys for the pending ScramRequested; the exchange goes on with the client."""
        exchange = self._auth
        if not isinstance(self._pending, ScramRequested) or exchange is None or exchange.scram is None:
            raise ProtocolViolation("scram_credentials() without a pending SCRAM exchange")
        self._pending = None
        self._challenge(exchange.scram.server_first(credentials))

    def tls_established(self) -> None:
        """The adapter finished the TLS handshake; the client must now start over with EHLO."""
        self.state = next_state(self.state, Trigger.TLS_ESTABLISHED)
        self.is_tls = True
        self.helo = None
        self.is_esmtp = False
        self.authenticated_as = None
        self._reset_transaction()

    def close(self, reply: Reply, reason: str) -> None:
        """Send a last reply (421 on timeout or shutdown) and end the session."""
        if self.state is State.CLOSED:
            return
        self._send(reply)
        self._close_silently(reason)

    def abandon(self, reason: str) -> None:
        """The peer is gone (the connection broke): end without processing what it pipelined, since no
        reply could reach it. (After a clean half-close, `receive_data(b"")`, input is still processed.)"""
        if self.state is not State.CLOSED:
            self._close_silently(reason)

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def is_idle(self) -> bool:
        """True between commands with nothing acknowledged at stake: safe to end for shutdown."""
        return self._pending is None and self.state in (State.CONNECTED, State.READY, State.IN_TRANSACTION)

    @property
    def timeout_s(self) -> float:
        """How long the adapter may wait for the peer's next bytes in the current state."""
        if self.state in (State.IN_DATA, State.IN_BDAT):
            return self.settings.data_timeout_s
        return self.settings.command_timeout_s

    @property
    def buffered_bytes(self) -> int:
        """Input held but not yet processed; the adapter pauses reading when this grows."""
        return len(self._in)

    # -- input processing --------------------------------------------------------------------------

    def _step(self) -> Event | _NeedData | None:
        if self._discard_remaining:
            return self._discard()
        if self.state is State.IN_DATA:
            return self._read_data()
        if self.state is State.IN_BDAT:
            return self._read_chunk()
        idx = self._in.find(b"\n")
        if idx < 0:
            if self._is_skipping_line or len(self._in) > self._max_line:
                self._in.clear()
                self._is_skipping_line = True
            return _NEED_DATA
        line = bytes(self._in[: idx + 1])
        del self._in[: idx + 1]
        # A line longer than the buffer limit is too long however it arrived: in one read, or in
        # pieces that overflowed the buffer first (the reply must not depend on how TCP cut it).
        if self._is_skipping_line or idx > self._max_line:
            self._is_skipping_line = False
            self._auth = None
            self._error(replies.LINE_TOO_LONG)
            return None
        if self._auth is not None:
            return self._sasl_response(line)
        try:
            return self._dispatch(line)
        except SMTPError as exc:
            self._error(exc.reply)
            return None

    def _dispatch(self, line: bytes) -> Event | None:
        # CRLF ends a command; a lone LF is tolerated (it cannot end DATA, so smuggling gains nothing).
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if b"\r" in body or b"\0" in body:
            raise SMTPError(replies.SYNTAX_ERROR)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SMTPError(replies.SYNTAX_ERROR) from None
        word, arg = split_command(text)
        if len(body) + 2 > LINE_LIMITS.get(word, DEFAULT_LINE_LIMIT):
            raise SMTPError(replies.LINE_TOO_LONG)
        if word in FORBIDDEN_VERBS:
            self.close(replies.FORBIDDEN_COMMAND, f"forbidden command {word}")
            return None
        try:
            verb = Verb(word)
        except ValueError:
            raise SMTPError(replies.UNKNOWN_COMMAND) from None
        event = _HANDLERS[verb](self, arg)
        if verb in JUNK_VERBS:
            self._junk += 1
            if self._junk > JUNK_LIMIT:
                self._count_error()
        return event

    def _read_data(self) -> Event | _NeedData | None:
        reader = self._data
        assert reader is not None
        collector = reader.collector
        if collector.ready >= SPILL_PIECE:
            return MessageData(collector.take())
        if not self._in:
            return _NEED_DATA
        # A bounded step at a time, so a large message spills out in pieces however much input waits.
        step = self._in[:SPILL_PIECE]
        consumed = reader.feed(step)
        if consumed is None:
            del self._in[: len(step)]
            return MessageData(collector.take()) if collector.ready >= SPILL_PIECE else None
        del self._in[:consumed]
        self._data = None
        return self._end_of_message(collector, reader.length)

    def _read_chunk(self) -> Event | _NeedData | None:
        collector = self._bdat_body
        assert collector is not None
        if collector.ready >= SPILL_PIECE:
            return MessageData(collector.take())
        if self._bdat_remaining:
            if not self._in:
                return _NEED_DATA
            n = min(len(self._in), self._bdat_remaining, SPILL_PIECE)
            self._bdat_remaining -= n
            self._bdat_size += n
            collector.feed(bytes(self._in[:n]))
            del self._in[:n]
            if self._bdat_remaining:
                return MessageData(collector.take()) if collector.ready >= SPILL_PIECE else None
        if collector.refusal is replies.SIZE_EXCEEDED:
            return self._refuse(replies.SIZE_EXCEEDED, self._bdat_size)  # at once: RFC 3030 §2
        if not self._bdat_is_last:
            self.state = next_state(self.state, Trigger.CHUNK_DONE)
            self._reply(replies.CHUNK_RECEIVED.with_text(f"{self._bdat_size} octets received"))
            return None
        collector.finish()
        return self._end_of_message(collector, self._bdat_size)

    def _end_of_message(self, collector: BodyCollector, wire_size: int) -> Event:
        refusal = collector.refusal
        if refusal is not None:
            return self._refuse(refusal, wire_size)
        event = MessageReceived(self._envelope(), collector.rest(), collector.spilled, collector.is_8bit)
        self._pending = event
        return event

    def _discard(self) -> _NeedData | None:
        n = min(len(self._in), self._discard_remaining)
        del self._in[:n]
        self._discard_remaining -= n
        if self._discard_remaining:
            return _NEED_DATA
        assert self._discard_reply is not None
        self._error(self._discard_reply)
        self._discard_reply = None
        return None

    # -- command handlers --------------------------------------------------------------------------

    def _ehlo(self, arg: str) -> Event:
        return self._hello(arg, is_esmtp=True)

    def _helo(self, arg: str) -> Event:
        return self._hello(arg, is_esmtp=False)

    def _hello(self, arg: str, *, is_esmtp: bool) -> Event:
        name = parse_helo_name(arg)
        self._reset_transaction()
        self.state = next_state(self.state, Trigger.HELLO)
        self.helo = name
        self.is_esmtp = is_esmtp
        host = self.settings.hostname
        if not is_esmtp:
            self._send(replies.HELLO.with_text(host))
            return Hello(is_esmtp=False, name=name)
        lines = [
            f"{host} Hello {name}",
            "PIPELINING",
            f"SIZE {self.settings.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        if self.settings.is_tls_available and not self.is_tls:
            lines.append("STARTTLS")
        if self._offers_auth():
            lines.append("AUTH " + " ".join(self.settings.auth_mechanisms))
        self._send(replies.HELLO.with_text("\n".join(lines)))
        return Hello(is_esmtp=True, name=name)

    def _mail_cmd(self, arg: str) -> Event:
        if self.state is State.CONNECTED:
            raise SMTPError(replies.NEED_HELO)
        if self.state is not State.READY:
            raise SMTPError(replies.NESTED_MAIL)
        if self.settings.is_auth_required and self.authenticated_as is None:
            raise SMTPError(replies.AUTH_REQUIRED)
        path, params = parse_mail(
            arg, is_esmtp=self.is_esmtp, max_size=self.settings.max_message_size, has_auth=self._offers_auth()
        )
        event = MailFrom(path, params)
        self._pending = event
        return event

    def _rcpt(self, arg: str) -> Event | None:
        if self.state is State.CONNECTED:
            raise SMTPError(replies.NEED_HELO)
        if self.state is not State.IN_TRANSACTION or self._mail is None:
            raise SMTPError(replies.NEED_MAIL)
        if self._used_bdat:
            raise SMTPError(replies.BAD_SEQUENCE.with_text("RCPT not allowed after BDAT"))
        if len(self._recipients) >= self.settings.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452, and the client sends the rest in another transaction.
            self._reply(replies.TOO_MANY_RECIPIENTS)
            return None
        path, params = parse_rcpt(arg, is_esmtp=self.is_esmtp, smtputf8=self._mail[1].smtputf8)
        event = RcptTo(path, params)
        self._pending = event
        return event

    def _data_cmd(self, arg: str) -> None:
        if arg.strip():
            raise SMTPError(replies.BAD_ARGUMENTS)
        self._check_can_send_message()
        if self._used_bdat:
            raise SMTPError(replies.DATA_AFTER_BDAT)
        self.state = next_state(self.state, Trigger.DATA_STARTED)
        self._data = DataReader(self._collector(dot_stuffed=True))
        self._send(replies.START_MAIL_INPUT)
        return None

    def _bdat(self, arg: str) -> None:
        try:
            size, is_last = parse_bdat(arg)
        except SMTPError as exc:
            # The chunk's length is unknown, so the rest of the stream cannot be framed safely.
            self.close(exc.reply, "bad BDAT size")
            return None
        try:
            self._check_can_send_message()
        except SMTPError as exc:
            # RFC 3030 §3: the chunk is still read (and dropped) before the error reply.
            self._discard_remaining = size
            self._discard_reply = exc.reply
            if not size:
                self._discard()
            return None
        if not self._used_bdat:
            self._used_bdat = True
            self._bdat_body = self._collector(dot_stuffed=False)
            self._bdat_size = 0
        self._bdat_remaining = size
        self._bdat_is_last = is_last
        self.state = next_state(self.state, Trigger.BDAT_STARTED)
        return None

    def _rset(self, arg: str) -> None:
        if arg.strip():
            raise SMTPError(replies.BAD_ARGUMENTS)
        self._end_transaction()
        self._reply(replies.OK)

    def _noop(self, arg: str) -> None:
        self._reply(replies.OK)

    def _quit(self, arg: str) -> None:
        if arg.strip():
            raise SMTPError(replies.BAD_ARGUMENTS)
        self.close(replies.CLOSING, "quit")

    def _vrfy(self, arg: str) -> None:
        if not arg.strip():
            raise SMTPError(replies.BAD_ARGUMENTS)
        # No user enumeration: the answer never depends on whether the account exists.
        self._reply(replies.CANNOT_VRFY)

    def _expn(self, arg: str) -> None:
        raise SMTPError(replies.EXPN_DISABLED)

    def _help(self, arg: str) -> None:
        self._reply(replies.HELP)

    def _starttls(self, arg: str) -> Event:
        if arg.strip():
            raise SMTPError(replies.BAD_ARGUMENTS)
        if self.is_tls:
            raise SMTPError(replies.TLS_ALREADY_ACTIVE)
        if not self.settings.is_tls_available:
            raise SMTPError(replies.NOT_IMPLEMENTED)
        if self.state is State.CONNECTED:
            raise SMTPError(replies.NEED_HELO)
        if self.state is not State.READY:
            raise SMTPError(replies.BAD_SEQUENCE)
        self._reply(replies.READY_FOR_TLS)
        # Bytes pipelined behind STARTTLS arrived in clear and must not count as sent over TLS
        # (CVE-2011-0411).
        self._in.clear()
        self.state = next_state(self.state, Trigger.STARTTLS)
        return StartTLSRequested()

    # -- AUTH (RFC 4954) -----------------------------------------------------------------------------------

    def _offers_auth(self) -> bool:
        # DESIGN: AUTH only over TLS (the submission port offers STARTTLS first).
        return bool(self.settings.auth_mechanisms) and self.is_tls

    def _auth_cmd(self, arg: str) -> Event | None:
        if not self.settings.auth_mechanisms:
            raise SMTPError(replies.NOT_IMPLEMENTED)
        if not self.is_tls:
            raise SMTPError(replies.AUTH_NEEDS_TLS)
        if self.state is State.CONNECTED:
            raise SMTPError(replies.NEED_HELO)
        if self.authenticated_as is not None:
            raise SMTPError(replies.ALREADY_AUTHENTICATED)
        if self.state is not State.READY:
            raise SMTPError(replies.BAD_SEQUENCE)
        words = arg.split()
        if not words or len(words) > 2:
            raise SMTPError(replies.BAD_ARGUMENTS)
        mechanism = words[0].upper() if words[0].isascii() else words[0]
        if mechanism not in self.settings.auth_mechanisms:
            raise SMTPError(replies.AUTH_UNKNOWN_MECHANISM)
        self._auth = _AuthExchange(mechanism)
        if mechanism == "SCRAM-SHA-256":
            self._auth.scram = ScramServer(self._sasl_nonce)
        if len(words) == 2:  # initial response (RFC 4954 §4); "=" is an empty one
            return self._sasl_step(b"" if words[1] == "=" else words[1].encode())
        if mechanism == "LOGIN":
            self._challenge(b"Username:")
        else:
            self._send(replies.AUTH_CHALLENGE)
        return None

    def _challenge(self, data: bytes) -> None:
        self._send(replies.AUTH_CHALLENGE.with_text(base64.b64encode(data).decode("ascii")))

    def _sasl_response(self, line: bytes) -> Event | None:
        data = line.rstrip(b"\r\n")
        if data == b"*":  # RFC 4954 §4: the client cancels
            self._auth = None
            self._error(replies.AUTH_CANCELLED)
            return None
        return self._sasl_step(data)

    def _sasl_step(self, data: bytes) -> AuthRequested | ScramRequested | ScramFinished | None:
        exchange = self._auth
        assert exchange is not None
        try:
            decoded = decode_base64(data) if data else b""
            event = self._sasl_event(exchange, decoded)
        except SASLError as exc:
            self._auth = None
            self._error(replies.AUTH_FAILED if str(exc) == "wrong password" else replies.AUTH_BAD_RESPONSE)
            return None
        except UnicodeDecodeError:
            self._auth = None
            self._error(replies.AUTH_BAD_RESPONSE)
            return None
        if event is not None:
            self._pending = event
        return event

    def _sasl_event(
        self, exchange: _AuthExchange, decoded: bytes
    ) -> AuthRequested | ScramRequested | ScramFinished | None:
        """One client response of an exchange: an event for the adapter, or None after a challenge."""
        match exchange.mechanism:
            case "PLAIN":
                credentials = parse_plain(decoded)
                if credentials.authzid and credentials.authzid != credentials.authcid:
                    raise SASLError("authorization identity not allowed")
                return AuthRequested("PLAIN", credentials.authcid, credentials.password)
            case "LOGIN":
                if not exchange.user:
                    exchange.user = decoded.decode("utf-8") or " "
                    self._challenge(b"Password:")
                    return None
                return AuthRequested("LOGIN", exchange.user, decoded.decode("utf-8"))
            case "SCRAM-SHA-256":
                assert exchange.scram is not None
                if not exchange.user:
                    exchange.user = exchange.scram.client_first(decoded)
                    return ScramRequested(exchange.user)
                try:
                    server_final = exchange.scram.client_final(decoded)
                except SASLError as exc:
                    if str(exc) != "wrong password":
                        raise
                    return ScramFinished(exchange.user, ok=False)
                # SMTP has no "additional data with success": the server-final message goes out as one
                # more challenge, which the client answers with an empty line (RFC 4954 §4).
                self._challenge(server_final)
                self._auth = _AuthExchange("SCRAM-DONE", exchange.user)
                return None
            case "SCRAM-DONE":
                return ScramFinished(exchange.user, ok=True)
        raise SASLError("unknown mechanism")

    # -- helpers -----------------------------------------------------------------------------------------

    def _check_can_send_message(self) -> None:
        if self.state is State.CONNECTED:
            raise SMTPError(replies.NEED_HELO)
        if self.state is not State.IN_TRANSACTION:
            raise SMTPError(replies.BAD_SEQUENCE.with_text("Need MAIL and RCPT first"))
        if not self._recipients:
            raise SMTPError(replies.NO_VALID_RECIPIENTS)

    def _envelope(self) -> Envelope:
        assert self._mail is not None and self.helo is not None
        return Envelope(
            helo=self.helo,
            is_esmtp=self.is_esmtp,
            is_tls=self.is_tls,
            mail_from=self._mail[0],
            mail_params=self._mail[1],
            recipients=tuple(self._recipients),
            used_bdat=self._used_bdat,
            authenticated_as=self.authenticated_as,
        )

    def _collector(self, *, dot_stuffed: bool) -> BodyCollector:
        s = self.settings
        return BodyCollector(s.max_message_size, s.spool_threshold, dot_stuffed=dot_stuffed, refuse_nul=s.refuse_nul)

    def _refuse(self, reply: Reply, size: int) -> Event:
        event = MessageRefused(self._envelope(), size, reply.text)
        self._end_transaction()
        self._error(reply)
        return event

    def _reset_transaction(self) -> None:
        self._mail = None
        self._recipients = []
        self._used_bdat = False
        self._data = None
        self._bdat_body = None
        self._bdat_size = 0
        self._bdat_remaining = 0

    def _end_transaction(self) -> None:
        self._reset_transaction()
        self.state = next_state(self.state, Trigger.TRANSACTION_ENDED)

    def _send(self, reply: Reply) -> None:
        self._out += reply.to_bytes()
        self._replies_by_digit[reply.code // 100] += 1

    def _reply(self, reply: Reply) -> None:
        """Send a reply; failures count against the session's error budget."""
        if reply.is_positive:
            self._send(reply)
        else:
            self._error(reply)

    def _error(self, reply: Reply) -> None:
        self._send(reply)
        self._count_error()

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.settings.max_errors and self.state is not State.CLOSED:
            self.close(replies.TOO_MANY_ERRORS, "too many errors")

    def _close_silently(self, reason: str) -> None:
        self._close_reason = reason
        self._pending = None
        self._in.clear()
        self._reset_transaction()
        self.state = next_state(self.state, Trigger.CLOSE)


_HANDLERS = {
    Verb.EHLO: ServerConnection._ehlo,
    Verb.HELO: ServerConnection._helo,
    Verb.MAIL: ServerConnection._mail_cmd,
    Verb.RCPT: ServerConnection._rcpt,
    Verb.DATA: ServerConnection._data_cmd,
    Verb.BDAT: ServerConnection._bdat,
    Verb.RSET: ServerConnection._rset,
    Verb.NOOP: ServerConnection._noop,
    Verb.QUIT: ServerConnection._quit,
    Verb.VRFY: ServerConnection._vrfy,
    Verb.EXPN: ServerConnection._expn,
    Verb.HELP: ServerConnection._help,
    Verb.STARTTLS: ServerConnection._starttls,
    Verb.AUTH: ServerConnection._auth_cmd,
}
