"""Issue 14: the Prometheus metrics, counted by the real code paths (an SMTP session through the adapter
and intake into the embedded store, the queue runner, the resolver, the IMAP core) and read back from
the registry; label sets that stay bounded whatever clients send; the exposition text; several
processes sharing their counts (`serve --workers N`).

The metrics are process-wide: each test reads how much a value changed, never its level."""

from __future__ import annotations

import ast
import asyncio
import base64
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kartero import metrics
from kartero.auth.accounts import DirectoryCache
from kartero.concurrency import Blocking
from kartero.config import LISTENERS
from kartero.dns.resolver import Resolver, blocking_resolver
from kartero.imap.connection import COUNTED_COMMANDS, UID_SUBCOMMANDS, ImapConnection, ImapSettings
from kartero.intake import METRIC_REASONS, Intake
from kartero.mail import replies
from kartero.mail.address import Path as SMTPPath
from kartero.mail.envelope import EnvelopeRecipient, Origin
from kartero.net.session import SessionContext, SMTPSession
from kartero.net.watchdog import LoopWatchdog
from kartero.policy.decisions import Accept, AcceptMessage, Decision, MessageDecision, RcptContext, Reject
from kartero.queue.dsn import Action
from kartero.queue.jobs import Deferred, Delivered, Failed
from kartero.queue.runner import QueueRunner, QueueSettings
from kartero.server import store_state
from kartero.smtp.events import Envelope
from kartero.smtp.server import ServerSettings
from kartero.store.ids import new_message_id
from kartero.store.interface import Account, Content, Delivery, Outbound
from kartero.store.sqlite import SQLiteStore
from tests.integration.dnsserver import LoopbackDNS
from tests.unit.queue.test_runner import Bouncer, Clock, ScriptedAgent

ROOT = Path(__file__).resolve().parents[2]


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Changes:
    """The change of each watched sample between `Changes(...)` and `.now()`."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = [value(name, **labels) for name, labels in samples]

    def now(self) -> dict[str, float]:
        out = {}
        for (name, labels), before in zip(self.samples, self.before, strict=True):
            key = name + "".join(f",{k}={v}" for k, v in sorted(labels.items()))
            out[key] = value(name, **labels) - before
        return out


def s(name: str, **labels: str) -> tuple[str, dict[str, str]]:
    return name, labels


# -- an SMTP session through the real adapter, intake and store ------------------------------------------------


class Transport:
    """The socket side of a Channel, in memory: what the server wrote, and whether it closed."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.wrote = asyncio.Event()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.9", 40000), "sockname": ("192.0.2.1", 25)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.out += data
        self.wrote.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Policy:
    """bob@example.test exists; nobody else does."""

    async def check_mail(self, path: SMTPPath, user: str | None) -> Decision:
        return Accept(replies.SENDER_OK)

    async def check_rcpt(self, path: SMTPPath, context: RcptContext) -> Decision:
        if str(path) == "<bob@example.test>":
            return Accept(replies.RECIPIENT_OK, (1,), "bob@example.test")
        return Reject(replies.NO_SUCH_USER, "unknown_recipient")

    async def check_message(self, envelope: Envelope, data: bytes | Content, client_ip: str) -> MessageDecision:
        return AcceptMessage(data)


