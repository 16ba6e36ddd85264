"""The milter client core fed byte transcripts: what it sends for each phase, byte for byte, and what it
makes of every reply and modification request a milter can send (Postfix's milter8.c semantics).
Every transcript runs twice: the milter's bytes fed at once and one byte at a time."""

from __future__ import annotations

import struct

import pytest

from kartero.mail.replies import MILTER_REJECTED, MILTER_SHUTDOWN, MILTER_TEMPFAILED, Reply
from kartero.milter import protocol as p
from kartero.milter.client import (
    NEED_DATA,
    Action,
    AddHeader,
    AddRecipient,
    Answer,
    ChangeFrom,
    ChangeHeader,
    DeleteRecipient,
    Failed,
    InsertHeader,
    Limits,
    MilterClient,
    Negotiated,
    Quarantine,
    ReplaceBody,
    State,
)

CONTINUE = Answer(Action.CONTINUE)
CONNECT_MACROS = {"j": "mx.example.test", "{daemon_name}": "mx.example.test", "v": "Kartero 1",
                  "{client_addr}": "192.0.2.1", "i": "S1"}  # fmt: skip
MAIL_MACROS = {**CONNECT_MACROS, "{mail_addr}": "a@example.org", "{mail_host}": "example.org", "{mail_mailer}": "smtp"}


@pytest.fixture(params=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "bytewise")


def r(command: str, data: bytes = b"") -> bytes:
    """A packet from the milter."""
    return p.packet(ord(command), data)


def z(*strings: str) -> bytes:
    return b"".join(s.encode() + b"\0" for s in strings)


def feed(client: MilterClient, data: bytes, bytewise: bool) -> object:
    """Feed the milter's bytes; the event they make (the same whether fed at once or byte by byte)."""
    if bytewise:
        for i in range(len(data)):
            client.receive_data(data[i : i + 1])
    else:
        client.receive_data(data)
    return client.next_event()


def negotiated(bytewise: bool, protocol: int = 0, actions: int = p.ACTIONS, extra: bytes = b"",
               limits: Limits | None = None) -> MilterClient:  # fmt: skip
    client = MilterClient(limits)
    client.negotiate()
    assert client.data_to_send() == b"\x00\x00\x00\x0dO" + struct.pack(">III", 6, 0x1FF, p.PROTOCOL)
    event = feed(client, r("O", struct.pack(">III", 6, actions, protocol) + extra), bytewise)
    assert event == Negotiated(6, actions, protocol)
    return client


def in_message(bytewise: bool, protocol: int = 0, limits: Limits | None = None) -> MilterClient:
    """A client past MAIL, RCPT and DATA, each answered with continue; its output discarded."""
    client = negotiated(bytewise, protocol, limits=limits)
    for call in (lambda: client.mail_from(["<a@example.org>"], MAIL_MACROS),
                 lambda: client.rcpt_to(["<b@example.test>"], MAIL_MACROS),
                 lambda: client.data(MAIL_MACROS)):  # fmt: skip
        call()
        client.data_to_send()
        assert feed(client, r("c"), bytewise) == CONTINUE
    return client


def eom(client: MilterClient, replies: bytes, bytewise: bool, max_body: int = 1000) -> object:
    client.end_of_message({"i": "Q1"}, max_body)
    assert client.data_to_send() == p.packet(p.MACRO, b"E" + z("i", "Q1")) + b"\x00\x00\x00\x01E"
    return feed(client, replies, bytewise)


# -- what goes out -------------------------------------------------------------------------------------------


