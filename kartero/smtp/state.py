"""States of an SMTP server session and the one table of legal transitions.

Theory of operation: a session starts CONNECTED (greeting sent). EHLO/HELO moves it to READY; MAIL,
once policy accepts it, to IN_TRANSACTION, where RCPTs collect recipients. DATA moves to IN_DATA until
<CRLF>.<CRLF>; BDAT moves to IN_BDAT for exactly the announced number of octets. A finished or failed
message, RSET, or a new EHLO returns to READY. STARTTLS moves to AWAITING_TLS, where every byte is
dropped until the adapter reports the handshake, and then back to CONNECTED: RFC 3207 §4.2 says the
client must forget everything and say EHLO again. CLOSED is final.

Whether the core is waiting for the adapter's decision (on MAIL, RCPT or a finished message) is not a
state of its own: the core keeps the pending event and processes no input until it is answered.
"""

from __future__ import annotations

from enum import Enum, auto


class State(Enum):
    CONNECTED = auto()
    READY = auto()
    IN_TRANSACTION = auto()
    IN_DATA = auto()
    IN_BDAT = auto()
    AWAITING_TLS = auto()
    CLOSED = auto()


class Trigger(Enum):
    HELLO = auto()
    MAIL_ACCEPTED = auto()
    DATA_STARTED = auto()
    BDAT_STARTED = auto()
    CHUNK_DONE = auto()  # a non-final BDAT chunk was read and accepted
    TRANSACTION_ENDED = auto()  # message stored or refused, RSET, or a failed chunk
    STARTTLS = auto()
    TLS_ESTABLISHED = auto()
    CLOSE = auto()


class ProtocolViolation(Exception):
    """The adapter (not the peer) used the core wrongly, e.g. answered when nothing was asked."""


_ANY_OPEN = tuple(s for s in State if s is not State.CLOSED)

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.CONNECTED, Trigger.HELLO): State.READY,
    (State.READY, Trigger.HELLO): State.READY,
    (State.IN_TRANSACTION, Trigger.HELLO): State.READY,  # EHLO mid-transaction is an implicit RSET
    (State.READY, Trigger.MAIL_ACCEPTED): State.IN_TRANSACTION,
    (State.IN_TRANSACTION, Trigger.DATA_STARTED): State.IN_DATA,
    (State.IN_TRANSACTION, Trigger.BDAT_STARTED): State.IN_BDAT,
    (State.IN_BDAT, Trigger.CHUNK_DONE): State.IN_TRANSACTION,
    (State.IN_DATA, Trigger.TRANSACTION_ENDED): State.READY,
    (State.IN_BDAT, Trigger.TRANSACTION_ENDED): State.READY,
    (State.IN_TRANSACTION, Trigger.TRANSACTION_ENDED): State.READY,
    (State.READY, Trigger.TRANSACTION_ENDED): State.READY,
    (State.CONNECTED, Trigger.TRANSACTION_ENDED): State.CONNECTED,
    (State.READY, Trigger.STARTTLS): State.AWAITING_TLS,
    (State.AWAITING_TLS, Trigger.TLS_ESTABLISHED): State.CONNECTED,
    **{(state, Trigger.CLOSE): State.CLOSED for state in _ANY_OPEN},
}


def next_state(state: State, trigger: Trigger) -> State:
    """The state after `trigger`; raises ProtocolViolation for a transition the table lacks."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise ProtocolViolation(f"{trigger.name} is not allowed in state {state.name}") from None
