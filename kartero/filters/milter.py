"""A `[[milter]]` as a content filter: one connection to the milter per SMTP session, driven through
the sans-I/O client of kartero/milter.

Like Postfix, the connection opens at `connect` and closes with the session. Every exchange (the
connect, each write, each wait for a reply) has the milter's `timeout`. Whatever goes wrong — the
milter refuses the connection, passes its timeout, closes it mid-message, breaks the protocol — is
logged (`event=milter.failed`) and answered per `on_error`: "tempfail" refuses this phase and every
later one of the session with 451 4.7.1 (Postfix's milter_default_action), "accept" accepts the rest.
The milter is not spoken to again in that session. The changes a milter asks for come back only when
its end-of-message exchange completed, so a milter dying mid-message changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import ipaddress
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

from kartero import metrics
from kartero.concurrency import Blocking, DeadlineExceeded, within
from kartero.filters.model import (
    AcceptRest,
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    ClientInfo,
    Continue,
    DeleteRecipient,
    Discard,
    InsertHeader,
    MessageVerdict,
    Quarantine,
    Refuse,
    ReplaceBody,
    Transaction,
    Verdict,
)
from kartero.filters.model import Change as FilterChange
from kartero.log import kv
from kartero.mail.replies import MILTER_TEMPFAILED
from kartero.milter import client as core
from kartero.milter import protocol
from kartero.milter.fields import HeaderEnd, HeaderField, MessageSplitter
from kartero.store.interface import Content, FileSpan

log = logging.getLogger("kartero.filters.milter")

T = TypeVar("T")
READ_BYTES = 65536  # one read from the milter's socket, one read of a spooled message


DRAIN_ABOVE = 64 * 1024  # octets waiting in the transport before a write waits for the milter to read
WRITE_BATCH = 16 * 1024  # octets of no-reply commands gathered into one write


class MilterSettings(Protocol):
    """What a milter filter needs of `config.MilterConfig` (filters does not import config)."""

    @property
    def address(self) -> str: ...  # "host:port" or "unix:/path"
    @property
    def on_error(self) -> str: ...  # "tempfail" or "accept"
    @property
    def timeout_s(self) -> float: ...
    @property
    def is_unix(self) -> bool: ...


class MilterFailed(Exception):
    """The milter connection is lost (internal to this module: every phase turns it into on_error)."""


class MilterFilter:
    """One `[[milter]]`. `max_message_bytes` bounds a body the milter replaces ([limits] message_size);
    `local_domains` decides the {mail_mailer}/{rcpt_mailer} macros ("local" or "smtp")."""

    def __init__(self, config: MilterSettings, *, version: str | None = None, max_message_bytes: int = 50_000_000,
                 local_domains: Iterable[str] = (), limits: core.Limits | None = None,
                 blocking: Blocking | None = None) -> None:  # fmt: skip
        self.config = config
        self.name = f"milter {config.address}"
        self.version = version or _our_version()  # the macro `v`, as Postfix's "Postfix 3.7.11"
        self.max_message_bytes = max_message_bytes
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.limits = limits or core.Limits()
        self.blocking = blocking or Blocking()

    def session(self) -> MilterSession:
        return MilterSession(self)


class MilterSession:
    """The `FilterSession` of one SMTP session with one milter."""

    def __init__(self, milter: MilterFilter) -> None:
        self.milter = milter
        self.config = milter.config
        self._client: core.MilterClient | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._failed = False
        self._macros: dict[str, str] = {}

    # -- the phases --------------------------------------------------------------------------------------------

    async def connect(self, client: ClientInfo) -> Verdict:
        self._macros = _connect_macros(client, self.milter.version)
        try:
            await self._open()
            family, hostname = _family(client.address), client.hostname
            if hostname == "unknown" and client.address:
                hostname = f"[{client.address}]"  # Postfix's (and sendmail's) name for an unresolved client
            self._core().connect(hostname, family, client.port, client.address, self._macros)
            return _verdict(await self._exchange())
        except MilterFailed as exc:
            return self._on_error("connect", str(exc))
        except Exception as exc:  # a bug here must not take the SMTP session down: on_error, logged
            return self._on_error("connect", f"internal error: {exc!r}", exc)

    async def helo(self, name: str) -> Verdict:
        return await self._phase("helo", lambda c: c.helo(name, self._macros))

    async def mail_from(self, transaction: Transaction) -> Verdict:
        self._macros.update(_mail_macros(transaction, self.milter.local_domains))
        args = [f"<{transaction.mail_from}>", *transaction.mail_params]
        return await self._phase("mail", lambda c: c.mail_from(args, self._macros))

    async def rcpt_to(self, transaction: Transaction, recipient: str, params: tuple[str, ...]) -> Verdict:
        domain = recipient.rpartition("@")[2].lower()
        self._macros.update({"{rcpt_addr}": recipient, "{rcpt_host}": domain,
                             "{rcpt_mailer}": "local" if domain in self.milter.local_domains else "smtp"})  # fmt: skip
        args = [f"<{recipient}>", *params]
        return await self._phase("rcpt", lambda c: c.rcpt_to(args, self._macros))

    async def message(self, transaction: Transaction, data: bytes | Content) -> MessageVerdict:
        if transaction.queue_id:
            self._macros["i"] = transaction.queue_id
        if self._failed:
            return MessageVerdict(self._after_failure())
        try:
            verdict = await self._message(data)
        except MilterFailed as exc:
            return MessageVerdict(self._on_error("message", str(exc)))
        except OSError as exc:  # the spool file: our side failed, not the milter; the same answer
            return MessageVerdict(self._on_error("message", f"reading the message: {exc}"))
        except Exception as exc:
            return MessageVerdict(self._on_error("message", f"internal error: {exc!r}", exc))
        return verdict

    async def abort(self) -> None:
        client = self._client
        if client is None or self._failed or client.state is not core.State.READY:
            return
        client.abort()
        try:
            await self._flush()
        except MilterFailed as exc:  # the next phase answers per on_error
            self._on_error("abort", str(exc))

    async def close(self) -> None:
        client, writer = self._client, self._writer
        if client is not None and not self._failed and client.state is core.State.READY:
            client.quit()
            with contextlib.suppress(MilterFailed):
                await self._flush()
        self._client = None
        await self._disconnect(writer)

    # -- the message ---------------------------------------------------------------------------------------------

    async def _message(self, data: bytes | Content) -> MessageVerdict:
        client = self._core()
        if client.settled is not None:  # accepted or refused at connect/HELO: nothing to ask
            return MessageVerdict(_verdict(client.settled))
        client.data(self._macros)
        answer = await self._exchange()
        if answer.action is core.Action.CONTINUE:
            answer = await self._stream(client, data)
        if answer.action is not core.Action.CONTINUE:
            # The milter settled the message before its end: no end-of-message exchange, no changes.
            await self.abort()
            return MessageVerdict(_verdict(answer))
        client.end_of_message(self._macros, self.milter.max_message_bytes)
        answer = await self._exchange()
        changes = tuple(_change(m) for m in answer.changes)
        return MessageVerdict(_verdict(answer), changes)

    async def _stream(self, client: core.MilterClient, data: bytes | Content) -> core.Answer:
        """Header fields, end of header and body chunks, until the milter answers other than continue."""
        splitter = MessageSplitter(self.milter.limits.max_field_bytes)
        body = bytearray()
        async with contextlib.aclosing(_chunks(data, self.milter.blocking, self.config.timeout_s)) as chunks:
            async for chunk in chunks:
                for part in splitter.feed(chunk):
                    answer = await self._send_part(client, part, body)
                    if answer.action is not core.Action.CONTINUE:
                        return answer
                if splitter.in_body and not client.wants(protocol.BODY):
                    return core.CONTINUE  # NOBODY or SKIP: the rest need not even be read
        for part in splitter.end():
            answer = await self._send_part(client, part, body)
            if answer.action is not core.Action.CONTINUE:
                return answer
        if body and client.wants(protocol.BODY):
            client.body(bytes(body), self._macros)
            return await self._exchange()
        return core.CONTINUE

    async def _send_part(self, client: core.MilterClient, part: HeaderField | HeaderEnd | bytes,
                         body: bytearray) -> core.Answer:  # fmt: skip
        if isinstance(part, HeaderField):
            client.header(part.name, part.value, self._macros)
            return await self._exchange()
        if isinstance(part, HeaderEnd):
            client.end_of_header(self._macros)
            return await self._exchange()
        if not client.wants(protocol.BODY):
            return core.CONTINUE
        body += part
        while len(body) >= protocol.BODY_CHUNK:  # Postfix sends full 65535-octet chunks
            chunk = bytes(body[: protocol.BODY_CHUNK])
            del body[: protocol.BODY_CHUNK]
            client.body(chunk, self._macros)
            answer = await self._exchange()
            if answer.action is not core.Action.CONTINUE or not client.wants(protocol.BODY):
                body.clear()
                return answer
        return core.CONTINUE

    # -- talking to the milter ------------------------------------------------------------------------------------

    def _core(self) -> core.MilterClient:
        if self._client is None:
            raise MilterFailed("no connection")
        return self._client

    async def _phase(self, phase: str, send: Callable[[core.MilterClient], None]) -> Verdict:
        if self._failed:
            return self._after_failure()
        try:
            client = self._core()
            send(client)
            return _verdict(await self._exchange())
        except MilterFailed as exc:
            return self._on_error(phase, str(exc))
        except Exception as exc:
            return self._on_error(phase, f"internal error: {exc!r}", exc)

    async def _open(self) -> None:
        address = self.config.address
        try:
            if self.config.is_unix:
                opening = asyncio.open_unix_connection(address.removeprefix("unix:"), limit=READ_BYTES)
            else:
                host, _, port = address.rpartition(":")
                opening = asyncio.open_connection(host.strip("[]"), int(port), limit=READ_BYTES)
            self._reader, self._writer = await self._within(opening)
        except (OSError, ValueError) as exc:
            raise MilterFailed(f"cannot connect: {exc}") from exc
        self._client = core.MilterClient(self.milter.limits)
        self._client.negotiate()
        event = await self._exchange_event()
        if not isinstance(event, core.Negotiated):
            raise MilterFailed(f"option negotiation: {event}")

    async def _exchange(self) -> core.Answer:
        event = await self._exchange_event()
        if isinstance(event, core.Answer):
            if self._client is not None and self._client.wants_close:
                await self._disconnect(self._writer)  # settled at connect/HELO, as Postfix closes it
                self._writer = None
            return event
        raise MilterFailed(event.detail if isinstance(event, core.Failed) else f"unexpected {event}")

    async def _exchange_event(self) -> core.Event:
        """Send what the core has and read until it has an answer: the whole answer within `timeout`
        (a milter trickling bytes gets no more), the wait starting again at each progress reply."""
        client = self._core()
        event = client.next_event()
        if not isinstance(event, core.NeedData):
            # Answered without waiting (a command the milter asked no reply to, as rspamd does for the
            # header fields): its packet may wait for the next one, up to a write's worth, so a message's
            # fields go out in a few writes rather than one system call each.
            if isinstance(event, core.Failed):
                raise MilterFailed(event.detail)
            if client.output_size > WRITE_BATCH:
                await self._flush()
            return event
        await self._flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_s
        progress = client.progress
        while True:
            event = client.next_event()
            if not isinstance(event, core.NeedData):
                if isinstance(event, core.Failed):
                    raise MilterFailed(event.detail)
                return event
            if self._reader is None:
                raise MilterFailed("no connection")
            if client.progress != progress:
                progress, deadline = client.progress, loop.time() + self.config.timeout_s
            client.receive_data(await self._read(self._reader, max(deadline - loop.time(), 0.001)))

    async def _read(self, reader: asyncio.StreamReader, timeout_s: float) -> bytes:
        """The next octets from the milter. The deadline is a timer that aborts the connection, not a
        Task per read (reads are most of the exchanges)."""
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            if self._writer is not None:
                self._writer.transport.abort()  # the read ends with EOF or an error

        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            data = await reader.read(READ_BYTES)
        except OSError as exc:
            if expired:
                raise MilterFailed(f"no answer within {self.config.timeout_s:g} s") from exc
            raise MilterFailed(f"read: {exc}") from exc
        except asyncio.CancelledError:
            self._failed = True  # cut midway by the session's own deadline: out of step, done for the session
            if self._writer is not None:
                self._writer.transport.abort()
            raise
        finally:
            timer.cancel()
        if expired:
            raise MilterFailed(f"no answer within {self.config.timeout_s:g} s")
        return data

    async def _flush(self) -> None:
        client = self._core()
        out = client.data_to_send()
        if not out:
            return
        if self._writer is None:
            raise MilterFailed("no connection")
        try:
            self._writer.write(out)
            # Only a transport holding more than its high-water mark can make drain() wait; below it a
            # drain with a deadline would cost a Task per packet (a third of the loop's time with rspamd).
            if self._writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
                await self._within(self._writer.drain())
        except OSError as exc:
            raise MilterFailed(f"write: {exc}") from exc

    async def _within(self, work: Awaitable[T], timeout_s: float | None = None) -> T:
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        try:
            return await within(timeout_s, asyncio.ensure_future(work), self.milter.name)
        except DeadlineExceeded as exc:
            raise MilterFailed(f"no answer within {self.config.timeout_s:g} s") from exc
        except asyncio.CancelledError:
            # The session's own deadline ended the exchange midway: the connection is out of step with
            # the core, so it is done for this session (later phases answer per on_error).
            self._failed = True
            if self._writer is not None:
                self._writer.transport.abort()
            raise

    async def _disconnect(self, writer: asyncio.StreamWriter | None) -> None:
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, DeadlineExceeded):
            await within(self.config.timeout_s, asyncio.ensure_future(writer.wait_closed()))

    # -- failures ---------------------------------------------------------------------------------------------------

    def _on_error(self, phase: str, detail: str, bug: Exception | None = None) -> Verdict:
        log.warning("%s", kv(event="milter.failed", milter=self.config.address, phase=phase, detail=detail,
                             on_error=self.config.on_error), exc_info=bug)  # fmt: skip
        metrics.filter_failed(f"milter {self.config.address}")
        self._failed = True
        if self._client is not None:
            self._client.fail(detail)
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.transport.abort()  # the stream is out of step: never reuse it (Postfix does the same)
        return AcceptRest() if self.config.on_error == "accept" else Refuse(MILTER_TEMPFAILED)

    def _after_failure(self) -> Verdict:
        return Continue() if self.config.on_error == "accept" else Refuse(MILTER_TEMPFAILED)


async def _chunks(data: bytes | Content, blocking: Blocking, timeout_s: float) -> AsyncGenerator[bytes, None]:
    """The message in pieces of at most READ_BYTES; a spooled tail is read from its file in the worker
    pool, one piece at a time (never whole into memory)."""
    head, tail = (data.head, data.tail) if isinstance(data, Content) else (data, b"")
    for start in range(0, len(head), READ_BYTES):
        yield head[start : start + READ_BYTES]
    if isinstance(tail, FileSpan):
        fd = await blocking(timeout_s, os.open, tail.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for start in range(0, tail.length, READ_BYTES):
                length = min(READ_BYTES, tail.length - start)
                piece = await blocking(timeout_s, os.pread, fd, length, tail.offset + start)
                if len(piece) != length:
                    raise OSError(f"spool file {tail.path} is short")
                yield piece
        finally:
            os.close(fd)
    else:
        for start in range(0, len(tail), READ_BYTES):
            yield tail[start : start + READ_BYTES]


def _our_version() -> str:
    try:
        return f"Kartero {importlib.metadata.version('kartero')}"
    except importlib.metadata.PackageNotFoundError:
        return "Kartero"


def _family(address: str) -> int:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return protocol.FAMILY_UNKNOWN
    return protocol.FAMILY_INET if ip.version == 4 else protocol.FAMILY_INET6


def _connect_macros(client: ClientInfo, version: str) -> dict[str, str]:
    resolved = client.hostname != "unknown"
    macros = {
        "j": client.local_name,
        "{daemon_name}": client.local_name,
        "{daemon_addr}": client.local_address,
        "v": version,
        "_": f"{client.hostname} [{client.address}]",
        "{client_addr}": client.address,
        "{client_port}": str(client.port),
        "{client_name}": client.hostname,
        "{client_ptr}": client.ptr_name or client.hostname,
        "{client_resolve}": client.resolve if not resolved else "OK",
        "i": client.session_id,
    }
    return {name: value for name, value in macros.items() if value}


def _mail_macros(transaction: Transaction, local_domains: frozenset[str]) -> dict[str, str]:
    domain = transaction.mail_from.rpartition("@")[2].lower() if "@" in transaction.mail_from else ""
    macros = {
        "{mail_addr}": transaction.mail_from,
        "{mail_host}": domain,
        "{mail_mailer}": "local" if domain in local_domains else "smtp",
        "{auth_authen}": transaction.authenticated_as or "",
        "{tls_version}": transaction.tls_version or "",
        "{cipher}": transaction.tls_cipher or "",
    }
    if transaction.queue_id:
        macros["i"] = transaction.queue_id
    return {name: value for name, value in macros.items() if value or name == "{mail_addr}"}


def _verdict(answer: core.Answer) -> Verdict:
    match answer.action:
        case core.Action.CONTINUE:
            return Continue()
        case core.Action.ACCEPT:
            return AcceptRest()
        case core.Action.DISCARD:
            return Discard()
        case core.Action.REFUSE:
            return Refuse(answer.reply or MILTER_TEMPFAILED)


def _change(modification: core.Modification) -> FilterChange:
    match modification:
        case core.AddHeader(name, value):
            return AddHeader(name, value)
        case core.InsertHeader(index, name, value):
            return InsertHeader(index, name, value)
        case core.ChangeHeader(index, name, value):
            return ChangeHeader(name, index, value)
        case core.AddRecipient(address, params):
            return AddRecipient(address, params)
        case core.DeleteRecipient(address):
            return DeleteRecipient(address)
        case core.ReplaceBody(body):
            return ReplaceBody(body)
        case core.ChangeFrom(address, params):
            return ChangeSender(address, params)
        case core.Quarantine(reason):
            return Quarantine(reason)
    raise AssertionError(modification)

