"""Changes content filters ask for, applied to the header block and body: exact bytes out."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kartero.filters.changes import Edited, apply, is_junk, split_fields, split_message
from kartero.filters.model import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    Quarantine,
    ReplaceBody,
)
from kartero.store.interface import Content, FileSpan

MESSAGE = (b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Subject: hello\r\n"
           b"X-Tag: one\r\n"
           b"x-tag: two\r\n"
           b"\r\n"
           b"body line\r\n")  # fmt: skip


def edited(changes: list, data: bytes | Content = MESSAGE) -> Edited:  # type: ignore[type-arg]
    result = Edited(data)
    apply(result, changes)
    return result


def test_add_header_appends_at_the_end_of_the_header() -> None:
    assert edited([AddHeader("X-Spam", "Yes")]).data == MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Spam: Yes\r\n\r\n")


def test_values_folded_with_bare_lf_get_crlf_and_white_space() -> None:
    out = edited([AddHeader("X-Report", "a\n\tb\nc")]).data
    assert isinstance(out, bytes)
    assert b"X-Report: a\r\n\tb\r\n\tc\r\n\r\n" in out


def test_insert_header_at_index() -> None:
    assert edited([InsertHeader(0, "X-First", "1")]).data == b"X-First: 1\r\n" + MESSAGE
    out = edited([InsertHeader(2, "X-Third", "3")]).data
    assert out == MESSAGE.replace(b"X-Tag: one", b"X-Third: 3\r\nX-Tag: one")
    assert edited([InsertHeader(99, "X-Last", "z")]).data == edited([AddHeader("X-Last", "z")]).data


def test_change_header_by_occurrence_case_insensitively() -> None:
    assert edited([ChangeHeader("X-TAG", 2, "deux")]).data == MESSAGE.replace(b"x-tag: two", b"x-tag: deux")
    assert edited([ChangeHeader("x-tag", 1, "")]).data == MESSAGE.replace(b"X-Tag: one\r\n", b"")
    # past the last occurrence: appended; an empty value there changes nothing
    assert edited([ChangeHeader("X-New", 1, "v")]).data == edited([AddHeader("X-New", "v")]).data
    assert edited([ChangeHeader("X-Tag", 5, "")]).data == MESSAGE


def test_changes_apply_in_order_each_seeing_the_last() -> None:
    out = edited([AddHeader("X-A", "1"), ChangeHeader("X-A", 1, "2"), InsertHeader(0, "X-B", "0")]).data
    assert out == b"X-B: 0\r\n" + MESSAGE.replace(b"\r\n\r\n", b"\r\nX-A: 2\r\n\r\n")


def test_replace_body_keeps_the_header_and_ends_the_last_line() -> None:
    out = edited([ReplaceBody(b"new\r\nbody\r\nend")]).data
    assert out == MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4] + b"new\r\nbody\r\nend\r\n"


def test_the_header_ends_where_the_milter_saw_it_end() -> None:
    """At the first line that is no field (as Postfix shows it to milters): later lines are never edited."""
    data = b"Subject: a\r\nnot a field\r\nX-Spam: Yes\r\n\r\nbody\r\n"
    assert edited([AddHeader("X-A", "1"), ChangeHeader("X-Spam", 1, "")], data).data == (
        b"Subject: a\r\nX-A: 1\r\nnot a field\r\nX-Spam: Yes\r\n\r\nbody\r\n")
    assert not is_junk(data, "X-Spam")


def test_issue_13_deleting_thousands_of_fields_in_a_huge_header_is_linear() -> None:
    """A 2 MiB header of tiny fields with 1,000 X-Spam fields at its end, each deleted by its own change
    (what rspamd asks for): was fields x changes (seconds of the loop), now one pass."""
    data = b"a: b\r\n" * 300_000 + b"X-Spam: Yes\r\n" * 1000 + b"\r\nbody\r\n"
    started = time.process_time()
    out = edited([ChangeHeader("X-Spam", 1, "")] * 1000, data).data
    assert time.process_time() - started < 5.0
    assert out == b"a: b\r\n" * 300_000 + b"\r\nbody\r\n"


def test_a_spooled_message_keeps_its_body_in_the_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(b"x" * 100 + b"the body\r\n")
    head = MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4]
    content = Content(head, FileSpan(spool, 100, 10))
    out = edited([AddHeader("X-Spam", "Yes"), ChangeHeader("Subject", 1, "[SPAM] hello")], content).data
    assert isinstance(out, Content) and out.tail == content.tail
    assert out.head == head.replace(b"Subject: hello", b"Subject: [SPAM] hello").replace(
        b"\r\n\r\n", b"\r\nX-Spam: Yes\r\n\r\n")
    replaced = edited([ReplaceBody(b"short\r\n")], content).data
    assert replaced == head + b"short\r\n"


def test_envelope_changes_are_collected() -> None:
    result = edited([AddRecipient("a@example.org"), AddRecipient("b@example.org", ("NOTIFY=NEVER",)),
                     DeleteRecipient("A@example.org"), DeleteRecipient("c@example.org"),
                     ChangeSender("", ()), Quarantine("spam"), Quarantine("later")])  # fmt: skip
    assert result.added == [("b@example.org", ("NOTIFY=NEVER",))]
    assert result.deleted == {"a@example.org", "c@example.org"}
    assert result.sender == "" and result.quarantine == "spam"
    assert result.data == MESSAGE  # no header change: the same bytes


def test_junk_verdicts() -> None:
    assert is_junk(MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Spam: Yes\r\n\r\n"), "X-Spam")
    assert is_junk(MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Spam-Flag: YES\r\n\r\n"), "X-Spam")
    assert is_junk(MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Rspamd-Verdict: yes, score=9\r\n\r\n"), "X-Rspamd-Verdict")
    assert not is_junk(MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Spam: No\r\n\r\n"), "X-Spam")
    assert not is_junk(MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Spam-Status: Yes\r\n\r\n"), "X-Spam")
    assert not is_junk(b"Subject: x\r\n\r\nX-Spam: Yes\r\n", "X-Spam")  # in the body: not a field


def test_split_fields_keeps_every_octet() -> None:
    block = b"A: 1\r\n 2\r\nbroken line\r\nB:3\n\tfour\r\n"
    assert split_fields(block) == [b"A: 1\r\n 2\r\n", b"broken line\r\n", b"B:3\n\tfour\r\n"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.sampled_from([
    AddHeader("X-A", "v"), InsertHeader(1, "X-B", "w\nx"), ChangeHeader("subject", 1, "s"),
    ChangeHeader("x-a", 1, ""), ReplaceBody(b"b\n")]), max_size=5))  # fmt: skip
def test_any_message_and_changes_never_fail_and_keep_the_body(data: bytes, changes: list) -> None:  # type: ignore[type-arg]
    _, body = split_message(data)
    out = edited(changes, data).data
    assert isinstance(out, bytes)
    if not any(isinstance(c, ReplaceBody) for c in changes):
        assert isinstance(body, bytes) and out.endswith(body)
