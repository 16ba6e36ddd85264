"""The server process: builds every object from the Config, runs the listeners, handles signals.

Shutdown (SIGTERM/SIGINT): stop accepting → ask each session to end (idle ones get `421` at once, those
in the middle of a message finish it first) → wait up to `[limits] shutdown_grace` → cancel the rest
(nothing they had was acknowledged) → let the store finish every delivery it accepted → exit 0.
SIGHUP reloads the TLS certificate for new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import logging
import os
import resource
import signal
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from kartero import metrics
from kartero.auth.accounts import Authenticator, Directory, DirectoryCache
from kartero.auth.throttle import AuthThrottle
from kartero.concurrency import Blocking, DeadlineExceeded, within
from kartero.config import HTTP_LISTENERS, IMPLICIT_TLS, Config
from kartero.control import remove_pid, write_pid
from kartero.delivery.agent import AgentSettings, DeliveryAgent, verifying_tls_context
from kartero.delivery.local import DsnSender
from kartero.delivery.maildrop import Pickup
from kartero.delivery.mtasts import MTASTS
from kartero.delivery.mx import Hop
from kartero.dns.resolver import ClientName, Resolver, blocking_resolver
from kartero.filters.chain import Filters
from kartero.filters.hooks import HookFilter, HookLoadError
from kartero.filters.learn import Learner, LearnSettings
from kartero.filters.milter import MilterFilter
from kartero.filters.model import Filter
from kartero.imap.connection import ImapSettings
from kartero.intake import Intake
from kartero.log import kv
from kartero.mail.srs import SRS
from kartero.mailauth.dkim import DKIMKey, Signer, keys_from_rows
from kartero.mailauth.inbound import Checks, InboundChecker
from kartero.managesieve.connection import ManageSieveSettings
from kartero.migrate.importdrop import ImportPickup
from kartero.net.channel import AccessContext
from kartero.net.deadlines import DeadlineSettings
from kartero.net.imap_session import ImapSession
from kartero.net.listener import ListenerSettings, handover_factory
from kartero.net.managesieve_session import ManageSieveSession
from kartero.net.pop3_session import Pop3Session
from kartero.net.session import SessionContext, SMTPSession
from kartero.net.watchdog import LoopWatchdog
from kartero.policy.dnsbl import DNSBL
from kartero.policy.inbound import InboundPolicy
from kartero.policy.limits import Admission, Greylist, ServiceLimits, parse_networks
from kartero.policy.quota import QuotaBook
from kartero.policy.shared import SYNC_S, AbuseSync
from kartero.policy.submission import SubmissionPolicy
from kartero.pop3.connection import Pop3Settings
from kartero.queue.runner import QueueRunner, QueueSettings
from kartero.rules.engine import Rules
from kartero.sieve import EXTENSIONS as SIEVE_EXTENSIONS
from kartero.sieve import Limits as SieveLimits
from kartero.smtp.server import ServerSettings
from kartero.store.backends import AnyStore, open_store
from kartero.store.imports_sql import SqlImportLedger
from kartero.store.interface import MailStore, MetadataChange
from kartero.store.spool import spool_dir
from kartero.store.sqlite import SQLiteStore
from kartero.tls import certificate_expiry, make_self_signed, server_context, switching_context

if TYPE_CHECKING:
    from kartero.acme.challenges import Challenges, TokenBook
    from kartero.acme.manager import Renewal
    from kartero.store.postgres import PgStore
    from kartero.web.listen import HttpServer

log = logging.getLogger("kartero.server")
VERSION = importlib.metadata.version("kartero")

AUTH_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
MAILDROP_POLL_S = 1.0
IMPORTDROP_DEADLINE_S = 300.0  # one pass over the import drop (a batch's commit with large messages)
# The message trace's expiry: how often it looks for events past `[trace] keep`, and how many rows each
# of its transactions deletes (short ones: the committer waits for the write lock meanwhile).
TRACE_EXPIRY_S = 600.0
TRACE_EXPIRY_BATCH = 1000
# File descriptors kept back from the connection caps: the store, logs, DNS, outbound deliveries.
RESERVED_FILES = 256


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (many systems start processes at 1024, too few
    for thousands of connections); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # the soft limit stays; the connection cap is fitted under it below
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 30


# The data folder holds argon2 hashes, SCRAM keys, DKIM keys and every message: for Kartero's user only.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
DATABASE_FILES = ("kartero.db", "kartero.db-wal", "kartero.db-shm")


class StartupError(Exception):
    """The server cannot start (port taken, unreadable certificate, ...); the message says why."""


def restrict_data_modes(config: Config) -> None:
    """Make the data folder 0700 and the database (with its -wal and -shm) and DKIM keys 0600, fixing
    folders made by older versions (0755, database 0644); each change is logged. New files are private
    anyway: the CLI runs with umask 077. A TLS key outside the data folder is the admin's: only logged
    when others may read it."""
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    paths = [(data_dir, PRIVATE_DIR_MODE)] + [(data_dir / name, PRIVATE_FILE_MODE) for name in DATABASE_FILES]
    dkim = data_dir / "dkim"
    if dkim.is_dir():
        paths.append((dkim, PRIVATE_DIR_MODE))
        for folder in sorted(dkim.iterdir()):
            if folder.is_dir():
                paths.append((folder, PRIVATE_DIR_MODE))
                paths.extend((key, PRIVATE_FILE_MODE) for key in sorted(folder.glob("*.key")))
    tls = config.tls
    if tls is not None and tls.key.is_relative_to(data_dir):
        paths.append((tls.key, PRIVATE_FILE_MODE))
    for path, mode in paths:
        try:
            was = path.stat().st_mode & 0o777
            if was & 0o077:
                path.chmod(mode)
                log.warning("%s", kv(event="data.mode_fixed", path=path, was=f"{was:04o}", now=f"{mode:04o}"))
        except FileNotFoundError:
            continue
    if tls is not None and not tls.key.is_relative_to(data_dir):
        with contextlib.suppress(OSError):
            if tls.key.stat().st_mode & 0o004:
                log.warning("%s", kv(event="tls.key_readable", path=tls.key, detail="others may read the TLS key"))


class Server:
    """One serving process. `worker` 0: the whole server; 1..N: one of `serve --workers N`'s processes,
    sharing the listeners (SO_REUSEPORT) and the PostgreSQL store with its siblings, with a folder of
    its own under data_dir/workers/ (its spool) and its own node name in the cluster (NODE.I); worker 1
    alone takes in the maildrop, and the supervisor keeps the pid file."""

    def __init__(self, config: Config, worker: int = 0) -> None:
        self.config = config
        self.worker = worker
        self.node = config.store.node if worker == 0 else f"{config.store.node}.{worker}"
        self.root = config.data_dir if worker == 0 else config.data_dir / "workers" / str(worker)
        self._tls: ssl.SSLContext | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        self._sessions: set[Any] = set()
        self._sessions_gone = asyncio.Event()
        self._task_group: asyncio.TaskGroup | None = None
        self._runner: QueueRunner | None = None
        self._maildrop_wakeup = asyncio.Event()
        self._importdrop_wakeup = asyncio.Event()
        self._hooks: HookFilter | None = None
        self._certificate_expiry: int | None = None  # read at start and on each SIGHUP, for the dashboard
        self._challenges: Challenges | None = None  # ACME challenges being answered ([acme] only)
        self._acme: Renewal | None = None
        self._supervisor = os.getppid()  # `serve --workers N`: the supervisor of this worker

    # -- TLS -----------------------------------------------------------------------------------------

    def _load_tls(self) -> ssl.SSLContext | None:
        """A context for the certificate in force: the ACME one once stored, else the [tls] files (made
        self-signed first when the config asks for that); see kartero/acme/status.py."""
        tls = self.config.tls
        if tls is None:
            return None
        if self.config.make_certificate and not (tls.cert.exists() and tls.key.exists()):
            make_self_signed(tls.cert, tls.key, [self.config.hostname, "localhost", "127.0.0.1"])
            log.info("%s", kv(event="tls.self_signed_created", cert=tls.cert))
        cert, key, source = tls.cert, tls.key, "tls"
        if self.config.acme is not None:
            from kartero.acme.status import certificate_in_use

            use = certificate_in_use(self.config)
            if use is not None:
                cert, key, source = use.cert, use.key, str(use.source)
        try:
            context = server_context(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"{self.config.name}: [{source}]: cannot load certificate {cert}: {exc}") from None
        self._certificate_expiry = certificate_expiry(cert)
        return context

    def reload_tls(self) -> None:
        """SIGHUP, and a new ACME certificate: a fresh context for the certificate in force, proved good,
        replaces the old one. Every listener asks for the current context at each connection (https
        through `switching_context`), so new handshakes get it and open connections keep theirs."""
        try:
            context = self._load_tls()
        except (StartupError, OSError, ssl.SSLError) as exc:
            log.error("%s", kv(event="tls.reload_failed", detail=str(exc)))
        else:
            if context is not None:
                self._tls = context
            log.info("%s", kv(event="tls.reloaded"))

    def _start_acme(self, shared: PgStore | None) -> None:
        """[acme]: the challenges' shared state and the renewal task (started with the others; in
        `serve --workers N` by worker 1 alone, which then sends the supervisor a SIGHUP so that every
        worker loads the new certificate). On PostgreSQL the account, certificate and http-01 answers
        are the cluster's (kartero/acme/shared.py)."""
        acme = self.config.acme
        if acme is None:
            return
        from kartero.acme.challenges import Challenges, FileTokens
        from kartero.acme.manager import Renewal
        from kartero.acme.storage import AcmeFiles, AcmeStorage

        files = AcmeFiles(self.config.data_dir)
        storage: AcmeStorage = files
        tokens: TokenBook = FileTokens(files.folder / "challenges")
        if shared is not None:
            from kartero.acme.shared import RowTokens, SharedAcme
            from kartero.store.acme_sql import SqlAcmeRows

            rows = SqlAcmeRows(shared.database)
            storage, tokens = SharedAcme(rows, files, self.node), RowTokens(rows)
        self._challenges = Challenges(tokens)
        self._acme = Renewal(acme, storage, self._challenges, set(self.config.listen), self._acme_installed)

    def _acme_installed(self) -> None:
        self.reload_tls()
        # The supervisor passes a SIGHUP on to every worker. Only to the process that started this one:
        # after the supervisor's death the parent is init or a subreaper, which a SIGHUP would reload.
        if self.worker > 0 and os.getppid() == self._supervisor:
            os.kill(self._supervisor, signal.SIGHUP)

    def reload(self) -> None:
        """SIGHUP: the TLS certificate (and, with [acme], a look at the renewal), and the [hooks] module
        (a broken one keeps the old hooks)."""
        self.reload_tls()
        if self._acme is not None:  # look now: in a cluster, copy a certificate another node ordered
            self._acme.wakeup.set()
        if self._hooks is not None:
            self._hooks.reload()

    # -- content filters -----------------------------------------------------------------------------

    def _filters(self, blocking: Blocking) -> dict[str, Filters]:
        """The content filters of the MX and the submission listeners: their [[milter]]s in the config's
        order, then the [hooks]."""
        config = self.config
        milters = [(m, MilterFilter(m, max_message_bytes=config.limits.message_size, local_domains=config.domains,
                                    blocking=blocking)) for m in config.milters]  # fmt: skip
        by_listener: dict[str, Filters] = {}
        for listener in ("smtp", "submission"):
            chain: list[Filter] = [f for m, f in milters if listener in m.listeners]
            if self._hooks is not None:
                chain.append(self._hooks)
            by_listener[listener] = Filters(chain, config.spam.junk_header)
        return by_listener

    def _load_hooks(self) -> None:
        """The [hooks] module, loaded before anything starts: a broken one stops the start with its error."""
        if self.config.hooks.module is not None:
            try:
                self._hooks = HookFilter(self.config.hooks)
            except HookLoadError as exc:
                raise StartupError(f"{self.config.name}: {exc}") from None

    # -- lifecycle -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()
        self._maildrop_wakeup.set()

    async def run(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(8, thread_name_prefix="kartero-io")
        loop.set_default_executor(executor)
        restrict_data_modes(config)
        if any(kind in HTTP_LISTENERS for kind in config.listen):
            # aiohttp and Jinja2 take a quarter second to import: now, before any listener accepts.
            importlib.import_module("kartero.web.app")
        self._tls = self._load_tls()
        self._load_hooks()
        store = open_store(self.root, config.store.backend, config.store.url, self.node, config.store.lease_s)
        dropped = await asyncio.to_thread(store.recover)
        if dropped:
            log.info("%s", kv(event="store.recovered", bytes_dropped=dropped))
        store.start()
        store.compact()
        blocking = Blocking(executor)
        shared = _postgres(store)  # None on the embedded store (psycopg is imported only for PostgreSQL)
        self._start_acme(shared)
        directory = DirectoryCache(store.accounts, config.domains,
                                   shared.accounts.stored_directory_version if shared is not None else None)
        await loop.run_in_executor(executor, directory.prime)
        nameservers = [(n.host, n.port) for n in config.dns.nameservers]
        dns_blocking = blocking_resolver(nameservers, timeout_s=config.dns.timeout_s)
        checks = Checks(spf=config.inbound.spf, dkim=config.inbound.dkim, dmarc=config.inbound.dmarc)
        checker = InboundChecker(config.hostname, dns_blocking, checks) if any(astuple(checks)) else None
        gl = config.greylisting
        greylist = Greylist(gl.delay_s, gl.retry_window_s, gl.pass_s, parse_networks(gl.exempt)) if gl.enabled else None
        dnsbl = (DNSBL(config.dnsbl.zones, dns_blocking, parse_networks(config.dnsbl.exempt))
                 if config.dnsbl.zones else None)  # fmt: skip
        deadline = config.limits.check_deadline_s
        srs = await loop.run_in_executor(executor, srs_keys, config, store)
        policy = InboundPolicy(directory, config.primary_domain, checker, blocking, greylist, dnsbl, deadline, srs)
        admission = self._admission(config.delivery.concurrency)
        lim = config.limits
        signer = Signer(_StoreKeys(shared) if shared is not None else config.data_dir)
        submission_policy = SubmissionPolicy(directory, config.primary_domain, config.limits.messages_per_user_per_hour)
        quota = QuotaBook(store.mail, config.limits.default_quota, config.hostname)  # RCPT from memory
        quota.attach()  # before the first load: a change meanwhile is read again, never missed
        await loop.run_in_executor(executor, quota.prime)
        directory.reloaded.append(quota.directory_reloaded)
        policy.quota = submission_policy.quota = quota
        rules = Rules(store.sieve, store.mail, store.accounts.directory_version, hostname=config.hostname,
                      environment={"version": VERSION})  # fmt: skip
        intake = Intake(store.mail, directory, hostname=config.hostname,
                        queue_lifetime_s=config.delivery.queue_lifetime_s, blocking=blocking, signer=signer,
                        check_deadline_s=deadline, rules=rules, srs=srs,
                        trace=store.trace if config.trace.is_enabled else None)  # fmt: skip
        authenticator = Authenticator(store.accounts, config.auth.scram_iterations)
        throttle = AuthThrottle(window_s=config.auth.failure_window_s,
                                per_pair=config.auth.failures_per_address_and_account,
                                per_network=config.auth.failures_per_address,
                                per_account=config.auth.failures_per_account)  # fmt: skip
        abuse = AbuseSync(store.abuse, throttle, submission_policy, greylist) if store.abuse is not None else None
        resolver = Resolver([(n.host, n.port) for n in config.dns.nameservers], timeout_s=config.dns.timeout_s)
        overrides = {domain: Hop(hp.host, hp.port) for domain, hp in config.routes.items()}
        if config.delivery.relayhost is not None:
            overrides["*"] = Hop(config.delivery.relayhost.host, config.delivery.relayhost.port)
        ca_file = str(config.delivery.tls_ca_file) if config.delivery.tls_ca_file else None
        verifying_tls = verifying_tls_context(ca_file)
        mta_sts = MTASTS(resolver, verifying_tls) if config.delivery.mta_sts else None
        agent = DeliveryAgent(
            resolver,
            AgentSettings(helo=config.hostname, port=config.delivery.port, overrides=overrides,
                          connect_timeout_s=config.delivery.connect_timeout_s,
                          source_address=config.delivery.source_address),
            mta_sts,
            verifying_tls,
        )  # fmt: skip
        bouncer = DsnSender(intake, loop)
        pickup = Pickup(config.data_dir, intake, bouncer, config.hostname)
        runner = QueueRunner(
            store,
            agent,
            bouncer,
            QueueSettings(
                hostname=config.hostname,
                retry_first_s=config.delivery.retry_first_s,
                retry_max_s=config.delivery.retry_max_s,
                delay_notice_s=config.delivery.delay_notice_s,
                concurrency=config.delivery.concurrency,
                per_domain=config.delivery.per_domain,
                lease_renew_s=config.store.lease_s / 3,
                trace=config.trace.is_enabled,
            ),
        )

        def on_queued() -> None:  # called from the store's committer thread
            loop.call_soon_threadsafe(runner.wake)

        store.queue.add_queue_listener(on_queued)

        def on_change(ids: frozenset[int]) -> None:  # called from the store's writer threads
            loop.call_soon_threadsafe(self._mailboxes_changed, ids)

        store.mail.add_listener(on_change)

        def on_account_change(account_id: int) -> None:  # called from the store's writer threads
            loop.call_soon_threadsafe(self._account_changed, account_id)

        store.mail.add_account_listener(on_account_change)

        def on_metadata_change(change: MetadataChange) -> None:  # called from the store's writer threads
            loop.call_soon_threadsafe(self._metadata_changed, change)

        store.mail.add_metadata_listener(on_metadata_change)
        settings = ServerSettings(
            hostname=config.hostname,
            max_message_size=config.limits.message_size,
            max_recipients=config.limits.recipients_per_message,
            max_errors=config.limits.errors_per_session,
            is_tls_available=self._tls is not None,
            command_timeout_s=config.limits.command_timeout_s,
            data_timeout_s=config.limits.data_timeout_s,
        )
        filters = self._filters(blocking)
        learner = start_learner(config, store.mail)
        servers: list[asyncio.Server] = []
        http: HttpServer | None = None
        watchdog = LoopWatchdog(loop)  # from here on a stalled loop stalls clients: say so, with the culprit
        watchdog.start()
        unwatch_store = metrics.watch_store(partial(store_state, store))
        try:
            async with asyncio.TaskGroup() as tg:
                self._task_group = tg
                tg.create_task(runner.run())
                self._runner = runner
                if self.worker <= 1:
                    tg.create_task(self._pick_up(pickup))
                    imports = ImportPickup(config.data_dir, store.mail, SqlImportLedger(store.database))
                    tg.create_task(self._pick_up_imports(imports, blocking))
                tg.create_task(self._heartbeat(store))
                if self.worker <= 1:  # every node of a cluster does it too: deleting what is gone is a no-op
                    tg.create_task(self._expire_trace(store))
                if abuse is not None:
                    tg.create_task(self._share_abuse(abuse))
                if self._acme is not None and self.worker <= 1:
                    tg.create_task(self._acme.run(self._stop))
                proxy_from = parse_networks(config.proxy_from)
                for kind, addresses in config.listen.items():
                    factory: Callable[[], asyncio.BaseProtocol]
                    if kind in HTTP_LISTENERS:
                        continue
                    if kind in ("smtp", "submission", "submissions"):
                        is_submission = kind != "smtp"
                        smtp_ctx = SessionContext(
                            listener=kind,
                            settings=replace(
                                settings,
                                is_tls_available=self._tls is not None and kind != "submissions",
                                auth_mechanisms=AUTH_MECHANISMS if is_submission else (),
                                is_auth_required=is_submission,
                                refuse_nul=is_submission,
                            ),
                            policy=submission_policy if is_submission else policy,
                            intake=intake,
                            filters=filters["submission" if is_submission else "smtp"],
                            client_name=partial(client_name, resolver, min(config.dns.timeout_s, 5.0)),
                            tls_context=lambda: self._tls,
                            spawn=self._spawn,
                            sessions=self._sessions,
                            on_session_end=self._on_session_end,
                            is_stopping=lambda: self._stopping,
                            implicit_tls=kind == "submissions",
                            authenticator=authenticator if is_submission else None,
                            throttle=throttle,
                            blocking=blocking,
                            check_deadline_s=deadline,
                            admission=admission,
                            deadlines=DeadlineSettings(lim.command_deadline_s,
                                                       lim.login_deadline_s if is_submission else None),
                            spool_dir=spool_dir(self.root),
                        )
                        factory = SMTPSession.factory(smtp_ctx)
                    else:
                        implicit = kind in IMPLICIT_TLS
                        starttls = self._tls is not None and not implicit
                        settings_for: Any = (
                            Pop3Settings(hostname=config.hostname, is_tls_available=starttls)
                            if kind.startswith("pop3")
                            else ManageSieveSettings(extensions=SIEVE_EXTENSIONS, is_tls_available=starttls,
                                                     max_redirects=SieveLimits().max_redirects)
                            if kind == "managesieve"
                            else ImapSettings(hostname=config.hostname, append_limit=config.limits.message_size,
                                              is_tls_available=starttls, default_quota=config.limits.default_quota)
                        )  # fmt: skip
                        access = AccessContext(
                            listener=kind,
                            settings=settings_for,
                            store=store,
                            authenticator=authenticator,
                            tls_context=lambda: self._tls,
                            implicit_tls=implicit,
                            spawn=self._spawn,
                            sessions=self._sessions,
                            on_session_end=self._on_session_end,
                            is_stopping=lambda: self._stopping,
                            throttle=throttle,
                            admission=admission,
                            deadlines=DeadlineSettings(lim.command_deadline_s, lim.login_deadline_s),
                            spool_dir=spool_dir(self.root),
                            blocking=blocking,
                            check_deadline_s=deadline,
                            spam_reports=learner,
                        )
                        if kind == "managesieve":
                            factory = ManageSieveSession.factory(access)
                        else:
                            session_class = Pop3Session if kind.startswith("pop3") else ImapSession
                            factory = session_class.factory(access)
                    if proxy_from or kind in IMPLICIT_TLS:  # the PROXY header, the handshake: see listener.py
                        factory = handover_factory(ListenerSettings(
                            listener=kind,
                            protocol="smtp" if kind.startswith("sub") else kind.rstrip("s"),
                            service=kind.rstrip("s"),
                            session=factory,
                            trusted=proxy_from,
                            header_deadline_s=lim.command_deadline_s,
                            tls_context=(lambda: self._tls) if kind in IMPLICIT_TLS else None,
                            admission=admission,
                        ))  # fmt: skip
                    for address in addresses:
                        try:
                            server = await loop.create_server(
                                factory, address.host, address.port, reuse_address=True, backlog=512,
                                reuse_port=self.worker > 0,
                            )
                        except OSError as exc:
                            raise StartupError(f"cannot listen on {address} ({kind}): {exc.strerror}") from None
                        servers.append(server)
                        log.info("%s", kv(event="listening", listener=kind, address=address))
                        print(f"{kind} listening on {address}", flush=True)
                if any(kind in HTTP_LISTENERS for kind in config.listen):
                    http = await self._start_http(store, authenticator, throttle, blocking, admission, dns_blocking)
                self._install_signals(loop)
                if self.worker == 0:
                    write_pid(config.data_dir)
                print("kartero ready", flush=True)
                log.info("%s", kv(event="ready", hostname=config.hostname, domains=",".join(config.domains),
                                  node=self.node))  # fmt: skip
                await self._stop.wait()
                if http is not None:
                    await http.stop()
                await self._shutdown(servers)
                await intake.drain()  # replies the users' rules asked for, after the last messages
        except* StartupError as group:
            raise group.exceptions[0] from None
        finally:
            unwatch_store()
            watchdog.stop()
            if learner is not None:
                await asyncio.to_thread(learner.stop)
            if self.worker == 0:
                remove_pid(config.data_dir)
            for server in servers:
                server.close()
            await asyncio.to_thread(quota.close)
            await asyncio.to_thread(store.close)
            executor.shutdown(wait=False)
            log.info("%s", kv(event="stopped"))

    async def _start_http(self, store: AnyStore, authenticator: Authenticator, throttle: AuthThrottle,
                          blocking: Blocking, admission: Admission, resolver: Any) -> HttpServer:  # fmt: skip
        """The web admin, the JSON API and /metrics on the [listen] http/https addresses."""
        from kartero.web.app import build_app
        from kartero.web.context import WebContext
        from kartero.web.listen import HttpServer
        from kartero.web.ops import Operations

        config = self.config
        directory = Directory(store.accounts, config.domains, config.auth.scram_iterations)
        ctx = WebContext(
            config=config,
            store=store,
            ops=Operations(config, store, directory, lambda: resolver),
            authenticator=authenticator,
            blocking=blocking,
            throttle=throttle,
            wake_queue=self.wake_queue,
            connections=lambda: {name: admission.count(name) for name in admission.services},
            metrics=metrics.exposition,
            certificate_expiry=lambda: self._certificate_expiry,
            started_at=time.time(),
        )
        if config.trace.is_enabled:
            ctx.activity = ctx.ops.activity
        challenges = self._challenges
        if challenges is not None:
            ctx.acme_http01 = challenges.http01
        # https follows certificate changes (SIGHUP, ACME) and answers tls-alpn-01 (RFC 8737)
        https = switching_context(lambda: self._tls, challenges.tls_alpn01 if challenges is not None else None)
        http = HttpServer(build_app(ctx), admission, config.limits.shutdown_grace_s)
        await http.start()
        for kind in HTTP_LISTENERS & set(config.listen):
            for address in config.listen[kind]:
                try:
                    await http.listen(kind, address, https if kind == "https" else None, reuse_port=self.worker > 0)
                except OSError as exc:
                    await http.stop()
                    raise StartupError(f"cannot listen on {address} ({kind}): {exc.strerror}") from None
                log.info("%s", kv(event="listening", listener=kind, address=address))
                print(f"{kind} listening on {address}", flush=True)
        return http

    def _admission(self, outbound_connections: int) -> Admission:
        """The connection caps from [limits], the total fitted under the open-file limit (raised first)."""
        lim = self.config.limits
        files = raise_open_file_limit()
        total = min(lim.connections, max(1, files - RESERVED_FILES - outbound_connections))
        if total < lim.connections:
            log.warning("%s", kv(event="limits.open_files", open_files=files, connections=lim.connections,
                                 detail=f"connections capped at {total}: raise the hard RLIMIT_NOFILE"))  # fmt: skip
        services = {
            "smtp": ServiceLimits(lim.smtp_connections, lim.connections_per_ip, lim.connections_per_ip_per_minute),
            "submission": ServiceLimits(lim.submission_connections, lim.unauthenticated_connections_per_ip,
                                        lim.connections_per_ip_per_minute, lim.connections_per_user_and_ip),
            "imap": ServiceLimits(lim.imap_connections, lim.unauthenticated_connections_per_ip, 0,
                                  lim.connections_per_user_and_ip),
            "pop3": ServiceLimits(lim.pop3_connections, lim.unauthenticated_connections_per_ip, 0,
                                  lim.connections_per_user_and_ip),
            # Sessions are short (a client uploads and leaves): IMAP's caps, counted apart.
            "managesieve": ServiceLimits(lim.imap_connections, lim.unauthenticated_connections_per_ip, 0,
                                         lim.connections_per_user_and_ip),
            # A browser opens a handful of connections; API clients and scrapers one or two.
            "http": ServiceLimits(lim.http_connections, lim.unauthenticated_connections_per_ip),
        }  # fmt: skip
        return Admission(total, services, parse_networks(lim.exempt))

    async def _heartbeat(self, store: AnyStore) -> None:
        """Tell the cluster this process is alive (`kartero cluster status`), every third of a lease."""
        config = self.config
        address = ",".join(f"{kind}={a.host}:{a.port}" for kind, addrs in config.listen.items() for a in addrs)
        started_at = int(time.time())
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(store.heartbeat, self.node, address, VERSION, started_at)
            except Exception as exc:  # the database away: the next beat tries again
                log.warning("%s", kv(event="store.heartbeat_failed", detail=str(exc).strip()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), config.store.lease_s / 3)

    async def _expire_trace(self, store: AnyStore) -> None:
        """Delete the message trace's events older than `[trace] keep` (all of them when it is 0), at start
        and every TRACE_EXPIRY_S, in short transactions of TRACE_EXPIRY_BATCH rows."""
        while not self._stop.is_set():
            before = time.time() - self.config.trace.keep_s
            try:
                gone, total = TRACE_EXPIRY_BATCH, 0
                while gone >= TRACE_EXPIRY_BATCH and not self._stop.is_set():  # a batch at a time, till done
                    gone = await asyncio.to_thread(store.trace.expire, before, TRACE_EXPIRY_BATCH)
                    total += gone
                if total:
                    log.info("%s", kv(event="trace.expired", rows=total))
            except Exception as exc:  # the database away: the next round tries again
                log.warning("%s", kv(event="trace.expire_failed", detail=str(exc).strip()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TRACE_EXPIRY_S)

    async def _share_abuse(self, abuse: AbuseSync) -> None:
        """The cluster's abuse counts (policy/shared.py): this process's events out and the others' in,
        every SYNC_S, in a worker thread; applied here, on the loop."""
        while not self._stop.is_set():
            is_behind = False
            try:
                abuse.apply(await asyncio.to_thread(abuse.exchange))
                is_behind = abuse.is_behind
            except Exception:  # a bug: the counts stay this process's until the next exchange
                log.exception("%s", kv(event="abuse.sync_error"))
            if not is_behind:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SYNC_S)

    async def _pick_up(self, pickup: Pickup) -> None:
        """Take in what `kartero sendmail` left in the maildrop: at start, then every second."""
        while not self._stop.is_set():
            try:
                await pickup.run_once()
            except Exception:
                log.exception("%s", kv(event="maildrop.failed"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._maildrop_wakeup.wait(), MAILDROP_POLL_S)
            self._maildrop_wakeup.clear()

    async def _pick_up_imports(self, pickup: ImportPickup, blocking: Blocking) -> None:
        """Store what `kartero import` left in the import drop (migrate/importdrop.py): at start, then
        every second and on SIGUSR1. A pass past its deadline goes on in its thread (the next one waits
        for it: ImportPickup never runs twice at once)."""
        while not self._stop.is_set():
            try:
                await blocking(IMPORTDROP_DEADLINE_S, pickup.run_once)
            except DeadlineExceeded:
                log.warning("%s", kv(event="importdrop.slow", deadline_s=IMPORTDROP_DEADLINE_S))
            except Exception:
                log.exception("%s", kv(event="importdrop.failed"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._importdrop_wakeup.wait(), MAILDROP_POLL_S)
            self._importdrop_wakeup.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._task_group is not None
        self._task_group.create_task(coro)

    def _mailboxes_changed(self, mailbox_ids: frozenset[int]) -> None:
        for session in self._sessions:
            if isinstance(session, ImapSession) and session.watches(mailbox_ids):
                session.notify(mailbox_ids)

    def _account_changed(self, account_id: int) -> None:
        """Mailboxes were created, deleted or renamed, or subscriptions changed: for NOTIFY sessions."""
        for session in self._sessions:
            if isinstance(session, ImapSession) and session.watches_names(account_id):
                session.notify_names()

    def _metadata_changed(self, change: MetadataChange) -> None:
        """METADATA entries were set or removed: for NOTIFY sessions (RFC 5465 §5.7, §5.8)."""
        for session in self._sessions:
            if isinstance(session, ImapSession):
                session.notify_metadata(change)

    def _on_session_end(self) -> None:
        if not self._sessions:
            self._sessions_gone.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.wake_queue)

    def wake_queue(self) -> None:
        """SIGUSR1 (sent by `kartero queue flush`, `kartero sendmail` and `kartero import`): look at the
        queue, the maildrop and the import drop now rather than at the next poll: the import drop)."""
        self._maildrop_wakeup.set()
        self._importdrop_wakeup.set()
        if self._runner is not None:
            self._runner.wake()

    async def _shutdown(self, servers: list[asyncio.Server]) -> None:
        self._stopping = True
        log.info("%s", kv(event="stopping", sessions=len(self._sessions)))
        for server in servers:
            server.close()
        for session in list(self._sessions):
            session.stop()
        if self._sessions:
            self._sessions_gone.clear()
            try:
                async with asyncio.timeout(self.config.limits.shutdown_grace_s):
                    await self._sessions_gone.wait()
            except TimeoutError:
                # Nothing these sessions had was acknowledged: a 250 is only sent after the store.
                for session in list(self._sessions):
                    session.abort()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._runner is not None:
            await self._runner.stop(self.config.limits.shutdown_grace_s)


def srs_keys(config: Config, store: AnyStore) -> SRS:
    """The SRS secrets: `[srs] secret` (then `old_secrets`), or, without one, a secret made once and kept
    in the store, so bounces to forwarded mail stay valid across restarts and every node of a cluster
    signs and checks with the same one. Blocking (a database write the first time)."""
    kept = store.accounts.server_secret("srs", os.urandom(32).hex()) if not config.srs.secret else ""
    first = config.srs.secret or kept
    return SRS(tuple(s.encode() for s in (first, *config.srs.old_secrets)))


def store_state(store: AnyStore) -> metrics.StoreState:
    """The queue and store gauges of /metrics, read at scrape time (blocking: one aggregate over the
    queue entries, and the store's size on disk)."""
    stats = store.queue.queue_stats()
    return metrics.StoreState(stats.messages, stats.oldest_created_at, store.size_bytes())


def _postgres(store: AnyStore) -> PgStore | None:
    if isinstance(store, SQLiteStore):
        return None
    from kartero.store.postgres import PgStore

    assert isinstance(store, PgStore)
    return store


class _StoreKeys:
    """DKIM keys from the PostgreSQL store (every node signs with the same keys), reloaded when the
    change feed hears of a key change."""

    def __init__(self, store: PgStore) -> None:
        self.store = store

    def stamp(self) -> object:
        return self.store.dkim_keys_stamp()

    def load(self) -> dict[str, list[DKIMKey]]:
        return keys_from_rows(self.store.dkim_keys())


def serve(config: Config, worker: int = 0) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    server = Server(config, worker)
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(server.run())
        else:
            uvloop.run(server.run())
    except StartupError as exc:
        print(f"kartero: {exc}", file=sys.stderr)
        return 1
    return 0


async def client_name(resolver: Resolver, deadline_s: float, address: str) -> ClientName:
    """The client's verified reverse name for the content filters, within `deadline_s` (the greeting
    waits for it), "unknown" with TEMP past it."""
    try:
        return await within(deadline_s, asyncio.ensure_future(resolver.client_name(address)), "reverse DNS")
    except DeadlineExceeded:
        return ClientName("unknown", "", "TEMP")


def start_learner(config: Config, store: MailStore) -> Learner | None:
    """The worker that sends users' spam/ham reports to `[spam] learn` (None when that is not set)."""
    if not config.spam.learn:
        return None
    try:
        settings = LearnSettings(config.spam.learn)
    except ValueError as exc:
        raise StartupError(f"{config.name}: [spam] learn: {exc}") from None
    learner = Learner(store, settings)
    learner.start()
    return learner
