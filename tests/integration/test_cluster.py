"""Issue 11: two Kartero nodes (127.0.0.2 and 127.0.0.3) on one PostgreSQL database act as one server."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from imapclient import IMAPClient

from tests.integration.harness import (
    KarteroServer,
    free_port,
    run_cli,
    run_cli_in_process,
    strip_trace,
    tls_context,
    two_nodes,
    wait_for,
)
from tests.pgserver import PrivatePostgres

PASSWORD = "secret-password"


@pytest.fixture
def nodes(tmp_path: Path, postgres: PrivatePostgres) -> Iterator[tuple[KarteroServer, KarteroServer]]:
    with two_nodes(tmp_path, postgres.migrated_database(), {"bob@example.test": PASSWORD}) as pair:
        yield pair


@pytest.fixture
def servers() -> Iterator[list[KarteroServer]]:
    """Servers a test starts itself: stopped at teardown if a failure left them running (a `serve
    --workers` supervisor with SIGTERM, so that its workers stop too)."""
    started: list[KarteroServer] = []
    yield started
    for server in started:
        if server.process and server.process.poll() is None:
            try:
                server.stop(timeout_s=30)
            except Exception:
                server.kill()


def send(node: KarteroServer, body: bytes, rcpt: str = "bob@example.test") -> None:
    with smtplib.SMTP(node.host, node.port) as s:
        s.sendmail("alice@example.org", [rcpt], body)


def test_issue_11_mail_at_one_node_is_read_at_the_other_and_idle_wakes_there(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    """SMTP at A, IMAP and POP3 at B: the same UID and bytes; IDLE at B wakes within a second of A's 250."""
    a, b = nodes
    with IMAPClient(b.host, b.imap_port, ssl=False) as idler:
        idler.login("bob@example.test", PASSWORD)
        idler.select_folder("INBOX")
        idler.idle()
        sent_at = time.monotonic()
        send(a, b"Subject: across\r\n\r\nfrom node A\r\n")
        acknowledged = time.monotonic()
        responses = idler.idle_check(timeout=5)
        woken = time.monotonic()
        idler.idle_done()
        assert (1, b"EXISTS") in responses, responses
        print(f"IDLE at B woke {1000 * (woken - acknowledged):.0f} ms after A's 250 "
              f"({1000 * (woken - sent_at):.0f} ms after the send began)")  # fmt: skip
        assert woken - acknowledged < 1.0
    with imaplib.IMAP4(b.host, b.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1", "(UID BODY.PEEK[])")
        assert typ == "OK"
        assert data[0] is not None and isinstance(data[0], tuple)
        assert strip_trace(data[0][1]) == b"Subject: across\r\n\r\nfrom node A\r\n"
    pop = poplib.POP3(b.host, b.pop3_port)
    try:
        pop.user("bob@example.test")
        pop.pass_(PASSWORD)
        assert pop.stat()[0] == 1
    finally:
        pop.quit()


def test_issue_11_flags_set_at_one_node_are_seen_at_the_other_with_their_modseq(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    a, b = nodes
    send(a, b"Subject: flags\r\n\r\nx\r\n")
    with IMAPClient(a.host, a.imap_port, ssl=False) as at_a, IMAPClient(b.host, b.imap_port, ssl=False) as at_b:
        for client in (at_a, at_b):
            client.login("bob@example.test", PASSWORD)
            client.enable("CONDSTORE")
            client.select_folder("INBOX")
        at_b.idle()
        at_a.add_flags([1], [b"$Important"], silent=True)
        modseq_a = at_a.fetch([1], ["MODSEQ"])[1][b"MODSEQ"][0]
        responses = at_b.idle_check(timeout=5)
        at_b.idle_done()
        assert any(r[1] == b"FETCH" for r in responses), responses
        seen = at_b.fetch([1], ["FLAGS", "MODSEQ"])[1]
        assert b"$Important" in seen[b"FLAGS"]
        assert seen[b"MODSEQ"][0] == modseq_a


def test_issue_11_a_user_added_through_one_nodes_cli_receives_at_the_other(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    """A user added through B's CLI is accepted at A the moment the command returns, never refused in
    between (550 is final): A confirms an unknown recipient against the database, not only its feed."""
    a, b = nodes
    run_cli_in_process(b.config, "user", "add", "carol@example.test", "--password-stdin", stdin="user-password\n")
    send(a, b"Subject: welcome\r\n\r\nhi\r\n", "carol@example.test")  # raises on a refusal
    for n in range(20):  # added in this process, the message sent the moment the commit returns
        b.add_user(f"user{n}@example.test", "user-password")
        send(a, b"Subject: welcome\r\n\r\nhi\r\n", f"user{n}@example.test")
    with imaplib.IMAP4(b.host, b.imap_port) as imap:
        imap.login("carol@example.test", "user-password")
        typ, data = imap.select("INBOX")
        assert typ == "OK" and data == [b"1"]


def test_issue_11_uids_stay_distinct_when_both_nodes_deliver_at_once(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    """Deliveries at both nodes at the same time: every message gets a UID of its own, in one sequence."""
    import threading

    a, b = nodes

    def burst(node: KarteroServer, tag: str) -> None:
        with smtplib.SMTP(node.host, node.port) as s:
            for i in range(20):
                s.sendmail("alice@example.org", ["bob@example.test"], f"Subject: {tag}{i}\r\n\r\nx\r\n".encode())

    threads = [threading.Thread(target=burst, args=(node, tag)) for node, tag in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with imaplib.IMAP4(a.host, a.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select("INBOX")
        typ, data = imap.uid("SEARCH", "ALL")
        assert typ == "OK"
        assert [int(u) for u in data[0].split()] == list(range(1, 41))
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = {part[1].strip() for part in data if isinstance(part, tuple)}
        assert subjects == {f"Subject: {t}{i}".encode() for t in "ab" for i in range(20)}


SINK = "127.0.0.4"


def submit(node: KarteroServer, subjects: list[str]) -> None:
    """Authenticated submission at `node` of one message per subject to the remote domain."""
    with smtplib.SMTP(node.host, node.submission_port, local_hostname="laptop.example", timeout=30) as c:
        c.starttls(context=tls_context())
        c.login("bob@example.test", PASSWORD)
        for subject in subjects:
            c.sendmail("bob@example.test", ["dave@remote.test"],
                       f"From: bob@example.test\r\nTo: dave@remote.test\r\nSubject: {subject}\r\n\r\nx\r\n".encode())


def sink_subjects(sink: KarteroServer) -> list[str]:
    return [m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in sink.messages("dave@remote.test")]


def cluster_node(root: Path, host: str, url: str, name: str, sink_port: int, **kwargs: str) -> KarteroServer:
    node = KarteroServer(root, host=host, store_url=url, node=name, lease="5s",
                         extra_config=f'[routes]\n"remote.test" = "{SINK}:{sink_port}"\n'
                         '[delivery]\nretry_first = "1s"\nretry_max = "2s"\nconnect_timeout = "5s"\n',
                         **kwargs)  # type: ignore[arg-type]  # fmt: skip
    return node


def test_issue_11_two_hundred_submissions_over_both_nodes_arrive_once_each(tmp_path: Path,
                                                                          postgres: PrivatePostgres) -> None:
    """Both nodes take from one queue (leases): 200 messages submitted half at each node reach the
    remote MX (a third Kartero) exactly once each."""
    import threading

    url = postgres.migrated_database()
    sink = KarteroServer(tmp_path / "sink", host=SINK, domains=("remote.test",), hostname="mx.remote.test")
    sink.add_user("dave@remote.test")
    sink.start()
    a = cluster_node(tmp_path / "a", "127.0.0.2", url, "node-a", sink.port)
    b = cluster_node(tmp_path / "b", "127.0.0.3", url, "node-b", sink.port)
    a.add_user("bob@example.test", PASSWORD)
    a.start()
    b.start()
    try:
        subjects = [f"m{i:03d}" for i in range(200)]
        threads = [threading.Thread(target=submit, args=(node, subjects[k::2])) for k, node in enumerate((a, b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        wait_for(lambda: len(sink.messages("dave@remote.test")) >= 200, 90)
        time.sleep(2)  # a duplicate would still be on its way
        arrived = sink_subjects(sink)
        assert sorted(arrived) == subjects  # each exactly once
        delivered_by = {node.node: sum(" result=delivered " in line for line in node.log_events("queue.result"))
                        for node in (a, b)}  # fmt: skip
        print(f"deliveries per node: {delivered_by}")
        assert sum(delivered_by.values()) == 200
    finally:
        for node in (a, b, sink):
            if node.process and node.process.poll() is None:
                node.stop()


def test_issue_11_a_killed_nodes_deliveries_are_taken_over_after_its_lease(tmp_path: Path,
                                                                         postgres: PrivatePostgres) -> None:
    """Node A leases 20 queued messages and hangs on a remote MX that never greets; A is killed (-9).
    Node B leaves them alone while A's lease runs (5 s), then delivers each once to the MX, back up."""
    import socket

    url = postgres.migrated_database()
    port = free_port(SINK)
    staller = socket.socket()
    staller.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    staller.bind((SINK, port))
    staller.listen(100)  # accepts (the kernel does), never says a word
    a = cluster_node(tmp_path / "a", "127.0.0.2", url, "node-a", port)
    b = cluster_node(tmp_path / "b", "127.0.0.3", url, "node-b", port)
    sink = KarteroServer(tmp_path / "sink", host=SINK, domains=("remote.test",), hostname="mx.remote.test",
                         port=port)  # fmt: skip
    sink.add_user("dave@remote.test")
    a.add_user("bob@example.test", PASSWORD)
    a.start()
    try:
        subjects = [f"k{i:02d}" for i in range(20)]
        submit(a, subjects)
        with psycopg.connect(url) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM queue_recipients WHERE lease_node LIKE 'node-a:%'"
                                          " AND lease_until > extract(epoch FROM now())").fetchone()[0] == 20, 10)
        b.start()
        status = run_cli_in_process(b.config, "cluster", "status").stdout.splitlines()
        (line_a,) = [line for line in status if line.startswith("node-a ")]
        (line_b,) = [line for line in status if line.startswith("node-b ")]
        assert "  alive  " in line_a and line_a.endswith("delivering 20: remote.test x20"), status
        assert "  alive  " in line_b and line_b.endswith("delivering 0: -"), status
        a.kill()
        killed_at = time.monotonic()
        time.sleep(1)
        with psycopg.connect(url) as conn:  # B must not take them while A's lease runs
            taken = conn.execute("SELECT count(*) FROM queue_recipients WHERE lease_node LIKE 'node-b:%'").fetchone()
            assert taken[0] == 0
        staller.close()
        sink.start()
        wait_for(lambda: len(sink.messages("dave@remote.test")) >= 20, 60)
        taken_over = time.monotonic() - killed_at
        time.sleep(2)
        assert sorted(sink_subjects(sink)) == subjects  # each exactly once
        print(f"B delivered A's 20 messages {taken_over:.1f} s after A was killed (lease 5 s)")
        # A renewed its leases every 5/3 s until the kill, so they ran at least 3.3 s past it.
        assert taken_over >= 3.0
        delivered = [line for line in b.log_events("queue.result") if " result=delivered " in line]
        assert len(delivered) == 20  # (B may have found the MX still down once: those were deferred)
        status = run_cli_in_process(b.config, "cluster", "status").stdout.splitlines()
        (line_a,) = [line for line in status if line.startswith("node-a ")]
        assert "  stale  " in line_a and line_a.endswith("delivering 0: -"), status
    finally:
        staller.close()
        for node in (a, b, sink):
            if node.process and node.process.poll() is None:
                node.stop()


class SmtpLoad:
    """`clients` SMTP connections sending to bob without pause, each message with its own Subject; what
    got 250 and what got a 4xx/5xx after DATA are recorded."""

    def __init__(self, node: KarteroServer, clients: int) -> None:
        self.node = node
        self.acknowledged: list[str] = []
        self.refused: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,)) for k in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, k: int) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                with smtplib.SMTP(self.node.host, self.node.port, timeout=30) as s:
                    while not self._stop.is_set():
                        subject = f"c{k}-{i}"
                        i += 1
                        try:
                            s.sendmail("alice@example.org", ["bob@example.test"],
                                       f"Subject: {subject}\r\n\r\nx\r\n".encode())  # fmt: skip
                            self.acknowledged.append(subject)
                        except smtplib.SMTPDataError as exc:
                            self.refused.append((exc.smtp_code, exc.smtp_error))
            except (OSError, smtplib.SMTPException):
                time.sleep(0.1)


def assert_stored_once(stored: list[str], acknowledged: list[str], clients: int) -> None:
    """Every acknowledged message stored, none twice. A message may be stored without its 250 having
    reached the client (the commit landed, the answer was lost with the process or the database
    connection): at most one per client, the one it was sending."""
    counts = Counter(stored)
    assert [s for s, n in counts.items() if n > 1] == []
    assert [s for s in acknowledged if s not in counts] == []
    assert len(set(stored) - set(acknowledged)) <= clients


def subjects_of(node: KarteroServer) -> list[str]:
    return [m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in node.messages("bob@example.test")]


def test_issue_11_the_database_away_under_load_loses_nothing_acknowledged(
    tmp_path: Path, postgres: PrivatePostgres, servers: list[KarteroServer]
) -> None:
    """Eight SMTP clients send without pause while PostgreSQL stops (fast shutdown, as for a restart or
    a failover) and starts again ~13 s later:
    while it is away SMTP answers 451 4.3.0, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]; the node comes
    back by itself, and every message that got 250 is in the mailbox exactly once."""

    url = postgres.migrated_database()
    node = KarteroServer(tmp_path / "n", host="127.0.0.2", store_url=url, node="node-a")
    servers.append(node)
    node.add_user("bob@example.test", PASSWORD)
    node.start()
    load = SmtpLoad(node, 8)
    with imaplib.IMAP4(node.host, node.imap_port) as logged_in:
        logged_in.login("bob@example.test", PASSWORD)
        load.start()
        acknowledged, refused = load.acknowledged, load.refused
        try:
            # Stopped at the 20th message, a fraction of a second after the node's start: its directory
            # cache must already stand on the version the change feed read (it once took the feed's first
            # reading for a change, reloaded and answered RCPT 451 even for bob).
            wait_for(lambda: len(acknowledged) >= 20, 30)
            postgres.stop()
            down_at = len(acknowledged)
            time.sleep(1.5)
            typ, data = logged_in.select("INBOX")
            assert (typ, data) == ("NO", [b"[UNAVAILABLE] Mail store unavailable, try again later"])
            with smtplib.SMTP(node.host, node.port, timeout=30) as s:  # RCPT: the directory in memory
                s.ehlo()
                s.mail("alice@example.org")
                assert s.rcpt("bob@example.test")[0] == 250
                assert s.rcpt("nobody@example.test") == (451, b"4.3.0 Local error in processing, try again later")

            def imap_login() -> None:
                fresh = imaplib.IMAP4(node.host, node.imap_port)
                try:
                    fresh.login("bob@example.test", PASSWORD)
                    raise AssertionError("logged in while the database was away")
                except imaplib.IMAP4.error as exc:
                    assert "[UNAVAILABLE]" in str(exc), "\n".join(line for line in node.log_lines if "imap" in line)
                fresh.shutdown()

            def pop3_login() -> None:
                pop = poplib.POP3(node.host, node.pop3_port)
                pop.user("bob@example.test")
                with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
                    pop.pass_(PASSWORD)

            # Each waits the store's 5 s for a connection before its answer: both at once, not in turn.
            with ThreadPoolExecutor(2) as pool:
                for check in [pool.submit(f) for f in (imap_login, pop3_login)]:
                    check.result()
            time.sleep(1.5)
            postgres.resume()
            wait_for(lambda: len(acknowledged) >= down_at + 40, 60)  # back by itself
        finally:
            load.stop()
            if postgres.process is None:
                postgres.resume()  # for the tests after this one, which failed while it was away
        assert refused and all(code == 451 and text.startswith(b"4.3.0") for code, text in refused), refused[:3]
        print(f"{len(acknowledged)} acknowledged ({down_at} before the stop), {len(refused)} answered 451")
        typ, _ = logged_in.select("INBOX")  # the session that saw NO goes on
        assert typ == "OK"
    assert_stored_once(subjects_of(node), acknowledged, clients=8)
    assert node.stop() == 0, node.log


def test_issue_11_sigkill_of_a_node_under_twenty_smtp_clients_loses_nothing_acknowledged(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    """Node A is killed (-9) while 20 clients send to it: every message A answered 250 is in the
    mailbox exactly once, read at node B, which never stopped."""
    a, b = nodes
    load = SmtpLoad(a, 20)
    load.start()
    try:
        wait_for(lambda: len(load.acknowledged) >= 200, 60)
        a.kill()
    finally:
        load.stop()
    acknowledged = list(load.acknowledged)
    print(f"{len(acknowledged)} acknowledged before the kill")
    assert_stored_once(subjects_of(b), acknowledged, clients=20)


def test_issue_11_serve_workers_share_the_listeners_and_replace_a_dead_worker(
    tmp_path: Path, postgres: PrivatePostgres, servers: list[KarteroServer]
) -> None:
    """`serve --workers 2`: two processes on the same ports (the cluster sees node-a.1 and node-a.2); a
    worker killed (-9) under load is started again while the other goes on serving; every acknowledged
    message is stored once; SIGTERM stops them all (exit 0)."""
    import os
    import re
    import signal

    url = postgres.migrated_database()
    node = KarteroServer(tmp_path / "n", host="127.0.0.2", store_url=url, node="node-a", serve_args=("--workers", "2"))
    servers.append(node)
    node.add_user("bob@example.test", PASSWORD)
    node.start()

    def worker_pids() -> dict[str, int]:
        status = run_cli_in_process(node.config, "cluster", "status").stdout
        return {m[1]: int(m[2]) for m in re.finditer(r"^(node-a\.\d)  alive .*? pid (\d+) ", status, re.M)}

    wait_for(lambda: len(worker_pids()) == 2, 10)
    first = worker_pids()
    assert set(first) == {"node-a.1", "node-a.2"}
    load = SmtpLoad(node, 8)
    load.start()
    try:
        wait_for(lambda: len(load.acknowledged) >= 100, 60)
        os.kill(first["node-a.1"], signal.SIGKILL)
        at_kill = len(load.acknowledged)
        wait_for(lambda: len(load.acknowledged) >= at_kill + 100, 60)  # the other worker goes on
        wait_for(lambda: worker_pids().get("node-a.1") not in (None, first["node-a.1"]), 30)  # started again
    finally:
        load.stop()
    last = worker_pids()
    assert last["node-a.2"] == first["node-a.2"]
    assert_stored_once(subjects_of(node), load.acknowledged, clients=8)
    # Issue 14, /metrics at any worker adds up every worker's files (docs/metrics.md): the killed one's
    # counts stay, its open sessions went with it.
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = node.root / "data" / "workers" / "metrics"
    assert not (folder / f"gauge_livesum_{first['node-a.1']}.db").exists()
    stored = {x.labels["origin"]: x.value for family in MultiProcessCollector(None, str(folder)).collect()
              for x in family.samples if x.name == "kartero_messages_stored_total"}  # fmt: skip
    assert stored["smtp"] >= len(load.acknowledged) > 0
    assert node.stop() == 0, node.log
    for pid in last.values():  # the workers ended with the supervisor
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # and said goodbye to the cluster; the killed one could not, and shows until its lease runs out
    assert set(worker_pids().values()) <= {first["node-a.1"]}


def test_issue_11_serve_workers_refuses_the_embedded_store(tmp_path: Path) -> None:
    node = KarteroServer(tmp_path / "n")
    result = run_cli(node.config, "serve", "--workers", "2", check=False)
    assert result.returncode == 2
    assert 'needs a config with [store] backend = "postgresql"' in result.stderr


def test_issue_11_a_dkim_key_made_through_one_node_signs_at_the_other(
    nodes: tuple[KarteroServer, KarteroServer],
) -> None:
    """`kartero dkim keygen` with node B's config stores the key in the database; node A, running, signs
    the next submitted message with it (the feed tells it), and the signature verifies against the
    record `dkim list` prints."""
    import dkim

    a, b = nodes
    made = run_cli_in_process(b.config, "dkim", "keygen", "example.test", "--algorithm", "ed25519")
    assert "stored example.test/kartero-ed.ed25519.key in the database" in made.stdout
    (listed,) = run_cli_in_process(a.config, "dkim", "list").stdout.splitlines()
    record = listed.split(' IN TXT "', 1)[1].rstrip('"')
    assert listed.startswith("example.test kartero-ed ed25519 kartero-ed._domainkey.example.test. ")

    def signed() -> bytes:
        with smtplib.SMTP(a.host, a.submission_port, local_hostname="laptop.example", timeout=30) as c:
            c.starttls(context=tls_context())
            c.login("bob@example.test", PASSWORD)
            c.sendmail("bob@example.test", ["bob@example.test"], b"From: bob@example.test\r\nTo: bob@example.test\r\n"
                       b"Subject: signed\r\n\r\nbody\r\n")  # fmt: skip
        return b.messages("bob@example.test")[-1]

    wait_for(lambda: b"DKIM-Signature:" in signed(), 10)
    message = signed()
    assert b"s=kartero-ed" in message and b"d=example.test" in message
    stored = message.split(b"\r\n", 1)[1]  # without Return-Path, added for final delivery
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: record.encode())
    again = run_cli_in_process(b.config, "dkim", "keygen", "example.test", "--algorithm", "ed25519", check=False)
    assert again.returncode == 1
