"""Crash safety: SIGKILL while clients send; every message that got 250 survives, none half-written."""

from __future__ import annotations

import smtplib
import sqlite3
import threading
import time
from pathlib import Path

from tests.integration.harness import KarteroServer, strip_trace


def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    mx = KarteroServer(tmp_path / "mx")
    mx.add_user("bob@example.test")
    mx.start()
    acknowledged: dict[str, bytes] = {}
    attempted: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP(mx.host, mx.port, timeout=10) as s:
                    while not stop.is_set():
                        key = f"{worker}-{n}"
                        # Bodies of different sizes, some larger than one socket read.
                        head = f"Subject: crash {key}\r\nX-Key: {key}\r\n\r\n".encode()
                        body = head + b"x" * (n % 7 * 40_000) + b"\r\n"
                        with lock:
                            attempted[key] = body
                        n += 1
                        s.sendmail("load@example.org", ["bob@example.test"], body)
                        with lock:
                            acknowledged[key] = body
            except (smtplib.SMTPException, OSError):
                if stop.wait(0.05):
                    return

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    mx.kill()
    stop.set()
    for t in threads:
        t.join(15)
    with lock:
        acked = dict(acknowledged)
        tried = dict(attempted)
    assert len(acked) >= 150, f"only {len(acked)} acknowledged before the kill"

    db = sqlite3.connect(mx.root / "data" / "kartero.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()

    mx.start()  # start-up removes files whose metadata never committed
    assert mx.stop() == 0
    stored = {}
    for raw in mx.messages("bob@example.test"):
        message = strip_trace(raw)
        key = message.split(b"X-Key: ", 1)[1].split(b"\r\n", 1)[0].decode()
        assert key not in stored, f"{key} stored twice"
        stored[key] = message
    missing = sorted(set(acked) - set(stored))
    assert not missing, f"acknowledged but lost: {missing}"
    for key, message in stored.items():
        assert message == tried[key], f"{key} stored with different bytes"
    # After recovery every segment ends exactly where its last committed body ends.
    store = mx.store()
    try:
        db = store.database.db()
        for number in store.segments.numbers():
            (end,) = db.execute("SELECT MAX(offset + size) FROM blobs WHERE segment = ?", (number,)).fetchone()
            assert store.segments.size(number) == end
    finally:
        store.close()
    assert "event=smtp.message" in mx.log
