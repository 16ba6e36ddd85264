"""kartero.concurrency: `within` gives up on the work it waited for, whichever deadline ends the wait."""

from __future__ import annotations

import asyncio

import pytest

from kartero.concurrency import DeadlineExceeded, within


def test_within_cancels_the_work_past_its_deadline() -> None:
    async def go() -> asyncio.Future[None]:
        work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with pytest.raises(DeadlineExceeded):
            await within(0.01, work, "work")
        return work

    assert asyncio.run(go()).cancelled()


def test_issue_13_within_cancels_the_work_when_its_caller_is_cancelled() -> None:
    """A session's backstop cancelling a milter exchange must not leave the read running (it kept the
    milter connection out of step with its protocol core)."""

    async def go() -> asyncio.Future[None]:
        work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(within(60, work, "work"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return work

    assert asyncio.run(go()).cancelled()
