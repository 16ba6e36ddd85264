"""The MTA side of one milter connection, sans-I/O: commands out, replies in, answers as values.

Theory of operation. The adapter makes a `MilterClient`, calls `negotiate()`, writes `data_to_send()`,
and feeds what the milter sends to `receive_data()` (b"" when it closed) until `next_event()` is no
longer `NEED_DATA`: a `Negotiated`, an `Answer` or a `Failed`. Then, for each SMTP phase, one call
(`connect`, `helo`, `mail_from`, `rcpt_to`, `data`, `header`, `end_of_header`, `body`,
`end_of_message`) and the same loop. A phase the milter asked not to see (SMFIP_NO*), one it said it will
not answer (SMFIP_NR_*), one it skipped (SMFIR_SKIP), or any phase after the milter settled the
connection or the message (accept, discard, reject at connect) answers at once without waiting; the
macros of a phase go out before it, as Postfix sends them. `abort()` ends a transaction that had no
completed end-of-message exchange; `quit()` ends the session. Neither waits for a reply.

Semantics follow Postfix's milter8.c: reject → 550 5.7.1, tempfail → 451 4.7.1, a custom reply as
given (4xx/5xx only); reject, tempfail, a custom reply or accept at connect or HELO settle the whole
connection (and the milter is spoken to no more: Postfix closes the socket there); discard there is
ignored. Modification requests are allowed only in the end-of-message exchange and are collected until
its final reply; they come back only with a final continue or accept.

Anything the milter sends that the protocol does not allow — a bad length, an unknown or misplaced
reply, a malformed field, more data than any limit — makes the client `Failed` for good; no exception
leaves this module for any input from the milter.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kartero.mail.replies import MILTER_REJECTED, MILTER_SHUTDOWN, MILTER_TEMPFAILED, Reply
from kartero.milter import protocol as p
from kartero.milter.protocol import Fields, PacketReader, ProtocolError

# -- what the client answers ------------------------------------------------------------------------------


class Action(enum.Enum):
    CONTINUE = "continue"
    ACCEPT = "accept"  # no more questions about this message (at connect/HELO: this connection)
    REFUSE = "refuse"  # `reply` says how (reject, tempfail, custom reply, shutdown)
    DISCARD = "discard"  # accept the message and deliver it to nobody


@dataclass(frozen=True, slots=True)
class AddHeader:
    name: str
    value: str  # as the stored field's value after "name: ", lines joined by CRLF + blank


@dataclass(frozen=True, slots=True)
class InsertHeader:
    index: int  # among the fields the milter saw: 0 = at the top (see R_INSHEADER below)
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    index: int  # 1-based occurrence of `name`
    name: str
    value: str  # "" deletes the field


@dataclass(frozen=True, slots=True)
class AddRecipient:
    address: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    address: str


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    body: bytes  # CRLF line ends


@dataclass(frozen=True, slots=True)
class ChangeFrom:
    address: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


Modification = (
    AddHeader | InsertHeader | ChangeHeader | AddRecipient | DeleteRecipient | ReplaceBody | ChangeFrom | Quarantine
)


@dataclass(frozen=True, slots=True)
class Answer:
    action: Action
    reply: Reply | None = None  # with REFUSE
    changes: tuple[Modification, ...] = ()  # only from end_of_message, with CONTINUE or ACCEPT


@dataclass(frozen=True, slots=True)
class Negotiated:
    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Failed:
    detail: str


class NeedData:
    """More bytes from the milter are needed before the next event."""


NEED_DATA = NeedData()
Event = Negotiated | Answer | Failed | NeedData

CONTINUE = Answer(Action.CONTINUE)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one milter may make us hold. Each bounds memory per session, whatever the milter sends."""

    max_packet_bytes: int = 1 << 20  # one reply packet (a REPLBODY chunk is at most this)
    max_changes: int = 1000  # modification requests in one end-of-message exchange
    max_field_bytes: int = 65536  # one added or changed header field, name and value
    max_progress: int = 100  # SMFIR_PROGRESS replies while waiting for one answer


class State(enum.Enum):
    START = "start"  # nothing sent yet: negotiate() comes first
    NEGOTIATING = "negotiating"  # OPTNEG sent, its reply awaited
    READY = "ready"  # the next phase may be sent
    AWAITING = "awaiting"  # a phase was sent, its answer awaited
    CLOSED = "closed"  # quit, or the connection was settled at connect/HELO: nothing more is sent
    FAILED = "failed"


