"""The delivery agent: one destination domain, several queued messages, over the SMTP client core.

For each hop of the route (MX hosts in order) and each of its addresses it opens a connection and sends
every message still undecided; a hop that cannot be reached, refuses the session or breaks the TLS
handshake hands the rest to the next. A recipient-level reply is final for this attempt: 2xx delivered,
4xx deferred, 5xx failed. STARTTLS is used whenever offered (opportunistic: certificates are not
verified, and a failed handshake is retried once in clear).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from kartero.delivery.mtasts import MTASTS
from kartero.delivery.mx import Hop, NoRoute, find_route
from kartero.dns.resolver import NoRecords, Records, Resolver
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.replies import Reply, make_printable
from kartero.queue.jobs import Deferred, Delivered, Failed, JobMessage, OnOutcomes, Outcome
from kartero.smtp.client import (
    BodyWanted,
    ClientConnection,
    ClientSettings,
    Closed,
    MessageResult,
    OutgoingMessage,
    OutgoingRecipient,
    Ready,
    SessionFailed,
    StartTLSReady,
)

log = logging.getLogger("kartero.delivery")

BODY_CHUNK = 256 * 1024  # octets of a large message read and sent at a time


@dataclass(frozen=True, slots=True)
class AgentSettings:
    helo: str
    port: int = 25
    overrides: dict[str, Hop] = field(default_factory=dict)  # per-domain routes; "*" is the relayhost
    connect_timeout_s: float = 30.0
    source_address: str | None = None


def client_tls_context() -> ssl.SSLContext:
    """Opportunistic TLS (RFC 3207 as deployed): encrypt when offered, do not insist on names. Made
    without the system's trust anchors, which CERT_NONE never consults (loading them cost every server
    start ~45 ms of CPU)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _TLSFailed(Exception):
    pass


def _outcome(reply: Reply, remote: str, remote_dsn: bool) -> Outcome:
    if reply.is_positive:
        return Delivered(reply, remote, remote_dsn)
    if reply.is_transient:
        return Deferred(reply, remote)
    return Failed(reply, remote)


