"""A private rspamd for tests: Debian's rspamd with a config folder of its own in a temporary folder,
every worker on its own free loopback port, and a private redis-server (its own port, no persistence)
for the Bayes statistics. Never touches a system instance; stopped and removed at teardown.

The configuration (docs/spam.md "rspamd" shows the same) includes Debian's defaults from /etc/rspamd
and changes only what a test needs:
- the proxy worker in milter mode (`self_scan`: it scans itself, no normal worker behind it), the
  controller (learning and /stat; no password from 127.0.0.1 through `secure_ip`);
- no DNS and no network: the resolver is a dead loopback port and the modules that ask the world
  (RBLs, SPF, DKIM, DMARC, fuzzy, remote maps, ASN...) are off, so a verdict depends on the message
  alone and comes at once;
- Bayes in the private redis with `min_learns = 1`, so one learned message shows in /stat;
- greylisting and the `greylist` action off (a 4xx for a middling score would make tests flaky);
- one deterministic trigger for "add header": a message with the header `X-Kartero-Test: junk`
  (multimap rule KARTERO_TEST_JUNK, prefilter action "add header"); GTUBE gives "reject" as always.

Run as root (CI), rspamd drops to Debian's `_rspamd` user (it refuses to run workers as root) and
the redis-server to `redis`; the temporary folder is theirs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

RSPAMD = "/usr/bin/rspamd"
REDIS = "/usr/bin/redis-server"

# The header a test message carries to be marked "add header" (rspamd's milter then adds X-Spam: Yes).
TEST_JUNK_HEADER = "X-Kartero-Test: junk"

# rspamd's default GTUBE symbol: action "reject" whatever the other rules say.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# Modules that would ask the world (DNS, HTTP maps, remote fuzzy storage) or keep state across
# messages (greylisting, rate limits, reputation): off in the private instance.
_DISABLED_MODULES = (
    "asn", "bimi", "dcc", "dkim", "dmarc", "emails", "external_relay", "fuzzy_check", "greylist",
    "history_redis", "maillist", "metadata_exporter", "mx_check", "neural", "p0f", "phishing",
    "ratelimit", "rbl", "replies", "reputation", "rspamd_update", "spamtrap", "spf", "surbl",
    "url_redirector", "whitelist", "arc", "dkim_signing", "clickhouse", "elastic", "antivirus",
    "external_services", "once_received", "mid", "trie",
)  # fmt: skip


def available() -> bool:
    """Debian's rspamd and redis-server are installed (.ci/run installs them)."""
    return all(os.path.exists(path) for path in (RSPAMD, REDIS, "/usr/bin/redis-cli"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _dead_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nothing listens on: a query there is refused at once (ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PrivateRspamd:
    """rspamd (proxy worker in milter mode + controller) and its redis; `milter_port`, `controller_url`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        if not available():
            raise RuntimeError("rspamd or redis-server is not installed (Debian: apt-get install rspamd redis-server)")
        self.host = host
        self.milter_port = free_port(host)
        self.controller_port = free_port(host)
        self.normal_port = free_port(host)
        self.redis_port = free_port(host)
        self.root = Path(tempfile.mkdtemp(prefix="kartero-rspamd-"))
        self.root.chmod(0o711)  # redis and rspamd run as users of their own (root runs) and need to pass
        self.conf = self.root / "conf"
        self.run_dir = self.root / "run"
        self.db_dir = self.root / "db"
        self.log_dir = self.root / "log"
        self.redis_dir = self.root / "redis"
        for folder in (self.conf / "local.d", self.conf / "override.d", self.run_dir, self.db_dir, self.log_dir,
                       self.redis_dir):  # fmt: skip
            folder.mkdir(parents=True)
        self.rspamd: subprocess.Popen[bytes] | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        root_run = os.geteuid() == 0
        self.rspamd_user = "_rspamd" if root_run else None
        self.redis_user = "redis" if root_run else None

    @property
    def controller_url(self) -> str:
        return f"http://{self.host}:{self.controller_port}"

    @property
    def log(self) -> Path:
        return self.log_dir / "rspamd.log"

    # -- start and stop ---------------------------------------------------------------------------

    def start(self) -> None:
        self._write_config()
        self._start_redis()
        self._start_rspamd()

    def _start_redis(self) -> None:
        if self.redis_user is not None:
            entry = pwd.getpwnam(self.redis_user)
            os.chown(self.redis_dir, entry.pw_uid, entry.pw_gid)
        with open(self.root / "redis.out", "ab") as out:
            self.redis = subprocess.Popen(
                [REDIS, "--bind", self.host, "--port", str(self.redis_port), "--dir", str(self.redis_dir),
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
                 "--logfile", ""],
                stdout=out, stderr=out, user=self.redis_user, start_new_session=True, cwd=self.redis_dir,
            )  # fmt: skip
        self._wait(lambda: self._redis_ping(), self.redis, "redis-server", self.root / "redis.out")

    def _redis_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _start_rspamd(self) -> None:
        if self.rspamd_user is not None:
            entry = pwd.getpwnam(self.rspamd_user)
            for path in self.root.rglob("*"):
                if path.is_relative_to(self.redis_dir):
                    continue
                os.chown(path, entry.pw_uid, entry.pw_gid)
        argv = [RSPAMD, "--no-fork", "-c", str(self.conf / "rspamd.conf"),
                "--var", f"LOCAL_CONFDIR={self.conf}", "--var", f"DBDIR={self.db_dir}",
                "--var", f"RUNDIR={self.run_dir}", "--var", f"LOGDIR={self.log_dir}"]  # fmt: skip
        if self.rspamd_user is not None:
            argv += ["-u", self.rspamd_user, "-g", self.rspamd_user]
        with open(self.root / "rspamd.out", "ab") as out:
            self.rspamd = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True, cwd=self.root)
        self._wait(self._is_ready, self.rspamd, "rspamd", self.log)

    def _is_ready(self) -> bool:
        """The controller answers /ping and the milter port accepts: both workers are up."""
        try:
            with socket.create_connection((self.host, self.milter_port), timeout=1):
                pass
            return self.controller("GET", "/ping")[0] == 200
        except OSError:
            return False

    @staticmethod
    def _wait(check: Any, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"{name} did not start: {text}")
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready in 60 s")

    def stop(self) -> None:
        """Stop rspamd (SIGTERM to its master, which ends its workers), then redis."""
        for process in (self.rspamd, self.redis):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.rspamd = None
        self.redis = None

    def stop_rspamd(self) -> None:
        """Stop only rspamd (the controller-down tests); `start_rspamd()` brings it back on the same ports."""
        if self.rspamd is not None and self.rspamd.poll() is None:
            self.rspamd.send_signal(signal.SIGTERM)
            self.rspamd.wait(15)
        self.rspamd = None

    def start_rspamd(self) -> None:
        self._start_rspamd()

    def pause(self) -> None:
        """Freeze every rspamd process (SIGSTOP): connections are accepted by the kernel and never
        answered, as from a hung controller. `resume()` lets them go on."""
        assert self.rspamd is not None
        os.killpg(self.rspamd.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.rspamd is not None
        os.killpg(self.rspamd.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- talking to it ----------------------------------------------------------------------------

    def controller(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.controller_port, timeout=10)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stat(self) -> dict[str, Any]:
        """The controller's /stat as JSON (`learned`, `statfiles` with BAYES_SPAM/BAYES_HAM `revision`)."""
        status, body = self.controller("GET", "/stat")
        if status != 200:
            raise RuntimeError(f"/stat answered {status}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def learned(self) -> tuple[int, int]:
        """How many messages Bayes has learned as (spam, ham), exactly, from its counters in redis (the
        statfiles of /stat are refreshed only every minute; its `learned` counts every learn of both)."""
        out = subprocess.run(["redis-cli", "-h", self.host, "-p", str(self.redis_port), "--raw", "HMGET", "RS",
                              "learns_spam", "learns_ham"], capture_output=True, text=True, check=True).stdout
        spam, ham = (int(v) if v.strip() else 0 for v in out.splitlines()[:2])
        return spam, ham

    def check(self, message: bytes) -> dict[str, Any]:
        """Scan a message through the controller's /checkv2 (the verdict without the milter)."""
        status, body = self.controller("POST", "/checkv2", message)
        if status != 200:
            raise RuntimeError(f"/checkv2 answered {status}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    # -- configuration ----------------------------------------------------------------------------

    def _write_config(self) -> None:
        h = self.host
        files = {
            "rspamd.conf": f"""
.include "$CONFDIR/common.conf"

options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}

logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}

worker "normal" {{
    bind_socket = "{h}:{self.normal_port}";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}

worker "controller" {{
    bind_socket = "{h}:{self.controller_port}";
    .include "$CONFDIR/worker-controller.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/worker-controller.inc"
}}

worker "rspamd_proxy" {{
    bind_socket = "{h}:{self.milter_port}";
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/worker-proxy.inc"
}}
""",
            # Every socket on loopback; the resolver a dead port (no lookups leave the machine).
            "local.d/options.inc": f"""
dns {{
    nameserver = ["{h}:{_dead_udp_port(h)}"];
    timeout = 0.1s;
    retransmits = 1;
}}
control_socket = "$DBDIR/rspamd.sock mode=0600";
task_timeout = 8s;
# Debian's list of 9,600 public suffixes takes rspamd ~12 s to compile at every start; tests need few.
url_tld = "$LOCAL_CONFDIR/tld.dat";
""",
            "local.d/worker-controller.inc": """
password = "kartero-test";
enable_password = "kartero-test";
secure_ip = "127.0.0.1";
""",
            "override.d/worker-proxy.inc": """
milter = yes;
timeout = 20s;
upstream "local" {
    default = yes;
    self_scan = yes;
}
count = 1;
max_retries = 5;
discard_on_reject = false;
quarantine_on_reject = false;
spam_header = "X-Spam";
reject_message = "Spam message rejected";
""",
            "local.d/redis.conf": f'servers = "{h}:{self.redis_port}";\ntimeout = 2s;\n',
            "local.d/classifier-bayes.conf": "min_learns = 1;\nmin_tokens = 1;\nbackend = \"redis\";\n",
            "local.d/actions.conf": "greylist = null;\n",
            # Only the test rule: Debian's multimap rules fetch maps over HTTPS.
            "override.d/multimap.conf": f"""
KARTERO_TEST_JUNK {{
    type = "header";
    header = "X-Kartero-Test";
    map = "file://{self.conf}/test-junk.map";
    symbol = "KARTERO_TEST_JUNK";
    description = "A test message that asks to be marked as junk";
    prefilter = true;
    action = "add header";
    score = 0.0;
}}
""",
            "test-junk.map": "junk\n",
            "tld.dat": "com\nnet\norg\ntest\nexample\n",
        }
        for module in _DISABLED_MODULES:
            files[f"override.d/{module}.conf"] = "enabled = false;\n"
        for name, text in files.items():
            (self.conf / name).write_text(text.lstrip())
