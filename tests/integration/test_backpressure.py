"""Issue 8, finding 5: a session that cannot process input stops reading it.

Each test streams as much as the kernel takes in a few seconds (up to 1 GiB) into a session while it
waits for a decision, or sends a deflate bomb after COMPRESS, and checks the server's peak resident
memory (VmHWM of the `kartero serve` process, reset first) grew by less than 64 MB, and that another
client is served promptly meanwhile.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer

PASSWORD = "bob password"
MAX_GROWTH_KB = 64 * 1024


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS; returns that RSS in kB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_kb(pid, "VmRSS")


def peak_growth_kb(pid: int, rss_before_kb: int) -> int:
    return status_kb(pid, "VmHWM") - rss_before_kb


def stream(sock: socket.socket, seconds: float, limit: int = 1 << 30) -> int:
    """Send junk (no line end) for `seconds` or `limit` octets, whichever comes first; returns how much
    the kernel took."""
    sock.setblocking(False)
    chunk = b"x" * (1 << 20)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < limit and time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
    sock.setblocking(True)
    return sent


def read_until(sock: socket.socket, marker: bytes, timeout_s: float = 10.0) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    while marker not in data:
        more = sock.recv(65536)
        if not more:
            raise AssertionError(f"closed before {marker!r}: {data[-300:]!r}")
        data += more
    return data


def round_trip_s(server: KarteroServer, port: int, command: bytes, marker: bytes) -> float:
    """Connect from another address, read the greeting, and time one command's answer."""
    with socket.create_connection((server.host, port), timeout=10, source_address=("127.0.0.2", 0)) as sock:
        read_until(sock, b"\r\n")
        started = time.monotonic()
        sock.sendall(command)
        read_until(sock, marker)
        return time.monotonic() - started


