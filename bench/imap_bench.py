"""IMAP side by side: Kartero and Dovecot (Maildir), same mailbox, same client, same run.

    python bench/imap_bench.py                     # 10,000 messages, 1,000 IDLE connections
    python bench/imap_bench.py --messages 2000 --idle 200 --no-dovecot

Needs root and Debian's dovecot-imapd for the Dovecot side (a private instance on a loopback port; the
system one is not touched). Both servers get the same generated messages (sizes from 1 KB to ~120 KB,
some multipart with attachments, about 11 KB on average). Kartero's copy is stored through its store API
(as SMTP delivery would), Dovecot's as Maildir files; each server gets a warm-up SELECT before timing,
so Dovecot's first-time index build is not counted against it.

Rows: LOGIN (the first, checking the argon2id hash — Dovecot gets the same hash and cost — and again,
with each server's auth cache on), SELECT, `UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)`,
`FETCH 1:* BODY.PEEK[]` (MB/s), `UID SEARCH SUBJECT`, `STORE 1:* +FLAGS.SILENT`, APPEND (messages/s), and
memory per idle IDLE connection (the growth of the servers' proportional set size, PSS, summed over their
processes).
"""

from __future__ import annotations

import argparse
import base64
import os
import pwd
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASSWORD = "bench-password"
USER = "bob@example.test"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")  # fmt: skip


