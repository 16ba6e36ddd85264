"""Delivery outcomes carry a typed Reply (issue 10): the DSN status comes from it, the queue stores and
a DSN shows its one-line form, and an outcome whose status contradicts its kind cannot exist."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kartero.mail import replies
from kartero.mail.replies import Reply, make_printable
from kartero.queue.jobs import Deferred, Delivered, Failed


def test_issue_10_the_status_is_the_reply_s_enhanced_code_or_its_class_default() -> None:
    assert Deferred(Reply(451, "4.2.1", "Mailbox busy")).status == "4.2.1"
    assert Deferred(Reply(451, None, "Mailbox busy")).status == "4.0.0"  # RFC 3463: the class's default
    assert Failed(Reply(550, "5.1.1", "No such user")).status == "5.1.1"
    assert Failed(Reply(550, None, "No such user")).status == "5.0.0"
    # Reclassified by the queue: a domain not found yet is retried; a deferral past its lifetime fails.
    assert Deferred(replies.DOMAIN_NOT_FOUND, status_override="4.4.4").status == "4.4.4"
    assert Failed(replies.CONNECT_FAILED, status_override="5.4.7").status == "5.4.7"


@pytest.mark.parametrize(
    "build",
    [
        lambda: Deferred(Reply(550, "5.1.1", "No such user")),  # a delay notice with a 5.x.x Status
        lambda: Failed(Reply(451, "4.4.1", "Cannot connect")),
        lambda: Failed(Reply(550, "5.1.1", "No"), status_override="4.4.4"),
        lambda: Delivered(Reply(451, "4.4.1", "Cannot connect")),
    ],
)
def test_issue_10_an_outcome_cannot_contradict_its_status(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_issue_10_a_note_follows_the_first_line_and_the_stored_form_is_one_line() -> None:
    remote = Reply(554, "5.7.1", "Go away  \nsecond line")
    assert remote.with_note("(from mx.b.test[127.0.0.3])").to_line() == "554 5.7.1 Go away (from mx.b.test[127.0.0.3])"
    assert Reply(421, None, "").with_note("(from mx.b.test[127.0.0.3])").to_line() == "421 (from mx.b.test[127.0.0.3])"
    assert Reply(250, "2.0.0", "").to_line() == "250 2.0.0"
    assert Reply(250, None, "first\nsecond").to_line() == "250 first"
    assert make_printable("b\u00fccher.test\r\n") == "b?cher.test??"
