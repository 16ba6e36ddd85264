"""Issue 8: the loop-lag watchdog, on a real event loop (blocked on purpose with time.sleep)."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from kartero.net.watchdog import LoopWatchdog


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a 16 s regex or a quadratic subject normaliser does to everyone


def run_watched(scenario: object) -> None:
    async def main() -> None:
        watchdog = LoopWatchdog(asyncio.get_running_loop())
        watchdog.start()
        try:
            await scenario()  # type: ignore[operator]
        finally:
            watchdog.stop()

    asyncio.run(main())


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event} " in r.getMessage() + " "]


def test_issue_8_watchdog_logs_a_blocked_loop_with_the_stack_that_blocks_it(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        await asyncio.sleep(0.3)
        block_the_loop(0.8)
        await asyncio.sleep(0.3)

    with caplog.at_level(logging.INFO, logger="kartero"):
        run_watched(scenario)
    [blocked] = events(caplog, "loop.blocked")
    ms = int(re.search(r"ms=(\d+)", blocked).group(1))  # type: ignore[union-attr]
    assert 250 <= ms < 800
    stack = re.search(r'stack="(.*)"', blocked).group(1)  # type: ignore[union-attr]
    assert stack.startswith("/") and "test_watchdog.py:" in stack.split(" < ")[0]
    assert stack.split(" < ")[0].endswith(" block_the_loop") and " scenario < " in stack
    [unblocked] = events(caplog, "loop.unblocked")
    assert 650 <= int(re.search(r"ms=(\d+)", unblocked).group(1)) < 1500  # type: ignore[union-attr]


def test_watchdog_is_quiet_on_an_idle_or_briskly_busy_loop(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        await asyncio.sleep(1.0)
        for _ in range(20):  # short stalls are not reported
            block_the_loop(0.05)
            await asyncio.sleep(0)

    with caplog.at_level(logging.INFO, logger="kartero"):
        run_watched(scenario)
    assert events(caplog, "loop.blocked") == [] and events(caplog, "loop.unblocked") == []
