"""The deadline arithmetic of the adapters, with times the test chooses."""

from __future__ import annotations

from kartero.net.deadlines import BYTES_PER_SECOND, Deadline, Deadlines, DeadlineSettings

IDLE_S = 300.0


def test_idle_runs_from_the_last_input_or_reply() -> None:
    d = Deadlines(DeadlineSettings(command_s=30.0, login_s=None), now=0.0)
    assert d.next(IDLE_S) == (300.0, Deadline.IDLE)
    d.received(10, now=5.0)
    d.replied(now=6.0)
    assert d.next(IDLE_S) == (306.0, Deadline.IDLE)
    assert d.expired(IDLE_S, 305.9) is None and d.expired(IDLE_S, 306.0) is Deadline.IDLE


def test_issue_8_a_trickle_does_not_extend_the_command_deadline() -> None:
    d = Deadlines(DeadlineSettings(command_s=30.0, login_s=None), now=0.0)
    for second in range(1, 40):  # one byte a second: each used to restart the idle timer
        d.received(1, now=float(second))
        if d.expired(IDLE_S, float(second)) is not None:
            break
    assert second == 32  # first byte at 1 s + 30 s + 31 bytes' worth of allowance (31/1024 s)
    assert d.expired(IDLE_S, 32.0) is Deadline.COMMAND


def test_a_steady_upload_earns_time() -> None:
    d = Deadlines(DeadlineSettings(command_s=30.0, login_s=None), now=0.0)
    size = 10 * 1024 * 1024
    for second in range(1, 301):  # 10 MiB over five minutes: 35 KiB/s
        d.received(size // 300, now=float(second))
    assert d.expired(IDLE_S, 300.0) is None
    assert d.next(idle_s=1e9) == (1.0 + 30.0 + (size // 300) * 300 / BYTES_PER_SECOND, Deadline.COMMAND)


def test_a_reply_ends_the_command() -> None:
    d = Deadlines(DeadlineSettings(command_s=30.0, login_s=None), now=0.0)
    d.received(3, now=1.0)
    assert d.is_command_started and d.next(IDLE_S)[1] is Deadline.COMMAND
    d.replied(now=2.0)
    assert not d.is_command_started and d.next(IDLE_S) == (302.0, Deadline.IDLE)
    d.received(1, now=100.0)  # the next command's first byte starts a new deadline
    assert d.next(IDLE_S) == (100.0 + 30.0 + 1 / BYTES_PER_SECOND, Deadline.COMMAND)


def test_issue_8_login_deadline_from_connect_whatever_the_traffic() -> None:
    d = Deadlines(DeadlineSettings(command_s=30.0, login_s=60.0), now=0.0)
    for second in range(1, 61):
        d.received(8, now=float(second))
        d.replied(now=float(second))  # a complete command every second (NOOP, CAPABILITY, ...)
    assert d.expired(IDLE_S, 60.0) is Deadline.LOGIN
    d.logged_in()
    assert d.expired(IDLE_S, 60.0) is None
