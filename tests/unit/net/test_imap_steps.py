"""Issue 9, latency under 50 sessions: a command handler goes to a worker thread once for all its small
responses, not once per batch, and what it yielded before failing is still sent."""

from __future__ import annotations

from collections.abc import Generator

from kartero.imap.commands.view import Done
from kartero.imap.response import Status
from kartero.net.imap_session import STEP_BYTES, _step


def handler(pieces: list[bytes], error: Exception | None = None) -> Generator[bytes, None, Done]:
    yield from pieces
    if error is not None:
        raise error
    return Done(Status.OK, "done")


def test_issue_9_small_responses_and_the_end_come_back_in_one_step() -> None:
    step = _step(handler([b"* 1 FETCH (FLAGS ())\r\n", b"* 2 EXISTS\r\n"]))
    assert (step.data, step.done, step.error) == (b"* 1 FETCH (FLAGS ())\r\n* 2 EXISTS\r\n", Done(Status.OK, "done"),
                                                  None)  # fmt: skip


def test_issue_9_a_step_stops_at_step_bytes() -> None:
    big = b"x" * (STEP_BYTES // 2)
    running = handler([big, big, big])
    first = _step(running)
    assert (len(first.data), first.done) == (STEP_BYTES, None)
    last = _step(running)
    assert (last.data, last.done) == (big, Done(Status.OK, "done"))


def test_issue_9_what_came_before_a_failure_is_still_sent() -> None:
    failure = RuntimeError("disk gone")
    step = _step(handler([b"* 3 EXPUNGE\r\n"], failure))
    assert (step.data, step.done, step.error) == (b"* 3 EXPUNGE\r\n", None, failure)