_CONNECTION_EVENTS = (p.CONNECT, p.HELO)
_MESSAGE_EVENTS = (p.DATA, p.HEADER, p.END_OF_HEADER, p.BODY, p.END_OF_MESSAGE)
# Which macro list goes with which event: a header is sent with the end-of-header macros and a body
# chunk with the end-of-message ones, as Postfix does.
_MACRO_LIST = {p.HEADER: p.END_OF_HEADER, p.BODY: p.END_OF_MESSAGE}
_NAME_BYTES = frozenset(range(33, 127)) - {ord(":")}


class MilterClient:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.state = State.START
        self.version = 0
        self.protocol = 0  # the milter's SMFIP_* flags (only those we offered)
        self._reader = PacketReader(self.limits.max_packet_bytes)
        self._out = bytearray()
        self._pending: Answer | Negotiated | Failed | None = None
        self._failure = ""
        self._peer_closed = False
        self._macro_lists: dict[int, tuple[str, ...]] = dict(p.DEFAULT_MACROS)
        self._settled: Answer | None = None  # the answer for the rest of the connection
        self._in_transaction = False
        self._message_settled = False  # accept/discard/refusal for this message: no more of its events
        self._skip: int | None = None
        self._awaiting = 0
        self._progress = 0
        self._max_body = 0
        self._changes: list[Modification | None] = []
        self._body: bytearray | None = None
        self._body_index = -1  # where ReplaceBody goes in the changes
        self._body_done = False  # another request followed the body chunks

    # -- I/O for the adapter ---------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def output_size(self) -> int:
        """Octets waiting for `data_to_send` (commands the milter answers no reply to may wait there)."""
        return len(self._out)

    def receive_data(self, data: bytes) -> None:
        """What the milter sent; b"" when it closed the connection."""
        if self.state is State.FAILED:
            return
        if not data:
            self._peer_closed = True
            if self.state in (State.AWAITING, State.NEGOTIATING):
                self._fail("the milter closed the connection")
            return
        if self.state not in (State.AWAITING, State.NEGOTIATING):
            if self._reader.pending + len(data) > self.limits.max_packet_bytes:
                self._fail("the milter sent data nobody asked for")
            else:
                self._reader.feed(data)  # looked at when the next phase starts
            return
        self._reader.feed(data)
        try:
            while self.state in (State.AWAITING, State.NEGOTIATING):
                packet = self._reader.next_packet()
                if packet is None:
                    return
                self._handle(*packet)
        except (ProtocolError, ValueError) as exc:  # ValueError: a Reply the milter's text cannot make
            self._fail(str(exc))

    def next_event(self) -> Event:
        if self._pending is not None:
            event, self._pending = self._pending, None
            return event
        return NEED_DATA

    @property
    def settled(self) -> Answer | None:
        """The answer for the rest of the connection, once the milter gave one at connect or HELO."""
        return self._settled

    def wants(self, command: int) -> bool:
        """Whether an event of this kind would reach the milter now (the body is worth reading)."""
        if self.state is not State.READY or self._settled is not None or self._peer_closed:
            return False
        if self._message_settled and command in (p.RCPT, *_MESSAGE_EVENTS):
            return False
        return not (self._skip == command or self.protocol & p.NO_SEND.get(command, 0))

    def fail(self, detail: str) -> None:
        """The adapter lost the milter (timeout, I/O error): nothing more is sent."""
        if self.state is not State.FAILED:
            self._fail(detail)
        self._pending = None

    @property
    def progress(self) -> int:
        """SMFIR_PROGRESS replies while waiting for the current answer (each one restarts the adapter's
        wait, as in Postfix)."""
        return self._progress

    @property
    def wants_close(self) -> bool:
        """Nothing more will be sent: the adapter may close the connection."""
        return self.state in (State.CLOSED, State.FAILED)

    # -- phases -----------------------------------------------------------------------------------------------

    def negotiate(self) -> None:
        self._require(State.START)
        self._out += p.optneg()
        self.state = State.NEGOTIATING

    def connect(self, hostname: str, family: int, port: int, address: str, macros: Mapping[str, str]) -> None:
        self._event(p.CONNECT, p.connect(hostname, family, port, address), macros)

    def helo(self, name: str, macros: Mapping[str, str]) -> None:
        self._event(p.HELO, p.strings(p.HELO, [name]), macros)

    def mail_from(self, args: Sequence[str], macros: Mapping[str, str]) -> None:
        """`args`: "<sender>" then the ESMTP parameters, as Postfix sends them."""
        if self._in_transaction and self.state is State.READY and self._settled is None:
            self.abort()  # a transaction the adapter did not end: the milter must not mix two
        self._event(p.MAIL, p.strings(p.MAIL, args), macros)
        self._in_transaction = True

    def rcpt_to(self, args: Sequence[str], macros: Mapping[str, str]) -> None:
        self._event(p.RCPT, p.strings(p.RCPT, args), macros)

    def data(self, macros: Mapping[str, str]) -> None:
        self._event(p.DATA, p.packet(p.DATA), macros)

    def header(self, name: bytes, value: bytes, macros: Mapping[str, str]) -> None:
        """One header field: `value` as after the colon, lines joined by "\\n" (MessageSplitter's)."""
        if not self.protocol & p.P_HDR_LEADSPC and value.startswith(b" "):
            value = value[1:]  # sendmail eats one space after the colon unless the milter wants it
        self._event(p.HEADER, p.strings(p.HEADER, [name, value]), macros)

    def end_of_header(self, macros: Mapping[str, str]) -> None:
        self._event(p.END_OF_HEADER, p.packet(p.END_OF_HEADER), macros)

    def body(self, chunk: bytes, macros: Mapping[str, str]) -> None:
        if not 0 < len(chunk) <= p.BODY_CHUNK:
            raise ValueError(f"body chunk of {len(chunk)} octets")
        self._event(p.BODY, p.packet(p.BODY, chunk), macros)

    def end_of_message(self, macros: Mapping[str, str], max_body_bytes: int) -> None:
        """The end of the message; a replaced body may be up to `max_body_bytes` (the message size limit)."""
        self._max_body = max_body_bytes
        self._changes = []
        self._body = None
        self._body_index = -1
        self._body_done = False
        self._event(p.END_OF_MESSAGE, p.packet(p.END_OF_MESSAGE), macros)
        if self.state is not State.AWAITING:
            self._end_transaction()

    def abort(self) -> None:
        """The transaction ended without a completed end-of-message exchange (RSET, a refused message...)."""
        self._require(State.READY, State.CLOSED, State.FAILED)
        if self.state is State.READY and self._in_transaction and self._settled is None:
            self._out += p.packet(p.ABORT)
        self._end_transaction()

    def quit(self) -> None:
        if self.state is State.READY:
            self._out += p.packet(p.QUIT)
        if self.state is not State.FAILED:
            self.state = State.CLOSED

    # -- internals ------------------------------------------------------------------------------------------------

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise RuntimeError(f"milter client used in state {self.state.name}")  # an adapter bug

    def _event(self, command: int, packet: bytes, values: Mapping[str, str]) -> None:
        self._require(State.READY, State.CLOSED, State.FAILED)
        if self._pending is not None:
            raise RuntimeError("the previous event was not taken")
        if self.state is State.FAILED:
            self._pending = Failed(self._failure)
            return
        if self._settled is not None:
            self._pending = self._settled
            return
        if self.state is State.CLOSED or self._peer_closed:
            self._fail("the milter closed the connection")
            self._pending = Failed(self._failure)
            return
        if self._reader.pending:
            self._fail("the milter sent data nobody asked for")
            self._pending = Failed(self._failure)
            return
        if self._message_settled and command in (p.RCPT, *_MESSAGE_EVENTS):
            self._pending = CONTINUE
            return
        if self._skip is not None:
            if self._skip == command:
                self._pending = CONTINUE
                return
            self._skip = None
        if command in (p.HEADER, p.END_OF_HEADER, p.BODY) and self.protocol & p.NO_SEND[command]:
            self._pending = CONTINUE  # Postfix does not even look at these parts then: no macros either
            return
        names = self._macro_lists.get(_MACRO_LIST.get(command, command))
        if names is not None:
            self._out += p.macros(command, _lookup(names, values))
        if self.protocol & p.NO_SEND.get(command, 0):
            self._pending = CONTINUE
            return
        self._out += packet
        if self.protocol & p.NO_REPLY.get(command, 0):
            self._pending = CONTINUE
            return
        self.state = State.AWAITING
        self._awaiting = command
        self._progress = 0

    def _fail(self, detail: str) -> None:
        self.state = State.FAILED
        self._failure = detail
        self._pending = Failed(detail)
        self._out.clear()

    def _answer(self, answer: Answer) -> None:
        self.state = State.READY
        self._pending = answer

    def _end_transaction(self) -> None:
        self._in_transaction = False
        self._message_settled = False
        self._skip = None

    def _handle(self, command: int, data: bytes) -> None:
        if self.state is State.NEGOTIATING:
            self._negotiated(command, data)
            return
        event = self._awaiting
        if command in (p.R_PROGRESS, p.R_CONTINUE, p.R_ACCEPT, p.R_DISCARD, p.R_REJECT, p.R_TEMPFAIL,
                       p.R_SHUTDOWN, p.R_SKIP) and data:  # fmt: skip
            raise ProtocolError(f"reply {chr(command)!r} with {len(data)} data octets")
        if event == p.END_OF_MESSAGE and self._body is not None and command != p.R_REPLBODY:
            self._body_done = True
        match command:
            case p.R_PROGRESS:
                self._progress += 1
                if self._progress > self.limits.max_progress:
                    raise ProtocolError(f"more than {self.limits.max_progress} progress replies")
            case p.R_CONTINUE:
                self._final(Answer(Action.CONTINUE))
            case p.R_ACCEPT:
                if event in _CONNECTION_EVENTS:
                    self._settle(Answer(Action.ACCEPT), CONTINUE)
                else:
                    self._final(Answer(Action.ACCEPT), settles_message=True)
            case p.R_DISCARD:
                if event in _CONNECTION_EVENTS:
                    self._final(CONTINUE)  # Postfix: "DISCARD action is not allowed for connect or helo"
                else:
                    self._final(Answer(Action.DISCARD), settles_message=True)
            case p.R_REJECT | p.R_TEMPFAIL | p.R_REPLYCODE:
                if command == p.R_REPLYCODE:
                    reply = p.parse_replycode(data)
                else:
                    reply = MILTER_REJECTED if command == p.R_REJECT else MILTER_TEMPFAILED
                refuse = Answer(Action.REFUSE, reply)
                if event in _CONNECTION_EVENTS:
                    self._settle(refuse, refuse)
                else:
                    self._final(refuse, settles_message=event in _MESSAGE_EVENTS or event == p.MAIL)
            case p.R_SHUTDOWN:
                refuse = Answer(Action.REFUSE, MILTER_SHUTDOWN)
                self._settle(refuse, refuse)
            case p.R_SKIP:
                self._skip = event
                self._final(CONTINUE)
            case _ if event == p.END_OF_MESSAGE:
                self._modification(command, data)
            case _:
                name = p.COMMAND_NAMES.get(event, "?")
                raise ProtocolError(f"unexpected reply {chr(command)!r} to {name}")

    def _negotiated(self, command: int, data: bytes) -> None:
        if command != p.OPTNEG:
            raise ProtocolError(f"reply {chr(command)!r} to option negotiation")
        fields = Fields(data)
        version, actions, protocol = fields.uint32(), fields.uint32(), fields.uint32()
        if not 2 <= version <= p.VERSION:
            raise ProtocolError(f"milter protocol version {version} (we speak 2 to {p.VERSION})")
        if actions & ~p.ACTIONS:
            raise ProtocolError(f"milter asks for actions 0x{actions:x} beyond ours 0x{p.ACTIONS:x}")
        if fields.remaining:
            # Postfix: a milter that names any macro list gets no macros at the stages it leaves out.
            self._macro_lists = {stage: () for stage in p.MACRO_STAGES}
            self._macro_lists.update(p.parse_macro_lists(fields))
        self.version, self.protocol = version, protocol & p.PROTOCOL
        self.state = State.READY
        self._pending = Negotiated(version, actions, self.protocol)

    def _settle(self, now: Answer, later: Answer) -> None:
        """The milter decided for the whole connection: answer `now`, and `later` to every later phase
        without asking again. Postfix closes the connection to the milter at this point."""
        self._settled = later
        self._answer(now)
        self.state = State.CLOSED

    def _final(self, answer: Answer, settles_message: bool = False) -> None:
        event = self._awaiting
        if event == p.END_OF_MESSAGE:
            changes = self._collected() if answer.action in (Action.CONTINUE, Action.ACCEPT) else ()
            self._end_transaction()
            self._answer(Answer(answer.action, answer.reply, changes))
            return
        if settles_message:
            self._message_settled = True
        self._answer(answer)

    def _collected(self) -> tuple[Modification, ...]:
        if self._body is not None:
            self._changes[self._body_index] = ReplaceBody(_crlf_body(bytes(self._body)))
        return tuple(c for c in self._changes if c is not None)

    def _modification(self, command: int, data: bytes) -> None:
        if len(self._changes) >= self.limits.max_changes:
            raise ProtocolError(f"more than {self.limits.max_changes} modification requests")
        fields = Fields(data)
        change: Modification
        match command:
            case p.R_ADDHEADER:
                name, value = fields.string(), fields.string()
                change = AddHeader(self._field_name(name), self._field_value(name, value))
            case p.R_INSHEADER:
                index, name, value = fields.uint32(), fields.string(), fields.string()
                # Postfix (and sendmail) count their own Received: field, the top one, which the milter
                # never saw: the milter's index 1 is before the first field it saw, 0 above even that.
                # Kartero adds its trace fields after the filters ran, so both mean "the top".
                change = InsertHeader(max(index - 1, 0), self._field_name(name), self._field_value(name, value))
            case p.R_CHGHEADER:
                index, name, value = fields.uint32(), fields.string(), fields.string()
                # sendmail compatibility (Postfix too): index 0 means the first occurrence
                change = ChangeHeader(max(index, 1), self._field_name(name), self._field_value(name, value))
            case p.R_ADDRCPT:
                change = AddRecipient(_address(fields.string()))
            case p.R_ADDRCPT_PAR:
                address = _address(fields.string())
                change = AddRecipient(address, _params(fields.string()) if fields.remaining else ())
            case p.R_DELRCPT:
                change = DeleteRecipient(_address(fields.string()))
            case p.R_CHGFROM:
                address = _address(fields.string(), allow_null=True)
                change = ChangeFrom(address, _params(fields.string()) if fields.remaining else ())
            case p.R_QUARANTINE:
                reason = fields.string() if fields.remaining else b""
                change = Quarantine(_text(reason))
            case p.R_REPLBODY:
                self._body_chunk(data)
                return
            case _:
                raise ProtocolError(f"unexpected reply {chr(command)!r} to eom")
        fields.end()
        self._changes.append(change)

    def _body_chunk(self, data: bytes) -> None:
        if self._body_done:
            # Postfix: "body replacement requests can't currently be mixed with other requests"
            raise ProtocolError("body replacement interrupted by another request")
        if self._body is None:
            self._body = bytearray()
            self._body_index = len(self._changes)
            self._changes.append(None)
        if len(self._body) + len(data) > self._max_body:
            raise ProtocolError(f"replaced body over {self._max_body} octets")
        self._body += data

    def _field_name(self, raw: bytes) -> str:
        if not raw or len(raw) > 998 or any(b not in _NAME_BYTES for b in raw):
            raise ProtocolError("bad header field name")
        return raw.decode("ascii")

    def _field_value(self, name: bytes, raw: bytes) -> str:
        if len(name) + len(raw) > self.limits.max_field_bytes:
            raise ProtocolError(f"header field over {self.limits.max_field_bytes} octets")
        if self.protocol & p.P_HDR_LEADSPC and raw.startswith(b" "):
            raw = raw[1:]  # the milter gave the space after the colon itself; we write one
        return _folded(raw.decode("utf-8", "replace"))


