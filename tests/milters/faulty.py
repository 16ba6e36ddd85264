"""A milter that misbehaves on purpose, for the fault tests: it speaks just enough of the protocol
(version 6 negotiation, `continue` to every command) to reach the phase where it fails.

Modes: "hang" (accepts the connection and never answers), "close_in_body" (closes the connection when
the first BODY chunk arrives), "slow_eom" (answers everything but sleeps past any deadline before the
end-of-message reply), and "by_sender": the local part of MAIL FROM picks the fault from then on
("hang" stops answering at MAIL, "close_in_body", "slow_eom", "trickle_eom": its end-of-message answer a byte
every 0.4 s; anything else behaves). Runs in a thread of
the test process on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

OPTNEG = b"O"
ACTIONS = 0x1FF
PROTOCOL = 0  # every command, every reply


class FaultyMilter:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self.bodies = 0  # BODY chunks seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            if self.mode == "hang":
                self._stop.wait(60)
                return
            conn.settimeout(60)
            mode = self.mode
            while not self._stop.is_set():
                header = _read(conn, 4)
                if header is None:
                    return
                (length,) = struct.unpack("!I", header)
                packet = _read(conn, length)
                if packet is None or not packet:
                    return
                command = packet[:1]
                if command == OPTNEG:
                    conn.sendall(_packet(OPTNEG + struct.pack("!III", 6, ACTIONS, PROTOCOL)))
                elif command == b"D":  # macros: no reply
                    continue
                elif command == b"M" and self.mode == "by_sender":
                    mode = packet[1:].split(b"\0")[0].strip(b"<>").partition(b"@")[0].decode()
                    if mode == "hang":
                        self._stop.wait(60)
                        return
                    conn.sendall(_packet(b"c"))
                elif command == b"B":
                    self.bodies += 1
                    if mode == "close_in_body":
                        return
                    conn.sendall(_packet(b"c"))
                elif command == b"E" and mode == "trickle_eom":  # "continue", a byte every 0.4 s
                    for byte in _packet(b"c"):
                        if self._stop.wait(0.4):
                            return
                        try:
                            conn.sendall(bytes([byte]))
                        except OSError:  # Kartero gave up on us, as it should
                            return
                elif command == b"E":
                    if mode == "slow_eom":
                        self._stop.wait(30)
                        return
                    conn.sendall(_packet(b"c"))
                elif command in (b"Q", b"A"):  # quit, abort: no reply
                    if command == b"Q":
                        return
                else:
                    conn.sendall(_packet(b"c"))

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)


def _packet(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def _read(conn: socket.socket, n: int) -> bytes | None:
    out = b""
    while len(out) < n:
        try:
            chunk = conn.recv(n - len(out))
        except OSError:
            return None
        if not chunk:
            return None
        out += chunk
    return out


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    time.sleep(0)
    return port
