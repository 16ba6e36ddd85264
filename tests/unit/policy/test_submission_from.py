"""Issue 8, finding 9: the author fields of submitted mail (From:, Sender:, Resent-*) must name only the
authenticated user, read strictly. Every variant is replayed against SubmissionPolicy.check_message;
tests/integration/test_submission.py sends a representative subset through smtplib."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.auth.accounts import Directory, DirectoryCache
from kartero.mail import replies
from kartero.mail.address import Path as SMTPPath
from kartero.mail.address import parse_mailbox
from kartero.policy.authorship import (
    HeaderError,
    MailboxListError,
    decode_encoded_words,
    find_addresses,
    parse_mailbox_list,
    split_fields,
)
from kartero.policy.decisions import AcceptMessage, MessageDecision, Reject
from kartero.policy.submission import SubmissionPolicy
from kartero.smtp.events import Envelope, MailParams
from kartero.store.sqlite import SQLiteStore

DOMAINS = ("example.test", "xn--bcher-kva.example")

NOT_OWNED = replies.FROM_NOT_OWNED  # 553 5.7.1
SHOWN = replies.FROM_NOT_OWNED.with_text(
    "From: header display name shows an address not owned by the authenticated user"
)
SENDER_NOT_OWNED = replies.FROM_NOT_OWNED.with_text("Sender: header address not owned by the authenticated user")
RESENT_FROM_NOT_OWNED = replies.FROM_NOT_OWNED.with_text(
    "Resent-From: header address not owned by the authenticated user"
)
RESENT_SENDER_NOT_OWNED = replies.FROM_NOT_OWNED.with_text(
    "Resent-Sender: header address not owned by the authenticated user"
)
INVALID_FROM = replies.HEADER_MALFORMED.with_text("Message refused: From: is not a valid mailbox list")  # 554 5.6.0
INVALID_SENDER = replies.HEADER_MALFORMED.with_text("Message refused: Sender: must hold one mailbox")
ONE_FROM = replies.HEADER_MALFORMED.with_text(
    "Message refused: one From: field and at most one Sender: field are required (RFC 5322 3.6)"
)
BAD_FIELD = replies.HEADER_MALFORMED.with_text("Message refused: malformed header field")

# (name, header fields before To/Subject, expected refusal or None for accepted)
VARIANTS: list[tuple[str, bytes, object]] = [
    # -- the user's own addresses, written every legitimate way: accepted
    ("plain", b"From: alice@example.test", None),
    ("name-addr", b"From: Alice <alice@example.test>", None),
    ("quoted-name", b'From: "Alice Liddell" <alice@example.test>', None),
    ("upper-case", b"From: ALICE@EXAMPLE.TEST", None),
    ("mixed-case-angle", b"From: Alice <Alice@Example.Test>", None),
    ("plus-address", b"From: alice+lists@example.test", None),
    ("alias", b"From: Alice Smith <alice.smith@example.test>", None),
    ("quoted-local-part-same", b'From: "alice"@example.test', None),
    ("comment-name", b"From: alice@example.test (Alice Liddell)", None),
    ("name-is-own-address", b'From: "alice@example.test" <alice@example.test>', None),
    ("name-is-own-alias", b'From: "alice.smith@example.test" <alice@example.test>', None),
    ("folded", b"From: Alice\r\n <alice@example.test>", None),
    ("encoded-name", b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.test>", None),
    ("obs-phrase-dot", b"From: Alice Q. Liddell <alice@example.test>", None),
    ("two-own-addresses", b"From: alice@example.test, Alice Smith <alice.smith@example.test>", None),
    ("own-sender", b"From: Alice <alice@example.test>\r\nSender: alice+bot@example.test", None),
    ("own-resent-from", b"Resent-From: alice@example.test\r\nFrom: alice@example.test", None),
    ("space-before-colon", b"From : alice@example.test", None),
    ("idn-u-label", "From: Alice <alice@bücher.example>".encode(), None),
    ("at-between-spaces", b'From: "Alice @ home" <alice@example.test>', None),
    # -- someone else's address, or a name that shows one: 553 5.7.1
    ("other-address", b"From: bob@example.test", NOT_OWNED),
    ("other-name-addr", b"From: Alice <bob@example.test>", NOT_OWNED),
    ("issue-quoted-name", b'From: "bob@example.test" <alice@example.test>', SHOWN),
    ("comment-other", b"From: alice@example.test (bob@example.test)", SHOWN),
    ("comment-in-name-addr", b"From: Alice (bob@example.test) <alice@example.test>", SHOWN),
    ("nested-comment", b"From: alice@example.test (Alice (bob@example.test))", SHOWN),
    ("encoded-b", b"From: =?utf-8?b?Ym9iQGV4YW1wbGUudGVzdA==?= <alice@example.test>", SHOWN),
    ("encoded-q", b"From: =?utf-8?q?bob=40example=2Etest?= <alice@example.test>", SHOWN),
    ("encoded-split", b"From: =?utf-8?q?bob?= =?utf-8?q?=40example.test?= <alice@example.test>", SHOWN),
    ("encoded-in-quotes", b'From: "=?utf-8?q?bob=40example.test?=" <alice@example.test>', SHOWN),
    ("encoded-utf7", b"From: =?utf-7?q?bob+AEA-example.test?= <alice@example.test>", SHOWN),
    ("encoded-in-comment", b"From: alice@example.test (=?utf-8?b?Ym9iQGV4YW1wbGUudGVzdA==?=)", SHOWN),
    ("quoted-pair-at", b'From: "bob\\@example.test" <alice@example.test>', SHOWN),
    ("fullwidth-at-name", '"bob\uff20example.test" <alice@example.test>'.join(["From: ", ""]).encode(), SHOWN),
    ("rtl-override-name", '"\u202etset.elpmaxe@bob" <alice@example.test>'.join(["From: ", ""]).encode(), SHOWN),
    ("name-other-domain", b'From: "alice@example.org" <alice@example.test>', SHOWN),
    ("second-address-other", b"From: alice@example.test, bob@example.test", NOT_OWNED),
    ("quoted-local-part-hides", b'From: "bob@example.test"@example.test', NOT_OWNED),
    ("confusable-domain", "From: alice@ex\u0430mple.test".encode(), NOT_OWNED),
    ("confusable-local", "From: \u0430lice@example.test".encode(), NOT_OWNED),
    ("other-domain", b"From: alice@example.org", NOT_OWNED),
    ("domain-literal", b"From: alice@[127.0.0.1]", NOT_OWNED),
    ("sender-other", b"From: alice@example.test\r\nSender: bob@example.test", SENDER_NOT_OWNED),
    ("resent-from-other", b"Resent-From: bob@example.test\r\nFrom: alice@example.test", RESENT_FROM_NOT_OWNED),
    ("resent-sender-other", b"Resent-Sender: Bob <bob@example.test>\r\nFrom: alice@example.test",
     RESENT_SENDER_NOT_OWNED),
    # -- what a client may read differently from us: 554 5.6.0
    ("issue-unquoted-name", b"From: bob@example.test <alice@example.test>", INVALID_FROM),
    ("group", b"From: Friends: alice@example.test;", INVALID_FROM),
    ("empty-group", b"From: undisclosed-recipients:;", INVALID_FROM),
    ("empty", b"From:", INVALID_FROM),
    ("blank", b"From:    ", INVALID_FROM),
    ("missing", b"Reply-To: alice@example.test", ONE_FROM),
    ("duplicate", b"From: alice@example.test\r\nFrom: bob@example.test", ONE_FROM),
    ("duplicate-own", b"From: alice@example.test\r\nFrom: alice@example.test", ONE_FROM),
    ("two-senders", b"From: alice@example.test\r\nSender: alice@example.test\r\nSender: alice@example.test", ONE_FROM),
    ("route", b"From: <@evil.test:bob@example.test>", INVALID_FROM),
    ("route-own", b"From: <@example.test:alice@example.test>", INVALID_FROM),
    ("obs-local-part", b"From: alice . smith@example.test", INVALID_FROM),
    ("obs-domain", b"From: alice@example . test", INVALID_FROM),
    ("empty-element", b"From: alice@example.test,,alice@example.test", INVALID_FROM),
    ("trailing-comma", b"From: alice@example.test,", INVALID_FROM),
    ("unterminated-quote", b'From: "Alice <alice@example.test>', INVALID_FROM),
    ("unterminated-comment", b"From: alice@example.test (Alice", INVALID_FROM),
    ("comments-too-deep", b"From: alice@example.test " + b"(" * 20 + b")" * 20, INVALID_FROM),
    ("control-in-name", b'From: "Al\x07ice" <alice@example.test>', INVALID_FROM),
    ("not-utf8", b"From: \xff <alice@example.test>", INVALID_FROM),
    ("fullwidth-at-address", "From: alice\uff20example.test".encode(), INVALID_FROM),
    ("too-long", b"From: " + b"alice@example.test, " * 500 + b"alice@example.test", INVALID_FROM),
    ("sender-two-mailboxes", b"From: alice@example.test\r\nSender: alice@example.test, alice+x@example.test",
     INVALID_SENDER),
    # (the SMTP core refuses NUL anywhere in a submitted message before the policy sees it)
    ("nul-in-name", b"Fr\x00om: bob@example.test\r\nFrom: alice@example.test", BAD_FIELD),
    ("control-in-name-field", b"From: alice@example.test\r\nX-\x01Test: x", BAD_FIELD),
    ("space-in-field-name", b"Fr om: bob@example.test\r\nFrom: alice@example.test", BAD_FIELD),
    ("mbox-from-line", b"From alice@example.test\r\nFrom: alice@example.test", BAD_FIELD),
    ("continuation-first", b" From: bob@example.test\r\nFrom: alice@example.test", BAD_FIELD),
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SubmissionPolicy]:
    store = SQLiteStore(tmp_path_factory.mktemp("data"))
    directory = Directory(store.accounts, DOMAINS)
    directory.add_user("alice@example.test", "pw")
    directory.add_user("bob@example.test", "pw")
    directory.add_alias("alice.smith@example.test", "alice@example.test")
    directory.add_alias("alice@xn--bcher-kva.example", "alice@example.test")
    cache = DirectoryCache(store.accounts, DOMAINS)
    cache.prime()
    yield SubmissionPolicy(cache, "example.test")
    store.close()


def check(policy: SubmissionPolicy, data: bytes) -> MessageDecision:
    return asyncio.run(policy.check_message(envelope(), data))


def envelope() -> Envelope:
    return Envelope(helo="laptop.example", is_esmtp=True, is_tls=True,
                    mail_from=SMTPPath(parse_mailbox("alice@example.test")), mail_params=MailParams(),
                    recipients=(), authenticated_as="alice@example.test")  # fmt: skip


def message(fields: bytes) -> bytes:
    return fields + b"\r\nTo: bob@example.test\r\nSubject: hi\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n" + (
        b"Message-ID: <m@laptop.example>\r\n\r\nHello.\r\n"
    )


def test_issue_8_there_are_at_least_38_variants_of_each_kind() -> None:
    assert len(VARIANTS) >= 38 and len({name for name, _, _ in VARIANTS}) == len(VARIANTS)
    assert sum(expected is None for _, _, expected in VARIANTS) >= 15


@pytest.mark.parametrize(("fields", "expected"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_issue_8_from_spoofing_variants(policy: SubmissionPolicy, fields: bytes, expected: object) -> None:
    data = message(fields)
    decision = check(policy, data)
    if expected is None:
        assert decision == AcceptMessage(data)
    else:
        assert decision == Reject(expected)  # type: ignore[arg-type]


def test_issue_8_a_message_without_header_fields_has_no_from(policy: SubmissionPolicy) -> None:
    assert check(policy, b"\r\nHello.\r\n") == Reject(ONE_FROM)


def test_mailbox_list_parser_reads_names_comments_and_addresses() -> None:
    parsed = parse_mailbox_list(b' "A \\"Q\\" Liddell" (home) <alice@example.test> , Bob.B <"b c"@[127.0.0.1]>')
    assert [(m.display_name, m.local_part, m.domain) for m in parsed.mailboxes] == [
        ('A "Q" Liddell', "alice", "example.test"), ("Bob.B", "b c", "[127.0.0.1]")
    ]  # fmt: skip
    assert parsed.comments == (" home ",)
    with pytest.raises(MailboxListError, match="group"):
        parse_mailbox_list(b"a: b@c;")


def test_encoded_words_and_shown_addresses() -> None:
    assert decode_encoded_words("=?utf-8?q?a?= =?utf-8?q?b?= c =?rot13?q?x?=") == "ab c x"
    assert decode_encoded_words("=?hex?q?41?= =?punycode?b?YQ==?= =?x?b?not base64?=") == "41a =?x?b?not base64?="
    assert find_addresses("Bob (bob@example.test), 'carol@example.test'. x@ @y") == [
        "bob@example.test", "carol@example.test"
    ]  # fmt: skip
    assert find_addresses("Alice @ home, AT&T") == []


def test_issue_8_author_parsing_is_linear() -> None:
    """Hostile shapes at the field limit parse in a small fraction of a second (one pass, no regex)."""
    import time

    shapes = [
        b"=?" * 4000,
        b"=?a?q?" * 1300,
        b'"' + b"\\a" * 4000 + b'" <alice@example.test>',
        b"(" * 16 + b"x" * 8000 + b")" * 16 + b" alice@example.test",
        b"a." * 4000 + b"a@example.test",
        b"x@" * 4000,
    ]
    started = time.perf_counter()
    for shape in shapes:
        try:
            parsed = parse_mailbox_list(shape)
        except MailboxListError:
            continue
        for mailbox in parsed.mailboxes:
            find_addresses(mailbox.display_name)
    for shape in shapes:
        find_addresses(shape.decode())
    assert len(split_fields(b"X: y\r\n" * 9_000 + b"\r\n")) == 9_000
    with pytest.raises(HeaderError, match="more than 10000 header lines"):
        split_fields(b"X: y\r\n" * 1_000_000 + b"\r\n")
    assert time.perf_counter() - started < 5.0  # generous for a loaded machine; quadratic work would take minutes


_PIECES = st.sampled_from([b"alice", b"bob", b"@", b"example.test", b".", b",", b"<", b">", b'"', b"\\", b"(", b")",
                           b":", b";", b" ", b"\t", b"[", b"]", b"=?utf-8?b?", b"=?utf-8?q?", b"?=", b"=40",
                           b"\xef\xbc\xa0", b"\xff", b"\x00", b"\r\n", b"\r\n ", b"From: ", b"Sender: "])  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.lists(_PIECES, max_size=40).map(b"".join)))
def test_issue_8_author_parsing_raises_only_its_own_errors(value: bytes) -> None:
    try:
        parsed = parse_mailbox_list(value)
    except MailboxListError:
        pass
    else:
        for mailbox in parsed.mailboxes:
            find_addresses(mailbox.display_name)
    with contextlib.suppress(HeaderError):
        split_fields(value)
    find_addresses(value.decode("utf-8", "replace"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_PIECES, max_size=40).map(b"".join))
def test_issue_8_check_message_answers_every_header(policy: SubmissionPolicy, fields: bytes) -> None:
    decision = check(policy, b"From: " + fields + b"\r\n\r\nHello.\r\n")
    assert isinstance(decision, (AcceptMessage, Reject))