def make_messages(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    messages = []
    for i in range(count):
        subject = " ".join(rng.choice(WORDS) for _ in range(4)) + f" #{i}"
        head = (
            f"From: Sender {i % 97} <sender{i % 97}@example.org>\r\nTo: Bob <bob@example.test>\r\n"
            f"Subject: {subject}\r\nDate: Mon, 02 Nov 2026 {i % 24:02d}:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench-{i}@example.org>\r\nMIME-Version: 1.0\r\n"
        )
        size = int(rng.lognormvariate(8.3, 0.9))  # median ~4 KB, mean ~11 KB
        size = max(800, min(size, 120_000))
        text = "\r\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(size // 60)) + "\r\n"
        if i % 5 == 0:
            blob = base64.encodebytes(rng.randbytes(size // 2)).replace(b"\n", b"\r\n")
            body = (
                (
                    'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
                    + text[: size // 2]
                    + "\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                ).encode()
                + blob
                + b"--b--\r\n"
            )
            messages.append(head.encode() + body)
        else:
            messages.append((head + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text).encode())
    return messages


# -- a minimal raw IMAP client: timing the servers, not a client library's parser ----------------------


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.n = 0
        self._read_until(b"\r\n")

    def _read_until(self, marker: bytes) -> bytes:
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out, self.buf = self.buf[: i + len(marker)], self.buf[i + len(marker) :]
                return out
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            self.buf += data

    def command(self, text: str | bytes) -> tuple[bytes, int]:
        """Send a command; return its tagged line and how many octets of responses came before it."""
        self.n += 1
        tag = b"t%d " % self.n
        line = text if isinstance(text, bytes) else text.encode()
        self.sock.sendall(tag + line + b"\r\n")
        window = self.buf
        before = len(window)
        arrived = 0
        scanned = 0  # octets of `window` known not to start the tagged line
        while True:
            pos = 0 if window.startswith(tag) else window.find(b"\r\n" + tag, max(0, scanned - 2))
            if pos > 0:
                pos += 2
            if pos >= 0:
                end = window.find(b"\r\n", pos)
                if end >= 0:
                    result, self.buf = window[pos : end + 2], window[end + 2 :]
                    return result, before + arrived - len(self.buf) - len(result)
            else:
                # Drop what cannot hold the tag any more, keeping a tail in case it straddles reads.
                keep = len(tag) + 2
                if len(window) > keep:
                    window = window[-keep:]
                scanned = len(window)
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            arrived += len(data)
            window += data

    def timed(self, text: str) -> tuple[float, int]:
        started = time.perf_counter()
        result, received = self.command(text)
        elapsed = time.perf_counter() - started
        if b" OK" not in result:
            raise RuntimeError(f"{text!r} -> {result!r}")
        return elapsed, received

    def close(self) -> None:
        self.sock.close()


def _pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _children(k)]


# -- the servers -------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None
    pids: object  # callable returning the process ids to measure

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing on port {port}")


def start_kartero(folder: Path, messages: list[bytes], store_url: str = "") -> Server:
    """Kartero holding `messages`, on the embedded store or, with `store_url`, on that PostgreSQL database
    (its schema made already; bench/cluster.py)."""
    from kartero.auth.passwords import hash_password
    from kartero.store.backends import open_store
    from kartero.store.ids import new_message_id
    from kartero.store.interface import Delivery, DeliveryTarget

    port = free_port()
    store_table = f'[store]\nbackend = "postgresql"\nurl = "{store_url}"\n' if store_url else ""
    (folder / "kartero.toml").write_text(
        f'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\nlog_level = "warning"\n'
        f'[listen]\nimap = ["127.0.0.1:{port}"]\n[limits]\nconnections = 5000\n' + store_table
    )
    store = open_store(folder / "data", "postgresql" if store_url else "sqlite", store_url)
    account = store.accounts.add_account(USER, hash_password(PASSWORD))
    store.start()
    futures = [
        store.mail.deliver(Delivery(new_message_id(), m, (DeliveryTarget(account.id),), 1_795_687_200 + i))
        for i, m in enumerate(messages)
    ]
    for f in futures:
        f.result()
    store.close()
    # This checkout's Kartero (PYTHONPATH), wherever the bench is started from.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "kartero", "-c", str(folder / "kartero.toml"), "serve"],
                            stdout=subprocess.DEVNULL, env=env, cwd=ROOT)  # fmt: skip
    wait_port(port)
    return Server("kartero", port, proc, lambda: [proc.pid])


DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{root}/mail/%n/Maildir
first_valid_uid = 1
mail_fsync = always
auth_cache_size = 1M
auth_cache_ttl = 15 min
passdb {{
  driver = passwd-file
  args = username_format=%n {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%n
}}
default_process_limit = 5000
default_client_limit = 10000
default_vsz_limit = 0
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  service_count = 0
  process_min_avail = 2
}}
service anvil {{
  client_limit = 20000
}}
protocol imap {{
  mail_max_userip_connections = 100000
}}
"""


def start_dovecot(folder: Path, messages: list[bytes], extra_conf: str = "") -> Server:
    """A private Dovecot 2.3 (root, Maildir, a free loopback port) holding `messages`, message i dated
    1_795_687_200 + i like Kartero's; `extra_conf` is appended to DOVECOT_CONF (formatted the same way)."""
    if shutil.which("dovecot") is None or os.geteuid() != 0:
        raise SystemExit("Dovecot comparison needs root and the dovecot-imapd package (or use --no-dovecot)")
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    folder.chmod(0o755)
    for parent in folder.parents:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    maildir = folder / "mail" / "bob" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i, message in enumerate(messages):
        path = maildir / "cur" / f"{1_795_687_200 + i}.M{i}P1.bench,S={len(message)}:2,"
        path.write_bytes(message)
        os.utime(path, (1_795_687_200 + i, 1_795_687_200 + i))  # Maildir INTERNALDATE is the file's mtime
    for path in [folder / "mail", *(folder / "mail").rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    # The same argon2id cost as Kartero's own hashes, so LOGIN compares like with like.
    from kartero.auth.passwords import hash_password

    (folder / "passwd").write_text(f"bob:{{ARGON2ID}}{hash_password(PASSWORD)}::::::\n")
    conf = folder / "dovecot.conf"
    settings = {"root": folder, "password": PASSWORD, "uid": nobody.pw_uid, "gid": nobody.pw_gid, "port": port}
    conf.write_text(DOVECOT_CONF.format(**settings) + extra_conf.format(**settings))
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Server("dovecot", port, proc, lambda: [proc.pid, *_children(proc.pid)])


# -- measurements --------------------------------------------------------------------------------------


def measure(server: Server, idle_connections: int, append_count: int, append_messages: list[bytes]) -> dict[str, float]:
    results: dict[str, float] = {}
    warm = Client(server.port)
    results["LOGIN first ms"] = warm.timed(f"LOGIN {USER} {PASSWORD}")[0] * 1000
    warm.timed("SELECT INBOX")  # Dovecot builds its index here; not counted
    warm.timed("UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)")
    warm.close()

    c = Client(server.port)
    results["LOGIN again ms"] = c.timed(f"LOGIN {USER} {PASSWORD}")[0] * 1000
    results["SELECT ms"] = c.timed("SELECT INBOX")[0] * 1000
    results["UID FETCH envelope ms"] = c.timed("UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)")[0] * 1000
    elapsed, received = c.timed("FETCH 1:* BODY.PEEK[]")
    results["FETCH BODY[] MB/s"] = received / elapsed / 1e6
    results["UID SEARCH SUBJECT ms"] = c.timed("UID SEARCH SUBJECT charlie")[0] * 1000
    results["STORE +FLAGS ms"] = c.timed("STORE 1:* +FLAGS.SILENT (\\Flagged)")[0] * 1000
    c.timed("CREATE Bench")
    started = time.perf_counter()
    for message in append_messages[:append_count]:
        c.sock.sendall(b"a APPEND Bench {%d+}\r\n" % len(message) + message + b"\r\n")
        line = c._read_until(b"\r\n")
        while not line.startswith(b"a "):
            line = c._read_until(b"\r\n")
        if b" OK" not in line:
            raise RuntimeError(f"APPEND failed: {line!r}")
    results["APPEND msgs/s"] = append_count / (time.perf_counter() - started)
    c.close()

    if idle_connections:
        time.sleep(1)
        before = _pss_kib(server.pids())  # type: ignore[operator]
        idle = []
        for _ in range(idle_connections):
            client = Client(server.port)
            client.sock.sendall(f"a LOGIN {USER} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
            client._read_until(b"+ idling")
            idle.append(client)
        time.sleep(2)
        after = _pss_kib(server.pids())  # type: ignore[operator]
        results["KiB per IDLE connection"] = (after - before) / idle_connections
        for client in idle:
            client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--idle", type=int, default=1000, help="IDLE connections for the memory row")
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--no-dovecot", action="store_true")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    messages = make_messages(args.messages)
    extra = make_messages(args.appends, seed=11)
    total = sum(len(m) for m in messages)
    print(
        f"mailbox: {len(messages)} messages, {total / 1e6:.1f} MB; {args.idle} IDLE connections; {os.cpu_count()} CPUs"
    )
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kartero-imap-bench-") as tmp:
        kinds = ["kartero"] + ([] if args.no_dovecot else ["dovecot"])
        for kind in kinds:
            folder = Path(tmp) / kind
            folder.mkdir()
            print(f"measuring {kind} ...", flush=True)
            server = (start_kartero if kind == "kartero" else start_dovecot)(folder, messages)
            try:
                table[kind] = measure(server, args.idle, args.appends, extra)
            finally:
                server.stop()
    rows = list(table["kartero"])
    header = f"{'':28} {'kartero':>10}" + ("" if args.no_dovecot else f" {'dovecot':>10} {'ratio':>7}")
    print(header)
    for row in rows:
        k = table["kartero"][row]
        line = f"{row:28} {k:10.1f}"
        if not args.no_dovecot:
            d = table["dovecot"][row]
            higher_is_better = "/s" in row
            ratio = (d / k if higher_is_better else k / d) if k and d else float("nan")
            line += f" {d:10.1f} {ratio:6.2f}x"
        print(line)
    if not args.no_dovecot:
        print("ratio: how many times Kartero's cost is Dovecot's (time, memory) or Dovecot's rate is Kartero's;"
              " below 2 meets the aim")  # fmt: skip


if __name__ == "__main__":
    main()
