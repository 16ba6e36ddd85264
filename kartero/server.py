"""The server process: builds every object from the Config, runs the listeners, handles signals.

Shutdown (SIGTERM/SIGINT): stop accepting → ask each session to end (idle ones get `421` at once, those
in the middle of a message finish it first) → wait up to `[limits] shutdown_grace` → cancel the rest
(nothing they had was acknowledged) → let the store finish every delivery it accepted → exit 0.
SIGHUP reloads the TLS certificate for new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

from kartero.auth.accounts import Directory
from kartero.config import Config
from kartero.log import kv
from kartero.net.session import SessionContext, SMTPSession
from kartero.policy.inbound import InboundPolicy
from kartero.smtp.server import ServerSettings
from kartero.store.sqlite import SQLiteStore
from kartero.tls import make_self_signed, server_context

log = logging.getLogger("kartero.server")


class StartupError(Exception):
    """The server cannot start (port taken, unreadable certificate, ...); the message says why."""


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._tls: ssl.SSLContext | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        self._sessions: set[SMTPSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_group: asyncio.TaskGroup | None = None

    # -- TLS -----------------------------------------------------------------------------------------

    def _load_tls(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        if self.config.make_certificate and not (tls.cert.exists() and tls.key.exists()):
            make_self_signed(tls.cert, tls.key, [self.config.hostname, "localhost", "127.0.0.1"])
            log.info("%s", kv(event="tls.self_signed_created", cert=tls.cert))
        try:
            return server_context(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"{self.config.name}: [tls]: cannot load certificate {tls.cert}: {exc}") from None

    def reload_tls(self) -> None:
        try:
            self._tls = self._load_tls()
        except StartupError as exc:
            log.error("%s", kv(event="tls.reload_failed", detail=str(exc)))
        else:
            log.info("%s", kv(event="tls.reloaded"))

    # -- lifecycle -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(32, thread_name_prefix="kartero-io"))
        self._tls = self._load_tls()
        store = SQLiteStore(config.data_dir)
        removed = await asyncio.to_thread(store.remove_orphans)
        if removed:
            log.info("%s", kv(event="store.orphans_removed", count=removed))
        store.start()
        directory = Directory(store, config.domains)
        policy = InboundPolicy(directory, config.primary_domain)
        settings = ServerSettings(
            hostname=config.hostname,
            max_message_size=config.limits.message_size,
            max_recipients=config.limits.recipients_per_message,
            max_errors=config.limits.errors_per_session,
            is_tls_available=self._tls is not None,
            command_timeout_s=config.limits.command_timeout_s,
            data_timeout_s=config.limits.data_timeout_s,
        )
        servers: list[asyncio.Server] = []
        try:
            async with asyncio.TaskGroup() as tg:
                self._task_group = tg
                for kind, addresses in config.listen.items():
                    ctx = SessionContext(
                        listener=kind,
                        settings=settings,
                        policy=policy,
                        store=store,
                        tls_context=lambda: self._tls,
                        spawn=self._spawn,
                        sessions=self._sessions,
                        max_connections=config.limits.connections,
                        is_stopping=lambda: self._stopping,
                    )
                    for address in addresses:
                        try:
                            server = await loop.create_server(
                                lambda ctx=ctx: SMTPSession(ctx),  # type: ignore[misc]
                                address.host,
                                address.port,
                                reuse_address=True,
                                backlog=512,
                            )
                        except OSError as exc:
                            raise StartupError(f"cannot listen on {address} ({kind}): {exc.strerror}") from None
                        servers.append(server)
                        log.info("%s", kv(event="listening", listener=kind, address=address))
                        print(f"{kind} listening on {address}", flush=True)
                self._install_signals(loop)
                print("kartero ready", flush=True)
                log.info("%s", kv(event="ready", hostname=config.hostname, domains=",".join(config.domains)))
                await self._stop.wait()
                await self._shutdown(servers)
        except* StartupError as group:
            raise group.exceptions[0] from None
        finally:
            for server in servers:
                server.close()
            await asyncio.to_thread(store.close)
            log.info("%s", kv(event="stopped"))

    def _spawn(self, session: SMTPSession) -> None:
        assert self._task_group is not None
        task = self._task_group.create_task(session.run())
        session.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)

    async def _shutdown(self, servers: list[asyncio.Server]) -> None:
        self._stopping = True
        log.info("%s", kv(event="stopping", sessions=len(self._sessions)))
        for server in servers:
            server.close()
        for session in list(self._sessions):
            session.stop()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.limits.shutdown_grace_s)
            for task in pending:
                task.cancel()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run

    server = Server(config)
    try:
        runner(server.run())
    except StartupError as exc:
        print(f"kartero: {exc}", file=sys.stderr)
        return 1
    return 0