def verifying_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """For MTA-STS: the system's trust anchors (plus `ca_file`), host names checked."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    if ca_file:
        ctx.load_default_certs()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class DeliveryAgent:
    def __init__(self, resolver: Resolver, settings: AgentSettings, mta_sts: MTASTS | None = None,
                 verifying_tls: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.resolver = resolver
        self.settings = settings
        self.mta_sts = mta_sts
        self._tls = client_tls_context()
        self._verifying_tls = verifying_tls or verifying_tls_context()

    async def deliver(
        self, domain: str, messages: Sequence[JobMessage], on_outcomes: OnOutcomes | None = None
    ) -> dict[int, Outcome]:
        everyone = [r.recipient_id for m in messages for r in m.recipients]
        route = await find_route(domain, self.resolver, self.settings.port, self.settings.overrides)
        if isinstance(route, NoRoute):
            outcome: Outcome = (
                Failed(route.reply, is_nxdomain=route.is_nxdomain)
                if route.reply.is_permanent
                else Deferred(route.reply)
            )
            return dict.fromkeys(everyone, outcome)
        results: dict[int, Outcome] = {}
        last_error = replies.NO_HOST_REACHABLE.with_text(
            make_printable(f"No mail server for {domain} could be reached")
        )
        policy = None
        if self.mta_sts is not None and domain not in self.settings.overrides and "*" not in self.settings.overrides:
            policy = await self.mta_sts.policy(domain)
        hops = route.hops
        if policy is not None and policy.mode != "none":
            matching = tuple(h for h in hops if policy.allows(h.host))
            if len(matching) < len(hops):
                log.warning("%s", kv(event="mtasts.mx_mismatch", domain=domain, mode=policy.mode,
                                     hosts=",".join(h.host for h in hops if h not in matching)))  # fmt: skip
            if policy.enforced:
                hops = matching
                last_error = replies.MTASTS_NO_MATCHING_MX.with_text(
                    make_printable(f"No MX host of {domain} matches its MTA-STS policy")
                )
        for hop in hops:
            addresses = await self._addresses(hop)
            if isinstance(addresses, Reply):
                last_error = addresses
                continue
            verify = policy is not None and policy.mode != "none" and policy.allows(hop.host)
            for address in addresses:
                pending = [m for m in (_undecided(m, results) for m in messages) if m is not None]
                if not pending:
                    return results
                try:
                    error = await self._session(hop, address, pending, results, on_outcomes, use_tls=True,
                                                verify=verify, required=bool(policy and policy.enforced))  # fmt: skip
                except _TLSFailed as exc:
                    log.info("%s", kv(event="delivery.tls_failed", host=hop.host, address=address, detail=str(exc),
                                      policy=policy.mode if policy else None))  # fmt: skip
                    if policy is not None and policy.enforced:
                        last_error = replies.MTASTS_TLS_FAILED.with_text(make_printable(
                            f"TLS with {hop.host} failed, and the MTA-STS policy of {domain} requires it: {exc}"
                        ))  # fmt: skip
                        continue  # never in clear: the next host, or defer
                    error = await self._session(hop, address, pending, results, on_outcomes, use_tls=False)
                if error is None:
                    return results
                last_error = error
        # The attempt's status is "no host reachable" (RFC 3463 4.4.1), whatever the last host said.
        undelivered = Deferred(last_error, status_override=replies.NO_HOST_REACHABLE.enhanced)
        for recipient_id in everyone:
            results.setdefault(recipient_id, undelivered)
        return results

    async def _addresses(self, hop: Hop) -> tuple[str, ...] | Reply:
        try:
            ipaddress.ip_address(hop.host)
            return (hop.host,)
        except ValueError:
            pass
        answer = await self.resolver.addresses(hop.host)
        if isinstance(answer, Records):
            return answer.values
        if isinstance(answer, NoRecords):
            return replies.HOST_HAS_NO_ADDRESS.with_text(make_printable(f"Mail server {hop.host} has no address"))
        return replies.DNS_TEMPORARY.with_text(make_printable(answer.reason))

    async def _session(
        self,
        hop: Hop,
        address: str,
        messages: list[JobMessage],
        results: dict[int, Outcome],
        on_outcomes: OnOutcomes | None,
        *,
        use_tls: bool,
        verify: bool = False,
        required: bool = False,
    ) -> Reply | None:
        """Deliver over one connection; None when every message got its replies, else why not."""
        started = time.monotonic()
        remote = f"{hop.host}[{address}]"
        try:
            source = self.settings.source_address
            if source and (":" in source) != (":" in address):
                source = None  # an IPv4 source cannot reach an IPv6 host, nor the reverse
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, hop.port, local_addr=(source, 0) if source else None),
                self.settings.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            why = f"Cannot connect to {remote}:{hop.port}: {exc.__class__.__name__} {exc}".strip()
            return replies.CONNECT_FAILED.with_text(make_printable(why))
        conn = ClientConnection(ClientSettings(helo=self.settings.helo, use_starttls=use_tls, require_tls=required))
        tls = self._verifying_tls if verify else self._tls
        queue = list(messages)
        current: JobMessage | None = None
        try:
            while True:
                event = conn.next_event()
                if event is None:
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    try:
                        async with asyncio.timeout(conn.timeout_s):
                            data = await reader.read(65536)
                    except TimeoutError:
                        return replies.REMOTE_TIMEOUT.with_text(make_printable(f"Timeout talking to {remote}"))
                    conn.receive_data(data)
                    continue
                match event:
                    case BodyWanted():
                        assert current is not None
                        await self._send_body(conn, current, writer)
                    case StartTLSReady():
                        writer.write(conn.data_to_send())
                        await writer.drain()
                        try:
                            await writer.start_tls(tls, server_hostname=hop.host)
                        except (OSError, ssl.SSLError, TimeoutError) as exc:
                            raise _TLSFailed(str(exc)) from None
                        conn.tls_established()
                    case Ready():
                        current = self._send_next(conn, queue, remote, results, on_outcomes)
                    case MessageResult():
                        assert current is not None
                        self._record(current, event, remote, results, on_outcomes)
                        current = self._send_next(conn, queue, remote, results, on_outcomes)
                    case SessionFailed(reply=reply, reason=reason):
                        with contextlib.suppress(OSError):
                            writer.write(conn.data_to_send())  # a QUIT of ours, if any
                        if reply is None:
                            reply = replies.REMOTE_SESSION_FAILED.with_text(make_printable(reason))
                        return reply.with_note(make_printable(f"(from {remote})"))
                    case Closed():
                        break
        except (OSError, ConnectionError) as exc:
            return replies.REMOTE_SESSION_FAILED.with_text(make_printable(f"Connection to {remote} failed: {exc}"))
        finally:
            writer.close()
            log.debug("%s", kv(event="delivery.session", host=hop.host, address=address,
                               ms=round((time.monotonic() - started) * 1000)))  # fmt: skip
        if not queue and current is None:
            return None
        return replies.REMOTE_CLOSED_EARLY.with_text(make_printable(f"{remote} closed the session early"))

    @staticmethod
    async def _send_body(conn: ClientConnection, message: JobMessage, writer: asyncio.StreamWriter) -> None:
        """A large message, read and written BODY_CHUNK octets at a time with flow control (its bytes are
        held open, so deleting it from the queue meanwhile cannot cut it short). A read that fails
        anyway cannot end DATA honestly: the connection is dropped, so the peer discards the message."""
        assert message.open_body is not None
        loop = asyncio.get_running_loop()
        reader = await loop.run_in_executor(None, message.open_body)
        try:
            position = 0
            while position < reader.size:
                chunk = await loop.run_in_executor(None, reader.read, position, BODY_CHUNK)
                if not chunk:
                    raise ConnectionError(f"message {message.queue_id} ends before its size")
                conn.send_body(chunk)
                position += len(chunk)
                writer.write(conn.data_to_send())
                await writer.drain()
            conn.end_body()
        except BaseException:
            writer.transport.abort()
            raise
        finally:
            reader.close()

    def _send_next(
        self,
        conn: ClientConnection,
        queue: list[JobMessage],
        remote: str,
        results: dict[int, Outcome],
        on_outcomes: OnOutcomes | None,
    ) -> JobMessage | None:
        """Start the next message the server can take (recording the ones it cannot); QUIT when done."""
        while queue:
            candidate = queue.pop(0)
            immediate = conn.send_message(_outgoing(candidate))
            if immediate is None:
                return candidate
            self._record(candidate, immediate, remote, results, on_outcomes)
        conn.quit()
        return None

    @staticmethod
    def _record(
        message: JobMessage,
        result: MessageResult,
        remote: str,
        results: dict[int, Outcome],
        on_outcomes: OnOutcomes | None,
    ) -> None:
        outcomes = {
            recipient.recipient_id: _outcome(reply, remote, result.remote_dsn)
            for recipient, reply in zip(message.recipients, result.replies, strict=True)
        }
        results.update(outcomes)
        if on_outcomes is not None:
            on_outcomes(outcomes)


def _undecided(message: JobMessage, results: dict[int, Outcome]) -> JobMessage | None:
    left = tuple(r for r in message.recipients if r.recipient_id not in results)
    if not left:
        return None
    if len(left) == len(message.recipients):
        return message
    return replace(message, recipients=left)


def _outgoing(message: JobMessage) -> OutgoingMessage:
    return OutgoingMessage(
        sender=message.sender,
        recipients=tuple(OutgoingRecipient(r.address, r.notify, r.orcpt) for r in message.recipients),
        data=message.data,
        needs_smtputf8=message.smtputf8,
        is_8bit=message.body_8bit,
        ret=message.ret,
        envid=message.envid,
        streamed_size=message.size if message.open_body is not None else 0,
    )
