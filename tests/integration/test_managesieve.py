"""ManageSieve (RFC 5804) and `kartero sieve` against a real `kartero serve`, on both store backends:
Debian's sieve-connect over STARTTLS verified with a test CA, the CLI commands (their output and exit
codes, run in this process: harness.run_cli_in_process), and a raw socket for literals and error codes.
One server per backend for the module; each test works on its own account.

The tests that store or check a script need the real `kartero.sieve.compile_script` (the Sieve
interpreter, merged separately): before it is there, the server refuses them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer, run_cli, run_cli_in_process
from tests.integration.testca import TestCA
from tests.pgserver import PrivatePostgres

PASSWORD = "sieve password"
SCRIPT = 'require "fileinto";\r\nif header :contains "subject" "[list]" {\r\n  fileinto "Lists";\r\n}\r\n'
BROKEN = 'require "fileinto";\r\nif header :contains "subject" {\r\n  fileinto "Lists";\r\n}\r\n'
BROKEN_AT = "2:21: "  # where the interpreter finds the missing key list


class Setup:
    def __init__(self, server: KarteroServer, ca: Path) -> None:
        self.server = server
        self.ca = ca


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("managesieve")
    ca = TestCA(root / "ca")
    ca.issue(["mx.example.test"], root / "mx" / "tls" / "cert.pem", root / "mx" / "tls" / "key.pem")
    url = None
    if request.param == "postgresql":
        postgres: PrivatePostgres = request.getfixturevalue("postgres")
        url = postgres.migrated_database()
    server = KarteroServer(root / "mx", store_url=url)
    for user in ("bob", "carol", "dave", "erin"):
        server.add_user(f"{user}@example.test", PASSWORD)
    server.start()
    yield Setup(server, ca.cert_path)
    assert server.stop() == 0, server.log


def sieve_connect(setup: Setup, user: str, *args: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """One sieve-connect action over STARTTLS, the certificate verified against the test CA."""
    server = setup.server
    return subprocess.run(
        ["sieve-connect", "--nosrv", "--server", server.host, "--port", str(server.managesieve_port),
         "--tlscafile", str(setup.ca), "--tlshostname", "mx.example.test", "--noclearauth", "--authmech", "PLAIN",
         "--user", user, "--passwordfd", "0", *args],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, cwd=workdir, check=False,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("sieve-connect") is None, reason="sieve-connect is not installed")
def test_sieve_connect_uploads_lists_activates_downloads_and_deletes(setup: Setup, tmp_path: Path) -> None:
    user = "bob@example.test"
    (tmp_path / "rules.sieve").write_text(SCRIPT, newline="")
    upload = sieve_connect(setup, user, "--localsieve", "rules.sieve", "--remotesieve", "rules", "--upload",
                           workdir=tmp_path)  # fmt: skip
    assert upload.returncode == 0, upload.stderr
    activate = sieve_connect(setup, user, "--remotesieve", "rules", "--activate", workdir=tmp_path)
    assert activate.returncode == 0, activate.stderr
    listing = sieve_connect(setup, user, "--list", workdir=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split("\n")[0].strip() in ('"rules" ACTIVE', "rules  <-- active"), listing.stdout
    assert run_cli(setup.server.config, "sieve", "list", user).stdout == "rules  (active)\n"
    download = sieve_connect(setup, user, "--remotesieve", "rules", "--localsieve", "back.sieve", "--download",
                             workdir=tmp_path)  # fmt: skip
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "back.sieve").read_bytes() == SCRIPT.encode()
    refused = sieve_connect(setup, user, "--remotesieve", "rules", "--delete", workdir=tmp_path)
    assert refused.returncode != 0 and "ACTIVE" in refused.stderr + refused.stdout
    assert sieve_connect(setup, user, "--deactivate", workdir=tmp_path).returncode == 0
    deleted = sieve_connect(setup, user, "--remotesieve", "rules", "--delete", workdir=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert run_cli(setup.server.config, "sieve", "list", user).stdout == ""
    (tmp_path / "broken.sieve").write_text(BROKEN, newline="")
    broken = sieve_connect(setup, user, "--localsieve", "broken.sieve", "--remotesieve", "broken", "--upload",
                           workdir=tmp_path)  # fmt: skip
    assert broken.returncode != 0 and BROKEN_AT in broken.stderr + broken.stdout
    assert setup.server.log_events("managesieve.login")


def test_cli_commands(setup: Setup, tmp_path: Path) -> None:
    config, user = setup.server.config, "carol@example.test"
    (tmp_path / "a.sieve").write_text(SCRIPT, newline="")
    assert run_cli_in_process(config, "sieve", "put", user, "a", str(tmp_path / "a.sieve")).stdout == "stored a\n"
    assert run_cli_in_process(config, "sieve", "put", user, "b", "-", stdin="keep;\n").stdout == "stored b\n"
    assert run_cli_in_process(config, "sieve", "activate", user, "b").stdout == "activated b\n"
    assert run_cli_in_process(config, "sieve", "list", user).stdout == "a\nb  (active)\n"
    got = run_cli_in_process(config, "sieve", "get", user, "a").stdout
    assert got == SCRIPT.replace("\r\n", "\n")  # text mode reads
    failed = run_cli_in_process(config, "sieve", "del", user, "b", check=False)
    assert failed.returncode == 1 and "is the active script" in failed.stderr
    assert run_cli_in_process(config, "sieve", "deactivate", user).stdout == f"no active script for {user}\n"
    assert run_cli_in_process(config, "sieve", "del", user, "b").stdout == "deleted b\n"
    missing = run_cli_in_process(config, "sieve", "get", user, "b", check=False)
    assert (missing.returncode, missing.stderr) == (1, f"kartero: no script b for {user}\n")
    # A syntax error: exit 1 and `line:column: message`, nothing stored.
    (tmp_path / "broken.sieve").write_text(BROKEN, newline="")
    broken = run_cli_in_process(config, "sieve", "put", user, "broken", str(tmp_path / "broken.sieve"), check=False)
    assert broken.returncode == 1 and broken.stderr.startswith(BROKEN_AT), broken.stderr
    checked = run_cli_in_process(config, "sieve", "check", str(tmp_path / "broken.sieve"), check=False)
    assert checked.returncode == 1 and checked.stderr.startswith(BROKEN_AT)
    assert run_cli_in_process(config, "sieve", "check", str(tmp_path / "a.sieve")).stdout == "ok\n"
    assert run_cli_in_process(config, "sieve", "list", user).stdout == "a\n"
    # The global scripts (include :global) are apart from every account's.
    stored = run_cli_in_process(config, "sieve", "put", "--global", "spam", "-", stdin="keep;\n").stdout
    assert stored == "stored spam\n"
    assert run_cli_in_process(config, "sieve", "list", "--global").stdout == "spam\n"
    assert run_cli_in_process(config, "sieve", "get", "--global", "spam").stdout == "keep;\n"
    assert run_cli_in_process(config, "sieve", "del", "--global", "spam").stdout == "deleted spam\n"
    unknown = run_cli_in_process(config, "sieve", "list", "nobody@example.test", check=False)
    assert (unknown.returncode, unknown.stderr) == (2, "kartero: no account nobody@example.test\n")
    bad_name = run_cli_in_process(config, "sieve", "put", user, "a\tb", "-", stdin="keep;\n", check=False)
    assert bad_name.returncode == 2


class Raw:
    """A ManageSieve client on a socket: whole responses (up to OK/NO/BYE), literals read by count."""

    def __init__(self, server: KarteroServer) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((server.host, server.managesieve_port),
                                                                            timeout=30)  # fmt: skip
        self.buffer = b""

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.response()

    def challenge(self, data: bytes) -> bytes:
        """Send, and read one line: a SASL challenge (a string, not a response)."""
        self.sock.sendall(data)
        return self._line()

    def response(self) -> bytes:
        out = b""
        while True:
            line = self._line()
            out += line
            if line.endswith(b"}\r\n") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : -3])
                out += self._exactly(size)
                if line.startswith((b"OK", b"NO", b"BYE")):
                    return out + self._line()
                continue
            if line.startswith((b"OK", b"NO", b"BYE")):
                return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(self.buffer)
        self.buffer += data


def test_raw_literals_codes_and_limits(setup: Setup) -> None:
    raw = Raw(setup.server)
    greeting = raw.response()
    assert b'"IMPLEMENTATION" "Kartero"\r\n' in greeting and b'"STARTTLS"\r\n' in greeting
    assert b'"SIEVE" "' in greeting and greeting.endswith(b'OK "Kartero ManageSieve ready"\r\n')
    context = ssl.create_default_context(cafile=str(setup.ca))
    assert raw.send(b"STARTTLS\r\n") == b'OK "Begin TLS negotiation"\r\n'
    raw.sock = context.wrap_socket(raw.sock, server_hostname="mx.example.test")
    again = raw.response()
    assert b'"STARTTLS"' not in again and b'"SASL" "PLAIN SCRAM-SHA-256"' in again
    assert raw.send(b'LISTSCRIPTS\r\n') == b'NO "Authenticate first"\r\n'
    assert raw.send(b'AUTHENTICATE "PLAIN" {36+}\r\nAGRhdmVAZXhhbXBsZS50ZXN0AHdyb25nIHB3\r\n') == (
        b'NO "Authentication failed"\r\n'
    )
    assert raw.send(b'AUTHENTICATE "PLAIN" "AGRhdmVAZXhhbXBsZS50ZXN0AHNpZXZlIHBhc3N3b3Jk"\r\n') == b'OK "Logged in"\r\n'
    script = SCRIPT.encode()
    assert raw.send(b'HAVESPACE "r" %d\r\n' % len(script)) == b'OK "Putscript would succeed"\r\n'
    assert raw.send(b'PUTSCRIPT "r" {%d+}\r\n%s\r\n' % (len(script), script)) == b'OK "Putscript completed"\r\n'
    assert raw.send(b'GETSCRIPT "r"\r\n') == b"{%d}\r\n%s\r\nOK \"Getscript completed\"\r\n" % (len(script), script)
    assert raw.send(b'GETSCRIPT "none"\r\n') == b'NO (NONEXISTENT) "No such script"\r\n'
    assert raw.send(b'SETACTIVE "r"\r\n') == b'OK "Setactive completed"\r\n'
    assert raw.send(b'DELETESCRIPT "r"\r\n') == b'NO (ACTIVE) "The active script cannot be deleted"\r\n'
    assert raw.send(b'RENAMESCRIPT "r" "s"\r\n') == b'OK "Renamescript completed"\r\n'
    assert raw.send(b'LISTSCRIPTS\r\n') == b'"s" ACTIVE\r\nOK "Listscripts completed"\r\n'
    # A literal over the script limit is refused from its header; its octets are skipped, not kept.
    big = 1024 * 1024 + 1
    assert raw.send(b'PUTSCRIPT "big" {%d+}\r\n' % big + b"#" * big + b"\r\n") == (
        b'NO (QUOTA/MAXSIZE) "Script is too big"\r\n'
    )
    too_big = b'NO (QUOTA/MAXSIZE) "Scripts may have at most 1048576 octets"\r\n'
    assert raw.send(b'HAVESPACE "big" %d\r\n' % big) == too_big
    broken = raw.send(b'PUTSCRIPT "broken" {%d+}\r\n%s\r\n' % (len(BROKEN), BROKEN.encode()))
    assert broken.startswith(b'NO "' + BROKEN_AT.encode()), broken
    assert raw.send(b'NOOP "sync-1"\r\n') == b'OK (TAG "sync-1") "Done"\r\n'
    assert raw.send(b"LOGOUT\r\n") == b'OK "Logout completed"\r\n'
    assert raw.sock.recv(10) == b""
    assert run_cli(setup.server.config, "sieve", "list", "dave@example.test").stdout == "s  (active)\n"


def test_raw_scram_login_sends_the_server_signature(setup: Setup) -> None:
    raw = Raw(setup.server)
    raw.response()
    client_first = b"n,,n=erin@example.test,r=clientnonce"
    server_first = base64.b64decode(
        raw.challenge(b'AUTHENTICATE "SCRAM-SHA-256" "%s"\r\n' % base64.b64encode(client_first)).strip(b'"\r\n')
    )
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = b"c=biws,r=" + attrs[b"r"]
    auth_message = client_first[3:] + b"," + server_first + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    verifier = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
    final = base64.b64encode(without_proof + b",p=" + proof)
    assert raw.send(b'"%s"\r\n' % final) == b'OK (SASL "%s") "Logged in"\r\n' % base64.b64encode(verifier)
    assert raw.send(b"LISTSCRIPTS\r\n") == b'OK "Listscripts completed"\r\n'
    assert raw.send(b"UNAUTHENTICATE\r\n") == b'OK "Unauthenticate completed"\r\n'
    assert raw.send(b"LISTSCRIPTS\r\n") == b'NO "Authenticate first"\r\n'


RULES = """require ["fileinto", "mailbox", "imap4flags", "editheader"];
if header :contains "list-id" "dev.lists.remote.test" {
    addheader "X-Sorted" "dev list";
    fileinto :create :flags ["\\\\Seen", "$Dev"] "Lists/dev";
}
"""


def test_issue_12_a_script_uploaded_with_sieve_connect_sorts_mail_seen_over_imap(setup: Setup, tmp_path: Path) -> None:
    """The whole path a user takes: upload and activate with sieve-connect, mail arrives over SMTP, the
    mail client finds it over IMAP in the folder the rule made, with the rule's flags and header."""
    user = "erin@example.test"
    (tmp_path / "rules.sieve").write_text(RULES.replace("\n", "\r\n"), newline="")
    for action in (["--localsieve", "rules.sieve", "--remotesieve", "rules", "--upload"],
                   ["--remotesieve", "rules", "--activate"]):  # fmt: skip
        done = sieve_connect(setup, user, *action, workdir=tmp_path)
        assert done.returncode == 0, done.stderr
    server = setup.server
    listed = (b"From: Alice <alice@remote.test>\r\nTo: erin@example.test\r\nSubject: release plan\r\n"
              b"List-Id: Dev <dev.lists.remote.test>\r\n\r\nHello list.\r\n")  # fmt: skip
    personal = b"From: Alice <alice@remote.test>\r\nTo: erin@example.test\r\nSubject: lunch\r\n\r\nHi.\r\n"
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.sendmail("alice@remote.test", [user], listed)
        smtp.sendmail("alice@remote.test", [user], personal)
    with imaplib.IMAP4(server.host, server.imap_port, timeout=10) as imap:
        imap.login(user, PASSWORD)
        assert imap.select('"Lists/dev"') == ("OK", [b"1"])
        status, data = imap.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT X-SORTED)])")
        assert status == "OK"
        head, fields = data[0]  # type: ignore[misc]
        assert head == b"1 (FLAGS ($Dev \\Recent \\Seen) BODY[HEADER.FIELDS (SUBJECT X-SORTED)] {45}"  # rev1: \\Recent
        assert fields == b"X-Sorted: dev list\r\nSubject: release plan\r\n\r\n"  # addheader puts it first
        assert imap.select("INBOX") == ("OK", [b"1"])
        status, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: lunch\r\n\r\n"  # type: ignore[index]