class Passwords:
    """bob's password is "right"."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def verify(self, user: str, password: str) -> Account | None:
        return self.store.accounts.get_account(user) if password == "right" else None


def _complete(out: bytearray) -> bool:
    """A whole reply arrived: the last line is a final one (`250 ...`, not `250-...`)."""
    if not out.endswith(b"\r\n"):
        return False
    last = out[:-2].rpartition(b"\r\n")[2]
    return last[3:4] == b" "


async def _session(store: SQLiteStore, listener: str, script: list[tuple[bytes, bytes]]) -> None:
    """Play `script` (what the client sends, the start of the reply it must get) over one session."""
    directory = DirectoryCache(store.accounts, ("example.test",))
    directory.prime()
    intake = Intake(store.mail, directory, hostname="mx.example.test", queue_lifetime_s=3600.0, blocking=Blocking())
    loop = asyncio.get_running_loop()
    is_submission = listener.startswith("sub")

    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        tasks.add(loop.create_task(coro))

    ctx = SessionContext(
        listener=listener, policy=Policy(), intake=intake, tls_context=lambda: None, sessions=set(),
        spawn=spawn, on_session_end=lambda: None, is_stopping=lambda: False,
        settings=ServerSettings(hostname="mx.example.test", max_message_size=1000,
                                auth_mechanisms=("PLAIN",) if is_submission else ()),
        implicit_tls=is_submission, authenticator=Passwords(store) if is_submission else None,  # type: ignore[arg-type]
    )  # fmt: skip
    transport = Transport()
    channel = SMTPSession.factory(ctx)()
    channel.connection_made(transport)  # type: ignore[arg-type]
    async with asyncio.timeout(20):
        for sent, expected in [(b"", b"220 "), *script]:
            if sent:
                transport.out.clear()
                channel.data_received(sent)
            while not _complete(transport.out):
                transport.wrote.clear()
                if not _complete(transport.out):
                    await transport.wrote.wait()
            assert bytes(transport.out).startswith(expected), (sent, bytes(transport.out))
    assert transport.closed


MESSAGE = b"DATA\r\n", b"354 "
BODY = b"Subject: hi\r\n\r\nhello\r\n.\r\n", b"250 2.0.0 Message accepted"
TOO_BIG = b"Subject: big\r\n\r\n" + b"x" * 990 + b"\r\n.\r\n", b"552 5.3.4"


def test_issue_14_an_smtp_session_counts_its_connection_replies_refusals_message_and_commit(
    sqlite_store: SQLiteStore,
) -> None:
    store = sqlite_store
    changes = Changes(
        s("kartero_connections_opened_total", listener="smtp"), s("kartero_connections_open", listener="smtp"),
        s("kartero_smtp_replies_total", listener="smtp", **{"class": "2xx"}),
        s("kartero_smtp_replies_total", listener="smtp", **{"class": "3xx"}),
        s("kartero_smtp_replies_total", listener="smtp", **{"class": "4xx"}),
        s("kartero_smtp_replies_total", listener="smtp", **{"class": "5xx"}),
        s("kartero_recipients_refused_total", listener="smtp", reason="unknown_recipient"),
        s("kartero_messages_received_total", origin="smtp"), s("kartero_messages_stored_total", origin="smtp"),
        s("kartero_messages_refused_total", origin="smtp", reason="size"),
        s("kartero_deliveries_total", outcome="local"),
        s("kartero_store_commit_seconds_count", backend="sqlite"),
        s("kartero_store_commit_groups_sum", backend="sqlite"),
        s("kartero_store_delivery_seconds_count", backend="sqlite"),
    )  # fmt: skip
    asyncio.run(_session(store, "smtp", [
        (b"EHLO client.example\r\n", b"250-mx.example.test"),
        (b"MAIL FROM:<alice@sender.example>\r\n", b"250 "),
        (b"RCPT TO:<nobody@example.test>\r\n", b"550 5.1.1"),
        (b"RCPT TO:<bob@example.test>\r\n", b"250 "),
        MESSAGE, BODY,
        (b"MAIL FROM:<alice@sender.example>\r\n", b"250 "),
        (b"RCPT TO:<bob@example.test>\r\n", b"250 "),
        MESSAGE, TOO_BIG,
        (b"QUIT\r\n", b"221 "),
    ]))  # fmt: skip
    assert changes.now() == {
        "kartero_connections_opened_total,listener=smtp": 1,
        "kartero_connections_open,listener=smtp": 0,  # opened and closed again
        # 220, EHLO, 2 MAIL, 2 RCPT, the message, 221; 354 twice; 550 and 552
        "kartero_smtp_replies_total,class=2xx,listener=smtp": 8,
        "kartero_smtp_replies_total,class=3xx,listener=smtp": 2,
        "kartero_smtp_replies_total,class=4xx,listener=smtp": 0,
        "kartero_smtp_replies_total,class=5xx,listener=smtp": 2,
        "kartero_recipients_refused_total,listener=smtp,reason=unknown_recipient": 1,
        "kartero_messages_received_total,origin=smtp": 2,
        "kartero_messages_stored_total,origin=smtp": 1,
        "kartero_messages_refused_total,origin=smtp,reason=size": 1,
        "kartero_deliveries_total,outcome=local": 1,
        "kartero_store_commit_seconds_count,backend=sqlite": 1,
        "kartero_store_commit_groups_sum,backend=sqlite": 1,
        "kartero_store_delivery_seconds_count,backend=sqlite": 1,
    }


def test_issue_14_smtp_auth_failures_and_logins_are_counted_per_protocol(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    def plain(password: str) -> bytes:
        return b"AUTH PLAIN " + base64.b64encode(b"\0bob@example.test\0" + password.encode()) + b"\r\n"

    changes = Changes(s("kartero_auth_failures_total", protocol="smtp"), s("kartero_logins_total", protocol="smtp"),
                      s("kartero_connections_opened_total", listener="submissions"),
                      s("kartero_messages_stored_total", origin="submission"))  # fmt: skip
    asyncio.run(_session(store, "submissions", [
        (b"EHLO client.example\r\n", b"250-mx.example.test"),
        (plain("wrong"), b"535 5.7.8"),
        (plain("right"), b"235 "),
        (b"MAIL FROM:<bob@example.test>\r\n", b"250 "),
        (b"RCPT TO:<bob@example.test>\r\n", b"250 "),
        MESSAGE, BODY,
        (b"QUIT\r\n", b"221 "),
    ]))  # fmt: skip
    assert changes.now() == {
        "kartero_auth_failures_total,protocol=smtp": 1,
        "kartero_logins_total,protocol=smtp": 1,
        "kartero_connections_opened_total,listener=submissions": 1,
        "kartero_messages_stored_total,origin=submission": 1,
    }


# -- the queue ------------------------------------------------------------------------------------------------


def _queue_one(store: SQLiteStore, created_at: int) -> bytes:
    data = b"From: x@a.test\r\nSubject: queued\r\n\r\nbody\r\n"
    recipients = tuple(EnvelopeRecipient(a) for a in ("ok@a.test", "later@a.test", "gone@a.test"))
    outbound = Outbound("alice@example.test", recipients, int(Clock().now) + 86400)  # not expired for the runner
    store.mail.deliver(Delivery(new_message_id(), data, (), created_at, None, outbound)).result(10)
    return data


def test_issue_14_the_queue_and_store_gauges_and_the_commit_of_each_backend(store: SQLiteStore) -> None:
    backend = "sqlite" if isinstance(store, SQLiteStore) else "postgresql"
    changes = Changes(s("kartero_store_commit_seconds_count", backend=backend))
    data = _queue_one(store, int(time.time()) - 600)  # queued ten minutes ago
    assert changes.now() == {f"kartero_store_commit_seconds_count,backend={backend}": 1}
    unwatch = metrics.watch_store(partial(store_state, store))
    try:
        gauges = {f.name: f.samples[0].value for f in text_string_to_metric_families(metrics.exposition()[0].decode())
                  if f.name in ("kartero_queue_messages", "kartero_queue_oldest_age_seconds",
                                "kartero_store_size_bytes")}  # fmt: skip
    finally:
        unwatch()
    assert gauges["kartero_queue_messages"] == 1
    assert 600 <= gauges["kartero_queue_oldest_age_seconds"] < 700
    assert gauges["kartero_store_size_bytes"] >= len(data)


def test_issue_14_deliveries_by_outcome_and_dsns(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    _queue_one(store, int(time.time()))
    changes = Changes(*(s("kartero_deliveries_total", outcome=o) for o in ("delivered", "deferred", "bounced")),
                      s("kartero_dsns_sent_total", action="failed"))  # fmt: skip
    agent = ScriptedAgent({"ok@a.test": Delivered(replies.OK), "later@a.test": Deferred(replies.LOCAL_ERROR),
                           "gone@a.test": Failed(replies.NO_SUCH_USER)})  # fmt: skip
    settings = QueueSettings(hostname="mx.a.test", retry_first_s=60, retry_max_s=600, delay_notice_s=3600)
    asyncio.run(QueueRunner(store, agent, Bouncer(), settings, clock=Clock()).run_due())
    assert changes.now() == {
        "kartero_deliveries_total,outcome=delivered": 1,
        "kartero_deliveries_total,outcome=deferred": 1,
        "kartero_deliveries_total,outcome=bounced": 1,
        "kartero_dsns_sent_total,action=failed": 1,
    }


def test_issue_14_no_store_source_means_no_store_gauges_and_a_failing_one_costs_only_them() -> None:
    def away() -> metrics.StoreState:
        raise OSError("database away")

    families = {f.name for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    assert "kartero_queue_messages" not in families and "kartero_connections_open" in families
    unwatch = metrics.watch_store(away)
    try:
        families = {f.name for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    finally:
        unwatch()
    assert "kartero_queue_messages" not in families and "kartero_connections_open" in families


# -- DNS ------------------------------------------------------------------------------------------------------

ZONE = """
example.test. 60 IN MX 10 mx.example.test.
mx.example.test. 60 IN A 192.0.2.1
"""


def test_issue_14_dns_lookups_are_timed_by_type_and_counted_by_result() -> None:
    samples = [s("kartero_dns_lookups_total", type=t, result=r)
               for t, r in (("MX", "answer"), ("A", "answer"), ("AAAA", "nodata"), ("TXT", "nxdomain"))]  # fmt: skip
    changes = Changes(*samples, s("kartero_dns_lookup_seconds_count", type="MX"),
                      s("kartero_dns_lookup_seconds_count", type="TXT"))  # fmt: skip
    with LoopbackDNS(ZONE) as dns:
        resolver = Resolver([(dns.host, dns.port)], timeout_s=2.0)

        async def go() -> None:
            await resolver.mx("example.test")
            await resolver.addresses("mx.example.test")  # A, then AAAA (none)

        asyncio.run(go())
        with pytest.raises(Exception, match="does not exist"):  # the worker threads' resolver (SPF, DKIM, ...)
            blocking_resolver([(dns.host, dns.port)], timeout_s=2.0).resolve("nowhere.test", "TXT", search=False)
    assert changes.now() == {
        "kartero_dns_lookups_total,result=answer,type=MX": 1,
        "kartero_dns_lookups_total,result=answer,type=A": 1,
        "kartero_dns_lookups_total,result=nodata,type=AAAA": 1,
        "kartero_dns_lookups_total,result=nxdomain,type=TXT": 1,
        "kartero_dns_lookup_seconds_count,type=MX": 1,
        "kartero_dns_lookup_seconds_count,type=TXT": 1,
    }


# -- IMAP commands, and the bound on every label set -----------------------------------------------------------


def _imap_counts(*lines: bytes) -> dict[str, int]:
    """What the IMAP core tallies for these lines of a client that logged in as nobody."""
    conn = ImapConnection(ImapSettings(hostname="imap.example.test"))
    conn.start()
    conn.receive_data(b"".join(lines))
    while conn.next_event() is not None:
        pass
    return conn.take_command_counts()


def test_issue_14_imap_commands_are_counted_by_known_name_uid_forms_included() -> None:
    counts = _imap_counts(b"a CAPABILITY\r\n", b"b noop\r\n", b"c uid fetch 1 FLAGS\r\n", b"d XYZZY\r\n",
                          b"e UID BOGUS 1\r\n")  # fmt: skip
    assert counts == {"CAPABILITY": 1, "NOOP": 1, "UID FETCH": 1, "OTHER": 1, "UID": 1}
    changes = Changes(s("kartero_imap_commands_total", command="UID FETCH"),
                      s("kartero_imap_commands_total", command="other"))  # fmt: skip
    metrics.imap_commands({"UID FETCH": 2, "OTHER": 3})
    assert changes.now() == {"kartero_imap_commands_total,command=UID FETCH": 2,
                             "kartero_imap_commands_total,command=other": 3}  # fmt: skip


def _children(metric: str) -> set[tuple[tuple[str, str], ...]]:
    return {tuple(sorted(sample.labels.items())) for family in metrics.REGISTRY.collect() if family.name == metric
            for sample in family.samples}  # fmt: skip


def test_issue_14_ten_thousand_unknown_imap_commands_leave_one_other_child() -> None:
    before = value("kartero_imap_commands_total", command="other")
    for i in range(10_000):  # a new connection each time: the core ends one after its error budget
        metrics.imap_commands(_imap_counts(b"a X%dQ\r\n" % i))
    assert value("kartero_imap_commands_total", command="other") - before == 10_000
    names = {dict(labels)["command"] for labels in _children("kartero_imap_commands")}
    assert names <= metrics.IMAP_COMMANDS | {"other"}
    # the same for every other vocabulary a caller could pass a stranger's word to
    for i in range(1000):
        metrics.for_listener(f"l{i}")
        metrics.auth_failed(f"p{i}")
        metrics.recipient_refused(f"l{i}", f"r{i}")
        metrics.message_refused(f"o{i}", f"r{i}")
        metrics.dns_looked_up(f"t{i}", f"x{i}", 0.001)
    assert {dict(labels)["listener"] for labels in _children("kartero_connections_opened")} <= metrics.LISTENERS | {
        "other"}  # fmt: skip
    assert {dict(labels)["protocol"] for labels in _children("kartero_auth_failures")} <= metrics.PROTOCOLS | {"other"}
    assert {(dict(labels)["listener"], dict(labels)["reason"]) for labels in _children("kartero_recipients_refused")
            } <= {(a, b) for a in metrics.LISTENERS | {"other"} for b in metrics.REASONS | {"other"}}  # fmt: skip
    assert {dict(labels)["type"] for labels in _children("kartero_dns_lookups")} <= metrics.DNS_TYPES | {"other"}


def test_issue_14_the_vocabularies_cover_what_the_code_names() -> None:
    assert set(LISTENERS) <= metrics.LISTENERS
    stored_without_intake = {"unknown", "append", "quota", "import"}
    assert {o.value for o in Origin} - stored_without_intake <= metrics.ORIGINS
    assert {a.value for a in Action} == set(metrics.DSN_ACTIONS)
    assert COUNTED_COMMANDS | {f"UID {c}" for c in UID_SUBCOMMANDS} == metrics.IMAP_COMMANDS
    assert set(METRIC_REASONS.values()) <= metrics.REASONS
    # every reason a policy or the SMTP adapter gives a Reject, read from the source
    given = set()
    for path in [*(ROOT / "kartero" / "policy").glob("*.py"), ROOT / "kartero" / "net" / "session.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Reject" and len(node.args) == 2:
                reason = node.args[1]
                assert isinstance(reason, ast.Constant), f"{path.name}:{node.lineno}: a reason that is not a word"
                given.add(reason.value)
    assert given and given <= metrics.REASONS


# -- the event loop ----------------------------------------------------------------------------------------------


class _Loop:
    def call_later(self, delay: float, callback: Any) -> Any:
        return None


def test_issue_14_loop_lag_is_observed_at_each_tick() -> None:
    watchdog = LoopWatchdog(_Loop())  # type: ignore[arg-type]
    changes = Changes(s("kartero_event_loop_lag_seconds_count"), s("kartero_event_loop_lag_seconds_bucket", le="+Inf"),
                      s("kartero_event_loop_lag_seconds_bucket", le="0.5"))  # fmt: skip
    watchdog._tick()  # the first: nothing was due yet
    watchdog._due -= 1.0  # the next tick comes about 0.9 s late (it was due in 0.1 s)
    watchdog._tick()
    assert changes.now() == {"kartero_event_loop_lag_seconds_count": 1,
                             "kartero_event_loop_lag_seconds_bucket,le=+Inf": 1,
                             "kartero_event_loop_lag_seconds_bucket,le=0.5": 0}  # fmt: skip


# -- the exposition ---------------------------------------------------------------------------------------------


def test_issue_14_the_exposition_is_prometheus_text_of_kartero_metrics_only() -> None:
    metrics.for_listener("imap").opened.inc()
    body, content_type = metrics.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(body.decode()))
    assert families and all(f.name.startswith("kartero_") for f in families)
    assert all(f.documentation for f in families)
    assert not any(sample.name.endswith("_created") for f in families for sample in f.samples)
    by_name = {f.name: f for f in families}
    assert by_name["kartero_connections_opened"].type == "counter"
    assert by_name["kartero_store_commit_seconds"].type == "histogram"
    assert by_name["kartero_connections_open"].type == "gauge"


# -- several processes ------------------------------------------------------------------------------------------

WORKER = """
import sys
from kartero import metrics
metrics.for_listener("smtp").opened.inc(int(sys.argv[1]))
metrics.for_listener("smtp").open.inc(int(sys.argv[1]))
metrics.store_committed("sqlite", 0.003, 2)
if sys.argv[2] == "scrape":
    sys.stdout.write(metrics.exposition()[0].decode())
"""


def test_issue_14_workers_share_their_counts_through_the_metrics_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "workers" / "metrics"
    folder.mkdir(parents=True)
    (folder / "counter_99999.db").write_bytes(b"left by an earlier run")
    environment = {**metrics.shared_environment(folder), "PYTHONPATH": str(ROOT)}
    assert list(folder.iterdir()) == []  # emptied

    def worker(n: int, then: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(WORKER), str(n), then], env=environment,
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip

    gone = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), "5", "-"], env=environment)
    assert gone.wait(60) == 0
    metrics.process_gone(gone.pid, folder)  # what the supervisor does when a worker exits
    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for f in text_string_to_metric_families(worker(2, "scrape").stdout) for x in f.samples}  # fmt: skip
    assert samples[("kartero_connections_opened_total", (("listener", "smtp"),))] == 7  # both workers
    assert samples[("kartero_connections_open", (("listener", "smtp"),))] == 2  # the live one only
    assert samples[("kartero_store_commit_groups_sum", (("backend", "sqlite"),))] == 4
    assert samples[("kartero_store_commit_seconds_count", (("backend", "sqlite"),))] == 2
