"""The asyncio adapter of one ManageSieve session (RFC 5804): drives the core over a Channel, checks
passwords and SCRAM proofs with the login throttle, runs the script store's calls in worker threads,
upgrades to TLS. A store that cannot be reached answers `NO (TRYLATER)` and the session goes on."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from kartero import metrics
from kartero.concurrency import DeadlineExceeded
from kartero.log import kv
from kartero.managesieve.connection import (
    ActivateScript,
    CheckRequested,
    ConnectionClosed,
    DeleteScript,
    Event,
    LoginRequested,
    ManageSieveConnection,
    ManageSieveSettings,
    Outcome,
    OutputReady,
    PutScript,
    RenameScript,
    ScramFinished,
    ScramRequested,
    ScriptsWanted,
    ScriptWanted,
    StartTLSRequested,
    Unauthenticated,
)
from kartero.net.channel import DEADLINE_TEXTS, LOGIN_FAILURE_DELAY_S, AccessContext, Channel, refusal_text
from kartero.net.deadlines import Deadline
from kartero.sieve_scripts import check_script
from kartero.store.ids import new_message_id
from kartero.store.interface import (
    Account,
    NoSuchScript,
    ScriptExists,
    ScriptIsActive,
    StoreUnavailable,
    TooManyScripts,
)

log = logging.getLogger("kartero.managesieve")

# RFC 5804 has no autologout rule; IMAP's 30 minutes (RFC 9051 §5.4) suits a client that keeps a session.
TIMEOUT_S = 30 * 60.0

ManageSieveContext = AccessContext[ManageSieveSettings]


class ManageSieveSession:
    def __init__(self, ctx: ManageSieveContext, channel: Channel) -> None:
        self.ctx = ctx
        self.channel = channel
        self.id = new_message_id()[-10:]
        self.conn = ManageSieveConnection(ctx.settings, is_tls=ctx.implicit_tls, is_loopback=channel.is_loopback,
                                          sasl_nonce=secrets.token_urlsafe(18))  # fmt: skip
        self.account: Account | None = None
        self._scram_account: Account | None = None
        self._scram_reserved = ""  # the user a SCRAM attempt is reserved for with the throttle
        self._stopping = False
        self._started_at = time.monotonic()
        self._ticket = ctx.admit(channel, self.id)
        channel.feed = self.conn.receive_data
        ctx.sessions.add(self)
        ctx.spawn(self.run())

    @classmethod
    def factory(cls, ctx: ManageSieveContext) -> Callable[[], Channel]:
        return lambda: Channel(lambda channel: cls(ctx, channel), ctx.deadlines)

    def stop(self) -> None:
        self._stopping = True
        self.channel.wake()

    def abort(self) -> None:
        self.channel.abort()

    async def run(self) -> None:
        conn, channel = self.conn, self.channel
        reason = "?"
        try:
            log.info("%s", kv(event="managesieve.connect", session=self.id, listener=self.ctx.listener,
                              client=channel.client_ip, via=channel.via))  # fmt: skip
            if self._ticket is not None and self._ticket.refusal is not None:
                conn.close(refusal_text(self._ticket.refusal), "connection limit", "TRYLATER")
            elif self.ctx.is_stopping():
                conn.close("Too many connections, try later", "connection limit", "TRYLATER")
            else:
                conn.start()
            reason = await self._loop()
        except Exception:
            reason = "internal error"
            log.exception("%s", kv(event="managesieve.session_failed", session=self.id, client=channel.client_ip))
        finally:
            if self._scram_reserved and self.ctx.throttle is not None:  # an attempt left unfinished counts
                self.ctx.throttle.failed(channel.client_ip, self._scram_reserved)
            self.ctx.sessions.discard(self)
            self.ctx.release(self._ticket)
            channel.close()
            log.info("%s", kv(event="managesieve.disconnect", session=self.id, client=channel.client_ip,
                              user=conn.user, reason=reason,
                              ms=round((time.monotonic() - self._started_at) * 1000)))  # fmt: skip
            self.ctx.on_session_end()

    async def _loop(self) -> str:
        conn, channel = self.conn, self.channel
        while True:
            event = conn.next_event()
            if event is None:
                await channel.send(conn.data_to_send())
                if channel.is_lost:
                    return "connection lost"
                if self._stopping and conn.is_idle:
                    conn.close("Server shutting down", "server shutting down", "TRYLATER")
                    continue
                expired = await channel.wait(TIMEOUT_S)
                if expired is not None:
                    self._expire(expired)
                continue
            match event:
                case LoginRequested(user=user, password=password):
                    await self._login(user, password)
                case ScramRequested(user=user):
                    await self._scram(user)
                case ScramFinished(user=user, ok=ok):
                    await self._scram_finished(user, ok)
                case StartTLSRequested():
                    await channel.send(conn.data_to_send())
                    failure = await channel.start_tls(self.ctx.tls_context(), conn.tls_established)
                    if failure is not None:
                        log.info("%s", kv(event="managesieve.tls_failed", session=self.id, client=channel.client_ip,
                                          detail=failure))  # fmt: skip
                        return "TLS handshake failed"
                case Unauthenticated():
                    log.info("%s", kv(event="managesieve.unauthenticate", session=self.id, client=channel.client_ip,
                                      user=self.account.address if self.account else None))  # fmt: skip
                    self.account = None
                case CheckRequested(text=text):
                    conn.check_result(await self._check(text))
                case OutputReady():
                    await channel.send(conn.data_to_send())  # waits while the peer reads nothing
                case ConnectionClosed(reason=reason):
                    await channel.send(conn.data_to_send())
                    return reason
                case _:
                    await self._store(event)

    async def _check(self, text: str) -> str | None:
        """Why the script does not compile, or None; compiled in a worker (a hostile 1 MiB script takes
        about a second). A bug in the compiler costs this command a NO, never the session."""
        try:
            return await self.channel.loop.run_in_executor(None, check_script, text)
        except Exception:
            log.exception("%s", kv(event="managesieve.check_failed", session=self.id, user=self.conn.user))
            return "Internal error while checking the script, try again later"

    def _expire(self, deadline: Deadline) -> None:
        text, reason = DEADLINE_TEXTS[deadline]
        if deadline is not Deadline.IDLE:
            log.info("%s", kv(event="managesieve.deadline", session=self.id, client=self.channel.client_ip,
                              deadline=deadline))  # fmt: skip
        self.conn.close(text, reason)

    # -- login -----------------------------------------------------------------------------------------

    async def _login(self, user: str, password: str) -> None:
        try:
            account = await self.ctx.check_login(self.channel, self.id, user, password)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return
        self._logged_in(account)

    async def _scram(self, user: str) -> None:
        """The SCRAM keys, after the throttle allows an attempt (reserved now: the proof is checked by
        the core, ScramFinished settles it)."""
        throttle, client = self.ctx.throttle, self.channel.client_ip
        if throttle is not None and (lockout := throttle.reserve(client, user)) is not None:
            log.info("%s", kv(event="managesieve.login_throttled", session=self.id, client=client, user=user,
                              reason=lockout))  # fmt: skip
            metrics.auth_throttled("managesieve")
            self.conn.scram_credentials(None)
            return
        self._scram_reserved = user
        try:
            keys, self._scram_account = await self.ctx.blocking(self.ctx.check_deadline_s, self.ctx.authenticator.scram,
                                                                user)  # fmt: skip
        except StoreUnavailable as exc:
            self._settle_scram(ok=False)
            self._unavailable(exc)
            return
        except DeadlineExceeded as exc:  # a hung lookup: this login fails, the session goes on
            log.error("%s", kv(event="managesieve.login_check_failed", session=self.id, client=client, user=user,
                               detail=str(exc)))  # fmt: skip
            self._settle_scram(ok=False)
            self.conn.scram_credentials(None)
            return
        self.conn.scram_credentials(keys)

    async def _scram_finished(self, user: str, ok: bool) -> None:
        client = self.channel.client_ip
        delay = self._settle_scram(ok=ok and self._scram_account is not None)
        if ok and self._scram_account is not None:
            log.info("%s", kv(event="managesieve.login", session=self.id, client=client,
                              user=self._scram_account.address, mechanism="SCRAM-SHA-256"))  # fmt: skip
            metrics.login("managesieve")
            self._logged_in(self._scram_account)
            return
        log.info("%s", kv(event="managesieve.login_failed", session=self.id, client=client, user=user,
                          mechanism="SCRAM-SHA-256", delay_s=delay))  # fmt: skip
        metrics.auth_failed("managesieve")
        await asyncio.sleep(delay)
        self._logged_in(None)

    def _settle_scram(self, *, ok: bool) -> float:
        """Settle the reserved attempt; the delay before a failure is answered."""
        user, self._scram_reserved = self._scram_reserved, ""
        throttle = self.ctx.throttle
        if throttle is None or not user:
            return 0.0 if ok else LOGIN_FAILURE_DELAY_S
        if ok:
            throttle.succeeded(self.channel.client_ip, user)
            return 0.0
        return throttle.failed(self.channel.client_ip, user)

    def _logged_in(self, account: Account | None) -> None:
        if account is None:
            self.conn.login_result(None)
            return
        refusal = self.ctx.admit_login(self._ticket, self.channel, self.id, account.address)
        if refusal is not None:
            self.conn.login_result(None)
            self.conn.close(f"Too many connections for this account from your address ({refusal.reason})",
                            "connection limit", "TRYLATER")  # fmt: skip
            return
        self.account = account
        self.conn.login_result(account.address)

    # -- scripts ---------------------------------------------------------------------------------------

    async def _store(self, event: Event) -> None:
        """A script command: the store call in a worker thread, its result handed to the core."""
        try:
            answer = await self.channel.loop.run_in_executor(None, self._run_store, event)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return
        answer()

    def _run_store(self, event: Event) -> Callable[[], None]:
        """In a worker thread: the store call, and what to tell the core (on the loop)."""
        assert self.account is not None
        sieve, account_id, conn = self.ctx.store.sieve, self.account.id, self.conn
        outcome = Outcome.OK
        try:
            match event:
                case ScriptsWanted():
                    scripts = [(s.name, s.active) for s in sieve.list_scripts(account_id)]
                    return lambda: conn.scripts_result(scripts)
                case ScriptWanted(name=name):
                    text = sieve.get_script(account_id, name)
                    return lambda: conn.script_result(text)
                case PutScript(name=name, text=text, max_scripts=most):
                    sieve.put_script(account_id, name, text, most)
                    self._log_change("put", name)
                case DeleteScript(name=name):
                    sieve.delete_script(account_id, name)
                    self._log_change("delete", name)
                case RenameScript(old=old, new=new):
                    sieve.rename_script(account_id, old, new)
                    self._log_change("rename", old, new=new)
                case ActivateScript(name=name):
                    sieve.set_active(account_id, name)
                    self._log_change("activate", name)
                case _:
                    raise AssertionError(f"not a script command: {event}")
        except NoSuchScript:
            outcome = Outcome.NONEXISTENT
        except ScriptExists:
            outcome = Outcome.ALREADYEXISTS
        except ScriptIsActive:
            outcome = Outcome.ACTIVE
        except TooManyScripts:
            outcome = Outcome.MAXSCRIPTS
        return lambda: conn.store_result(outcome)

    def _log_change(self, action: str, name: str | None, **more: Any) -> None:
        assert self.account is not None
        log.info("%s", kv(event=f"managesieve.{action}", session=self.id, user=self.account.address, script=name,
                          **more))  # fmt: skip

    def _unavailable(self, exc: Exception) -> None:
        log.warning("%s", kv(event="managesieve.store_unavailable", session=self.id, detail=str(exc)))
        self.conn.unavailable()