@pytest.fixture
def silent_dns() -> Iterator[int]:
    """A UDP port on loopback that takes DNS queries and never answers them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_issue_8_smtp_stops_reading_while_a_rcpt_decision_is_pending(tmp_path: Path, silent_dns: int) -> None:
    # The DNSBL lookup of the client goes to a server that never answers: RCPT waits 5 s for it.
    mx = KarteroServer(
        tmp_path / "mx",
        extra_config=f'[dns]\nnameservers = ["127.0.0.1:{silent_dns}"]\ntimeout = "5s"\n'
        '[dnsbl]\nzones = ["bl.test"]\nexempt = []\n',
    )
    mx.add_user("bob@example.test", PASSWORD)
    mx.start()
    try:
        assert mx.process is not None
        pid = mx.process.pid
        with socket.create_connection((mx.host, mx.port), timeout=10) as sock:
            read_until(sock, b"220 ")
            sock.sendall(b"EHLO client.example\r\n")
            read_until(sock, b"250 ")
            rss = reset_peak(pid)
            sock.sendall(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.test>\r\n")
            sent = stream(sock, 3.0)
            growth = peak_growth_kb(pid, rss)
            # The decision is still pending: another client is served at once.
            assert round_trip_s(mx, mx.port, b"NOOP\r\n", b"250 ") < 1.0
            sock.settimeout(15)
            sock.sendall(b"\r\n")  # ends the junk line once the server reads again
            replies = read_until(sock, b"500 5.5.2 Line too long\r\n", timeout_s=15)
            assert b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n" in replies
        assert growth < MAX_GROWTH_KB, f"RSS grew by {growth} kB while {sent} bytes were streamed"
    finally:
        assert mx.stop() == 0, mx.log


def test_issue_8_pop3_stops_reading_during_the_login_delay(tmp_path: Path) -> None:
    server = KarteroServer(tmp_path / "mx")
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        with socket.create_connection((server.host, server.pop3_port), timeout=10) as sock:
            read_until(sock, b"+OK")
            sock.sendall(b"USER bob@example.test\r\nPASS wrong\r\n")
            read_until(sock, b"-ERR [AUTH]")  # the first failure: the next one waits longer
            rss = reset_peak(pid)
            sock.sendall(b"USER bob@example.test\r\nPASS wrong again\r\n")
            sent = stream(sock, 3.0)
            growth = peak_growth_kb(pid, rss)
            assert round_trip_s(server, server.pop3_port, b"CAPA\r\n", b"\r\n.\r\n") < 1.0
        assert growth < MAX_GROWTH_KB, f"RSS grew by {growth} kB while {sent} bytes were streamed"
    finally:
        assert server.stop() == 0, server.log


def deflate_bomb(inflated_mib: int) -> bytes:
    """Raw DEFLATE of `inflated_mib` MiB of zeros (about 1000:1), cut at sync-flush points."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(16 << 20)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    rest = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)  # every later piece is the same
    return first + rest * (inflated_mib // 16 - 1)


def test_issue_8_imap_compress_inflates_a_bomb_in_bounded_steps(tmp_path: Path) -> None:
    server = KarteroServer(tmp_path / "mx")
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    bomb = deflate_bomb(1024)
    try:
        assert server.process is not None
        pid = server.process.pid
        with socket.create_connection((server.host, server.imap_port), timeout=10) as sock:
            read_until(sock, b"* OK")
            sock.sendall(f'a LOGIN bob@example.test "{PASSWORD}"\r\nb COMPRESS DEFLATE\r\n'.encode())
            read_until(sock, b"b OK")
            inflate = zlib.decompressobj(-15)
            compress = zlib.compressobj(6, zlib.DEFLATED, -15)
            rss = reset_peak(pid)
            started = time.monotonic()
            sock.sendall(bomb)
            slowest = 0.0
            while time.monotonic() - started < 3.0:  # others are served while the bomb inflates
                slowest = max(slowest, round_trip_s(server, server.imap_port, b"n NOOP\r\n", b"n OK"))
            sock.sendall(compress.compress(b"\r\nc NOOP\r\n") + compress.flush(zlib.Z_SYNC_FLUSH))
            sock.settimeout(60)
            replies = b""
            while b"c OK" not in replies:
                more = sock.recv(65536)
                assert more, replies
                replies += inflate.decompress(more)
            assert replies == b"* BAD Line too long\r\nc OK NOOP completed\r\n"
            growth = peak_growth_kb(pid, rss)
        assert slowest < 1.0, f"another client waited {slowest:.2f} s"
        assert growth < MAX_GROWTH_KB, f"RSS grew by {growth} kB inflating {len(bomb)} bytes to 1 GiB"
    finally:
        assert server.stop() == 0, server.log



def pipeline(socks: list[socket.socket], command: bytes, seconds: float) -> int:
    """Send `command` over and over on every socket for `seconds` (each one whenever the kernel takes
    more), without reading; returns what the kernel took."""
    for sock in socks:
        sock.setblocking(False)
    block = command * (65536 // len(command))
    sent = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _, writable, _ = select.select([], socks, [], min(left, 0.02))
        for sock in writable:
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(block)
    for sock in socks:
        sock.setblocking(True)
    return sent


def test_issue_8_pipelined_commands_from_clients_that_read_nothing_stay_small(tmp_path: Path) -> None:
    """50 clients pipeline EHLO (8 octets in, 140 out) and never read: each costs the server its socket
    buffers and about 64 KiB of waiting replies, not the megabytes one drain of its read-ahead made."""
    server = KarteroServer(tmp_path / "mx", limits="errors_per_session = 1000000")
    server.add_user("bob@example.test", PASSWORD)
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        socks = []
        for _ in range(50):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, takes little
            sock.connect((server.host, server.port))
            socks.append(sock)
        try:
            rss = reset_peak(pid)
            sent = pipeline(socks, b"EHLO x\r\n", 2.0)
            time.sleep(1.0)  # let the server work through some of what it read
            growth = peak_growth_kb(pid, rss)
        finally:
            for sock in socks:
                sock.close()
        # What they pipelined is dropped with their connections, not worked through (that held the loop
        # for about a second per connection): another client is served at once.
        assert round_trip_s(server, server.port, b"NOOP\r\n", b"250 ") < 1.0
        assert growth < MAX_GROWTH_KB, f"RSS grew by {growth} kB while {sent} bytes were pipelined"
    finally:
        assert server.stop() == 0, server.log