def _lookup(names: Sequence[str], values: Mapping[str, str]) -> list[tuple[str, str]]:
    """(name, value) for each macro we know, under the name the list gives ("{x}" or "x")."""
    pairs = []
    for name in names:
        bare = name[1:-1] if name.startswith("{") and name.endswith("}") else name
        value = values.get(name, values.get(bare, values.get("{" + bare + "}")))
        if value is not None:
            pairs.append((name, value))
    return pairs


def _folded(value: str) -> str:
    """A header value from a milter with its line breaks ("\\n", as libmilter milters write them, or
    CRLF) as CRLF. A line that would not start with a blank gets one, so a value can never end the field
    and start another (or end the header) in the stored message."""
    value = value.translate(_CONTROLS)  # C0 controls but tab and LF, and DEL: never in a stored field
    lines = value.replace("\r\n", "\n").replace("\r", " ").rstrip("\n").split("\n")
    # An empty or blank continuation line is dropped: some readers take a blank line for the header's end.
    folded = [line if line[:1] in (" ", "\t") else " " + line for line in lines[1:] if line.strip(" \t")]
    return "\r\n".join([lines[0], *folded])


_CONTROLS = {c: None for c in [*range(0x00, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), 0x7F]}


def _crlf_body(body: bytes) -> bytes:
    """The replaced body with CRLF line ends, as Postfix stores it: lines split at LF (one CR before it
    dropped), and a last line without an end gets one."""
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


def _address(raw: bytes, allow_null: bool = False) -> str:
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if (not text and not allow_null) or len(text) > 998 or any(c in text for c in " <>\t") or not text.isprintable():
        raise ProtocolError("bad address in a recipient or sender change")
    return text


def _params(raw: bytes) -> tuple[str, ...]:
    params = tuple(raw.decode("utf-8", "replace").split())
    if len(params) > 32 or any(not param.isprintable() for param in params):
        raise ProtocolError("bad ESMTP parameters in a change")
    return params


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")[:1000]