def test_connect_sends_postfix_macros_then_the_connect_packet(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.connect("client.example.org", p.FAMILY_INET, 2525, "192.0.2.1", CONNECT_MACROS)
    macros = z("j", "mx.example.test", "{daemon_name}", "mx.example.test", "v", "Kartero 1")
    macros += z("{client_addr}", "192.0.2.1")
    assert client.data_to_send() == (
        b"\x00\x00\x00\x56DC" + macros + b"\x00\x00\x00\x21C" + z("client.example.org") + b"4\x09\xdd" + z("192.0.2.1")
    )
    assert client.next_event() is NEED_DATA
    assert feed(client, r("c"), bytewise) == CONTINUE


def test_helo_mail_rcpt_packets(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.helo("client.example.org", {})
    assert client.data_to_send() == b"\x00\x00\x00\x02DH" + b"\x00\x00\x00\x14H" + z("client.example.org")
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.mail_from(["<a@example.org>", "SIZE=100"], MAIL_MACROS)
    macros = z("i", "S1", "{mail_addr}", "a@example.org", "{mail_host}", "example.org", "{mail_mailer}", "smtp")
    mail = p.packet(p.MAIL, z("<a@example.org>", "SIZE=100"))
    assert client.data_to_send() == p.packet(p.MACRO, b"M" + macros) + mail
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.rcpt_to(["<b@example.test>"], {"{rcpt_addr}": "b@example.test", "i": "S1"})
    assert client.data_to_send() == (
        p.packet(p.MACRO, b"R" + z("i", "S1", "{rcpt_addr}", "b@example.test"))
        + p.packet(p.RCPT, z("<b@example.test>"))
    )
    assert feed(client, r("c"), bytewise) == CONTINUE


def test_header_eoh_body_packets_and_the_leading_space(bytewise: bool) -> None:
    client = in_message(bytewise)
    client.header(b"Subject", b" hello\n\tworld", {"i": "Q1"})
    header = p.packet(p.HEADER, z("Subject", "hello\n\tworld"))
    assert client.data_to_send() == p.packet(p.MACRO, b"L" + z("i", "Q1")) + header
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.end_of_header({"i": "Q1"})
    assert client.data_to_send() == p.packet(p.MACRO, b"N" + z("i", "Q1")) + b"\x00\x00\x00\x01N"
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.body(b"line\r\n", {"i": "Q1"})
    assert client.data_to_send() == p.packet(p.MACRO, b"B" + z("i", "Q1")) + b"\x00\x00\x00\x07Bline\r\n"
    assert feed(client, r("c"), bytewise) == CONTINUE
    assert eom(client, r("c"), bytewise) == CONTINUE


def test_hdr_leadspc_keeps_the_space_both_ways(bytewise: bool) -> None:
    client = in_message(bytewise, protocol=p.P_HDR_LEADSPC)
    client.header(b"Subject", b" hello", {})
    assert client.data_to_send().endswith(p.packet(p.HEADER, z("Subject", " hello")))
    assert feed(client, r("c"), bytewise) == CONTINUE
    answer = eom(client, r("h", z("X-A", " one")) + r("c"), bytewise)
    assert answer == Answer(Action.CONTINUE, changes=(AddHeader("X-A", "one"),))


def test_no_send_and_no_reply_flags(bytewise: bool) -> None:
    flags = p.P_NOHELO | p.P_NR_MAIL | p.P_NOHDRS | p.P_NR_EOH | p.P_NOBODY
    client = negotiated(bytewise, protocol=flags)
    client.helo("x", {})
    assert client.data_to_send() == b"\x00\x00\x00\x02DH"  # the macros still go, as Postfix sends them
    assert client.next_event() == CONTINUE
    client.mail_from(["<>"], {})
    assert client.data_to_send().endswith(p.packet(p.MAIL, z("<>")))
    assert client.next_event() == CONTINUE  # no reply awaited
    client.header(b"Subject", b"x", {"i": "Q1"})
    assert client.data_to_send() == b""  # neither macros nor the header
    assert client.next_event() == CONTINUE
    assert not client.wants(p.BODY)
    client.end_of_header({})
    assert client.data_to_send().endswith(b"\x00\x00\x00\x01N")
    assert client.next_event() == CONTINUE
    assert eom(client, r("c"), bytewise) == CONTINUE


def test_milter_macro_lists_replace_the_defaults(bytewise: bool) -> None:
    lists = struct.pack(">I", 0) + z("{client_addr} j") + struct.pack(">I", 9) + z("ignored")
    client = negotiated(bytewise, extra=lists)
    client.connect("h", p.FAMILY_INET, 1, "192.0.2.1", CONNECT_MACROS)
    macros = z("{client_addr}", "192.0.2.1", "j", "mx.example.test")
    assert client.data_to_send().startswith(p.packet(p.MACRO, b"C" + macros))
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.mail_from(["<>"], MAIL_MACROS)
    assert client.data_to_send().startswith(b"\x00\x00\x00\x02DM")  # no list for MAIL: no macros


# -- replies -------------------------------------------------------------------------------------------------------


def test_reject_and_tempfail_map_as_postfix(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.mail_from(["<a@example.org>"], {})
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.rcpt_to(["<b@example.test>"], {})
    assert feed(client, r("t"), bytewise) == Answer(Action.REFUSE, MILTER_TEMPFAILED)
    client.rcpt_to(["<c@example.test>"], {})
    assert feed(client, r("r"), bytewise) == Answer(Action.REFUSE, MILTER_REJECTED)
    assert MILTER_REJECTED.to_bytes() == b"550 5.7.1 Command rejected\r\n"
    assert MILTER_TEMPFAILED.to_bytes() == b"451 4.7.1 Service unavailable - try again later\r\n"


def test_reject_at_connect_settles_the_connection(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.connect("h", p.FAMILY_INET, 1, "192.0.2.1", {})
    client.data_to_send()
    refused = Answer(Action.REFUSE, MILTER_REJECTED)
    assert feed(client, r("r"), bytewise) == refused
    assert client.wants_close
    client.helo("x", {})
    assert client.next_event() == refused
    client.mail_from(["<>"], {})
    assert client.next_event() == refused
    assert client.data_to_send() == b""


def test_accept_at_connect_means_nothing_more_is_asked(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.connect("h", p.FAMILY_INET, 1, "192.0.2.1", {})
    client.data_to_send()
    assert feed(client, r("a"), bytewise) == Answer(Action.ACCEPT)
    client.mail_from(["<>"], {})
    assert client.next_event() == CONTINUE
    client.quit()
    assert client.data_to_send() == b""


def test_discard_at_connect_is_ignored_at_rcpt_discards_the_message(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.connect("h", p.FAMILY_INET, 1, "192.0.2.1", {})
    assert feed(client, r("d"), bytewise) == CONTINUE
    client.mail_from(["<>"], {})
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.rcpt_to(["<b@example.test>"], {})
    assert feed(client, r("d"), bytewise) == Answer(Action.DISCARD)
    client.data_to_send()
    client.data({})
    assert client.next_event() == CONTINUE
    assert client.data_to_send() == b""  # the message is settled: nothing more of it goes out
    client.abort()
    assert client.data_to_send() == b"\x00\x00\x00\x01A"


def test_shutdown_refuses_with_421(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.mail_from(["<>"], {})
    assert feed(client, r("4"), bytewise) == Answer(Action.REFUSE, MILTER_SHUTDOWN)
    assert client.wants_close


def test_replycode_multiline_with_percent(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.mail_from(["<>"], {})
    answer = feed(client, r("y", b"554-5.7.0 first 100%% sure\r\n554 5.7.0 second\0"), bytewise)
    assert answer == Answer(Action.REFUSE, Reply(554, "5.7.0", "first 100% sure\nsecond"))
    assert Reply(554, "5.7.0", "first 100% sure\nsecond").to_bytes() == (
        b"554-5.7.0 first 100% sure\r\n554 5.7.0 second\r\n"
    )


@pytest.mark.parametrize(("text", "reply"), [
    (b"550 no thanks\0", Reply(550, "5.7.1", "no thanks")),  # libmilter's smfi_setreply without an xcode
    (b"451 \0", Reply(451, "4.7.1", "Service unavailable - try again later")),
    (b"550 \0", Reply(550, "5.7.1", "Command rejected")),
])  # fmt: skip
def test_issue_13_replycode_without_an_enhanced_code_gets_the_class_default(bytewise: bool, text: bytes,
                                                                            reply: Reply) -> None:  # fmt: skip
    client = negotiated(bytewise)
    client.mail_from(["<>"], {})
    assert feed(client, r("y", text), bytewise) == Answer(Action.REFUSE, reply)


@pytest.mark.parametrize("text", [b"250 2.0.0 ok\0", b"550 4.7.1 mismatch\0", b"55\0", b"650 6.0.0 x\0",
                                  b"550 5.7.1 a\r\n451 4.7.1 b\0", b"550"])  # fmt: skip
def test_replycode_other_than_4xx_5xx_is_a_protocol_error(bytewise: bool, text: bytes) -> None:
    client = negotiated(bytewise)
    client.mail_from(["<>"], {})
    event = feed(client, r("y", text), bytewise)
    assert isinstance(event, Failed)
    assert client.state is State.FAILED
    client.abort()
    client.rcpt_to(["<b@example.test>"], {})
    assert isinstance(client.next_event(), Failed)  # a failed milter is not spoken to again
    assert client.data_to_send() == b""


def test_progress_keeps_waiting_but_bounded(bytewise: bool) -> None:
    client = negotiated(bytewise, limits=Limits(max_progress=3))
    client.mail_from(["<>"], {})
    assert feed(client, r("p") * 3, bytewise) is NEED_DATA
    assert feed(client, r("c"), bytewise) == CONTINUE
    client.rcpt_to(["<b@example.test>"], {})
    assert isinstance(feed(client, r("p") * 4, bytewise), Failed)


def test_skip_stops_body_chunks(bytewise: bool) -> None:
    client = in_message(bytewise, protocol=p.P_SKIP)
    client.body(b"one\r\n", {})
    client.data_to_send()
    assert feed(client, r("s"), bytewise) == CONTINUE
    assert not client.wants(p.BODY)
    client.body(b"two\r\n", {})
    assert client.next_event() == CONTINUE
    assert client.data_to_send() == b""
    assert eom(client, r("c"), bytewise) == CONTINUE


def test_accept_at_eoh_settles_the_message(bytewise: bool) -> None:
    client = in_message(bytewise)
    client.end_of_header({})
    client.data_to_send()
    assert feed(client, r("a"), bytewise) == Answer(Action.ACCEPT)
    assert not client.wants(p.BODY)
    client.abort()
    assert client.data_to_send() == b"\x00\x00\x00\x01A"
    client.mail_from(["<>"], {})  # the next transaction is asked again
    assert client.data_to_send().endswith(p.packet(p.MAIL, z("<>")))


# -- modification requests at the end of the message -------------------------------------------------------------


def test_every_modification_comes_back_in_order(bytewise: bool) -> None:
    client = in_message(bytewise)
    replies = (
        r("h", z("X-Added", "one\n\ttwo"))
        + r("i", struct.pack(">I", 0) + z("X-Top", "first"))
        + r("m", struct.pack(">I", 0) + z("Subject", "new"))
        + r("m", struct.pack(">I", 2) + z("X-Gone", ""))
        + r("+", z("<new@example.test>"))
        + r("2", z("<par@example.test>", "NOTIFY=NEVER ORCPT=rfc822;x@example.test"))
        + r("-", z("<b@example.test>"))
        + r("e", z("<sender@example.org>", "SIZE=10"))
        + r("e", z("<>"))
        + r("q", z("looks bad"))
        + r("b", b"new body\nline two\r\nno end")
        + r("b", b" yet\n")
        + r("a")
    )
    answer = eom(client, replies, bytewise)
    assert answer == Answer(Action.ACCEPT, changes=(
        AddHeader("X-Added", "one\r\n\ttwo"),
        InsertHeader(0, "X-Top", "first"),
        ChangeHeader(1, "Subject", "new"),
        ChangeHeader(2, "X-Gone", ""),
        AddRecipient("new@example.test"),
        AddRecipient("par@example.test", ("NOTIFY=NEVER", "ORCPT=rfc822;x@example.test")),
        DeleteRecipient("b@example.test"),
        ChangeFrom("sender@example.org", ("SIZE=10",)),
        ChangeFrom(""),
        Quarantine("looks bad"),
        ReplaceBody(b"new body\r\nline two\r\nno end yet\r\n"),
    ))  # fmt: skip
    client.mail_from(["<>"], {})  # the transaction ended with the exchange: no ABORT first
    assert client.data_to_send().startswith(b"\x00\x00\x00\x02DM")


def test_changes_are_dropped_when_the_final_reply_refuses(bytewise: bool) -> None:
    client = in_message(bytewise)
    assert eom(client, r("h", z("X-A", "1")) + r("r"), bytewise) == Answer(Action.REFUSE, MILTER_REJECTED)


def test_a_header_value_cannot_start_a_new_field(bytewise: bool) -> None:
    client = in_message(bytewise)
    answer = eom(client, r("h", z("X-A", "one\nBcc: victim@example.org\n\nbody\n")) + r("c"), bytewise)
    # no blank continuation line either (review: some readers take it for the end of the header)
    folded = AddHeader("X-A", "one\r\n Bcc: victim@example.org\r\n body")
    assert answer == Answer(Action.CONTINUE, changes=(folded,))


def test_issue_13_control_characters_never_reach_a_stored_field(bytewise: bool) -> None:
    client = in_message(bytewise)
    answer = eom(client, r("h", z("X-A", "a\x0bb\x0cc\x7f\n\t\x1bd")) + r("c"), bytewise)
    assert answer == Answer(Action.CONTINUE, changes=(AddHeader("X-A", "abc\r\n\td"),))


@pytest.mark.parametrize(("replies", "limits", "max_body"), [
    (r("b", b"x" * 600) + r("b", b"x" * 600) + r("c"), None, 1000),  # replaced body over the size limit
    (r("b", b"a") + r("h", z("X", "y")) + r("b", b"b") + r("c"), None, 1000),  # body interrupted
    (r("h", z("X", "y")) * 4 + r("c"), Limits(max_changes=3), 1000),  # too many changes
    (r("h", z("X", "y" * 200)) + r("c"), Limits(max_field_bytes=100), 1000),  # header field too big
    (r("h", z("Bad Name", "y")) + r("c"), None, 1000),  # not a field name
    (r("h", z("X")) + r("c"), None, 1000),  # value missing
    (r("h", z("X", "y", "z")) + r("c"), None, 1000),  # data left over
    (r("+", z("<a b@example.test>")) + r("c"), None, 1000),  # not an address
    (r("i", b"\0\0") + r("c"), None, 1000),  # too short for the index
    (r("f") + r("c"), None, 1000),  # SMFIR_CONN_FAIL: Postfix calls it unexpected too
    (r("c", b"x"), None, 1000),  # continue with data
    (r("Z"), None, 1000),  # no such reply
])  # fmt: skip
def test_bad_end_of_message_replies_fail_the_milter(bytewise: bool, replies: bytes, limits: Limits | None,
                                                    max_body: int) -> None:  # fmt: skip
    client = in_message(bytewise, limits=limits)
    assert isinstance(eom(client, replies, bytewise, max_body), Failed)


def test_modifications_before_the_end_of_message_are_a_protocol_error(bytewise: bool) -> None:
    client = in_message(bytewise)
    client.end_of_header({})
    assert isinstance(feed(client, r("h", z("X-A", "1")), bytewise), Failed)


# -- the connection ------------------------------------------------------------------------------------------------


def test_a_huge_length_fails_before_any_buffering() -> None:
    client = negotiated(False)
    client.mail_from(["<>"], {})
    client.receive_data(b"\x7f\xff\xff\xff")
    assert isinstance(client.next_event(), Failed)
    client.receive_data(b"x" * 100_000)
    assert client._reader.pending <= 4


def test_zero_length_packet_fails(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.mail_from(["<>"], {})
    assert isinstance(feed(client, b"\0\0\0\0", bytewise), Failed)


@pytest.mark.parametrize("reply", [
    r("O", struct.pack(">III", 7, p.ACTIONS, 0)),  # a newer protocol
    r("O", struct.pack(">III", 6, 1 << 9, 0)),  # an action we did not offer
    r("O", struct.pack(">II", 6, 0)),  # short
    r("O", struct.pack(">IIII", 6, 0, 0, 0)),  # a macro list without its string
    r("c"),  # not an OPTNEG reply
])  # fmt: skip
def test_bad_negotiation(bytewise: bool, reply: bytes) -> None:
    client = MilterClient()
    client.negotiate()
    assert isinstance(feed(client, reply, bytewise), Failed)


def test_milter_closing_mid_exchange_fails_and_stays_failed() -> None:
    client = negotiated(False)
    client.mail_from(["<>"], {})
    client.receive_data(b"\0\0")
    client.receive_data(b"")
    assert isinstance(client.next_event(), Failed)
    client.abort()
    assert client.data_to_send() == b""


def test_milter_closing_between_exchanges_fails_the_next_phase() -> None:
    client = negotiated(False)
    client.receive_data(b"")
    client.helo("x", {})
    assert isinstance(client.next_event(), Failed)


def test_unsolicited_replies_fail_the_next_phase(bytewise: bool) -> None:
    client = negotiated(bytewise)
    client.mail_from(["<>"], {})
    assert feed(client, r("c") + r("c"), bytewise) == CONTINUE
    client.rcpt_to(["<b@example.test>"], {})
    assert isinstance(client.next_event(), Failed)


def test_abort_and_quit() -> None:
    client = negotiated(False)
    client.abort()
    assert client.data_to_send() == b""  # no transaction: nothing to abort
    client.mail_from(["<>"], {})
    client.data_to_send()
    assert feed(client, r("c"), False) == CONTINUE
    client.abort()
    assert client.data_to_send() == b"\x00\x00\x00\x01A"
    client.mail_from(["<>"], {})
    client.data_to_send()
    assert feed(client, r("c"), False) == CONTINUE
    client.mail_from(["<>"], {})  # a transaction the adapter did not end is aborted first
    assert client.data_to_send().startswith(b"\x00\x00\x00\x01A")
    assert feed(client, r("c"), False) == CONTINUE
    client.quit()
    assert client.data_to_send() == b"\x00\x00\x00\x01Q"
    assert client.wants_close
