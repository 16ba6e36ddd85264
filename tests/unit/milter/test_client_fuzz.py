"""Hypothesis against the milter client core: random bytes and random well-formed reply packets, at every
phase, fed whole or in random pieces. The only outcomes allowed are events (an answer, a failure,
waiting for more); nothing raises, and the core never holds more than one packet's worth of input."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.milter import protocol as p
from kartero.milter.client import NEED_DATA, Action, Answer, Failed, Limits, MilterClient, Negotiated, State

LIMITS = Limits(max_packet_bytes=4096, max_changes=20, max_field_bytes=512, max_progress=5)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REPLIES = [ord(c) for c in "+-24abcdefhilmpqrsty"] + [ord("O"), 0, 255]
PHASES = ["negotiate", "connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom"]


def _payloads() -> st.SearchStrategy[bytes]:
    text = st.sampled_from([b"", b"X-A", b"<a@example.org>", b"550 5.7.1 no", b"451-4.7.1 a\r\n451 4.7.1 b",
                            b"v\n\tw", b"SIZE=1 BODY=8BITMIME", b"\xff\xfe", b"%s%%"])  # fmt: skip
    field = st.one_of(text.map(lambda t: t + b"\0"), st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
                      st.binary(max_size=12))  # fmt: skip
    return st.lists(field, max_size=4).map(b"".join)


packets = st.lists(st.tuples(st.sampled_from(REPLIES), _payloads()), max_size=8).map(
    lambda items: b"".join(p.packet(c, d) for c, d in items)
)


def _client_at(phase: str) -> MilterClient:
    client = MilterClient(LIMITS)
    client.negotiate()
    if phase == "negotiate":
        return client
    client.receive_data(p.packet(p.OPTNEG, struct.pack(">III", 6, p.ACTIONS, p.P_SKIP)))
    assert isinstance(client.next_event(), Negotiated)
    steps = {
        "connect": lambda: client.connect("h", p.FAMILY_INET, 25, "192.0.2.1", {"j": "mx"}),
        "helo": lambda: client.helo("h", {}),
        "mail": lambda: client.mail_from(["<a@example.org>"], {}),
        "rcpt": lambda: client.rcpt_to(["<b@example.test>"], {}),
        "data": lambda: client.data({}),
        "header": lambda: client.header(b"Subject", b" x", {}),
        "eoh": lambda: client.end_of_header({}),
        "body": lambda: client.body(b"x\r\n", {}),
        "eom": lambda: client.end_of_message({}, 1000),
    }
    order = PHASES[1:]
    for name in order[: order.index(phase)]:
        steps[name]()
        client.data_to_send()
        client.receive_data(p.packet(p.R_CONTINUE))
        assert client.next_event() == Answer(Action.CONTINUE)
    steps[phase]()
    client.data_to_send()
    return client


def _drive(client: MilterClient, data: bytes, cuts: list[int]) -> None:
    pieces, start = [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    for piece in pieces:
        if piece:
            client.receive_data(piece)
        assert client._reader.pending <= LIMITS.max_packet_bytes + 4
        while True:
            event = client.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, Answer | Failed | Negotiated)
            if isinstance(event, Failed) or client.state is not State.AWAITING:
                break
    client.receive_data(b"")
    event = client.next_event()
    assert event is NEED_DATA or isinstance(event, Answer | Failed | Negotiated)


@FUZZ
@given(st.sampled_from(PHASES), st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=6))
def test_random_bytes_only_make_events(phase: str, data: bytes, cuts: list[int]) -> None:
    _drive(_client_at(phase), data, cuts)


@FUZZ
@given(st.sampled_from(PHASES), packets, st.lists(st.integers(0, 10_000), max_size=6))
def test_random_packets_only_make_events(phase: str, data: bytes, cuts: list[int]) -> None:
    _drive(_client_at(phase), data, cuts)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([ord(c) for c in "+-2behimq"]), _payloads()), max_size=40))
def test_end_of_message_requests_stay_bounded(requests: list[tuple[int, bytes]]) -> None:
    client = _client_at("eom")
    client.receive_data(b"".join(p.packet(c, d) for c, d in requests) + p.packet(p.R_CONTINUE))
    event = client.next_event()
    assert isinstance(event, Answer | Failed)
    if isinstance(event, Answer):
        assert len(event.changes) <= LIMITS.max_changes
