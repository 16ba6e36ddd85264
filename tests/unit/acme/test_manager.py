"""The renewal task's decisions after an order (kartero/acme/manager.py). The CA is left out: `order_certificate`
gives back a certificate made here, so the schedule is what is tested; test_acme.py orders from pebble."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kartero.acme import manager
from kartero.acme.challenges import Challenges, FileTokens
from kartero.acme.order import Issued, OrderSettings
from kartero.acme.storage import AcmeFiles
from kartero.config import AcmeConfig
from kartero.tls import make_self_signed

NAMES = ("mail.example.test",)


def renewal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: float) -> tuple[manager.Renewal, list[int]]:
    make_self_signed(tmp_path / "ca.pem", tmp_path / "ca.key", list(NAMES), days=90)
    orders: list[int] = []

    def order(settings: OrderSettings, files: object, challenges: object) -> Issued:
        orders.append(1)
        return Issued((tmp_path / "ca.pem").read_bytes(), (tmp_path / "ca.key").read_bytes())

    monkeypatch.setattr(manager, "order_certificate", order)
    installed: list[int] = []
    files = AcmeFiles(tmp_path / "acme")
    challenges = Challenges(FileTokens(tmp_path / "tokens"))
    task = manager.Renewal(AcmeConfig("https://ca.example/dir", NAMES), files, challenges, {"http"},
                           lambda: installed.append(1), clock=lambda: clock)  # fmt: skip
    return task, installed


def test_issue_15_a_certificate_due_as_it_arrives_does_not_make_a_loop_of_orders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock 80 days ahead makes a fresh 90-day certificate due at once: the old task ordered again every
    5 s until the CA's rate limit locked the names out (Let's Encrypt: 5 identical a week)."""
    task, installed = renewal(tmp_path, monkeypatch, time.time() + 80 * 86400)
    wait = asyncio.run(task.step())
    assert installed == [1]  # served all the same: newer than what was
    state = task.files.state()
    assert state.failures == 1 and "already due" in state.last_error
    assert wait == 60.0  # the first backoff, not the 5 s floor
    assert asyncio.run(task.step()) > 0  # within the backoff: no second order
    assert installed == [1]


def test_issue_15_a_certificate_with_its_life_ahead_is_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, installed = renewal(tmp_path, monkeypatch, time.time())
    wait = asyncio.run(task.step())
    assert installed == [1]
    state = task.files.state()
    assert state.failures == 0 and state.last_error == "" and state.last_success_at > 0
    assert wait == 3600.0  # renewal in 60 days: look again in an hour
