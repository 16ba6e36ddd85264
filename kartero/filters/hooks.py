"""The Python hooks as a content filter: the admin's `[hooks] module` loaded, and its functions run at
their phases of every SMTP session (the API hook authors see is kartero/hooks.py).

Loading: the file is compiled and run as a fresh module object on every load, registered in
`sys.modules` under a name of its own (`_kartero_hooks_<random>`: it cannot clash with a real module,
and dataclasses or `typing.get_type_hints` in the hooks file find their module). A missing function is
a phase the hooks do not care about; one that is not an `async def` taking its arguments is a load
error. `HookFilter(...)` raises `HookLoadError` for a module that cannot load, so the server refuses to
start with it; `reload()` (SIGHUP) keeps the hooks in use when the new file fails, and logs why.

Running: each call is a Task of its own with the deadline `[hooks] timeout`. A hook that raises,
passes its deadline or answers anything but a result, a list of at most MAX_RESULTS results or None is
logged with its traceback (`event=hooks.failed`) and answered per `[hooks] on_error`: "tempfail" is
`Refuse(HOOK_FAILED)` (451 4.7.1, a generic text: the client never sees the exception), "accept" is
`Continue()` (not `AcceptRest()`: the other hooks of the session still run). A hook that ignores its
cancellation is left behind, never waited for: a session does not hang on it. A session keeps the
module it started with, so a reload never mixes two versions in one session.

Hooks run on the event loop; a hook that blocks stalls every connection (docs/spam.md says so, and
kartero/net/watchdog.py logs the stall).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import secrets
import sys
import types
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from kartero import hooks, metrics
from kartero.concurrency import DeadlineExceeded, within
from kartero.filters.model import (
    AddHeader,
    ClientInfo,
    Continue,
    MessageVerdict,
    Refuse,
    Transaction,
    Verdict,
)
from kartero.log import kv
from kartero.mail import replies
from kartero.mail.replies import Reply
from kartero.mime.headers import decode_words, find_body_start
from kartero.store.interface import Content, FileSpan

log = logging.getLogger("kartero.hooks")

# The hooks and how many arguments each takes (DESIGN.md §1b).
HOOK_ARGUMENTS: Mapping[str, tuple[str, ...]] = {
    "on_connect": ("session",),
    "on_mail_from": ("session", "sender"),
    "on_rcpt_to": ("session", "recipient"),
    "on_message": ("session", "message"),
}
MAX_RESULTS = 100  # results in one answer: bounds the headers one message can get and what is logged
# The header block a hook sees is read from at most this much of the message: the SMTP listener's own
# limit (kartero/net/session.py HEADER_LIMIT) for a header it can clean; past it a message never gets here.
HEADER_SCAN_BYTES = 2 * 1024 * 1024
INLINE_HEADER_BYTES = 64 * 1024  # a header block larger than this is decoded in a worker thread
MAX_FIELDS = 10_000  # header fields given to a hook; a 2 MiB header of empty fields would be 500,000
MAX_DETAIL = 500  # characters of an exception's text in the log line (the traceback follows in full)
STREAM_BUFFER_BYTES = 64 * 1024

HookFunction = Callable[..., Coroutine[Any, Any, object]]


class HookSettings(Protocol):
    """What HookFilter needs of `config.HooksConfig` (filters do not import config)."""

    @property
    def module(self) -> Path | None: ...
    @property
    def on_error(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...


class HookLoadError(Exception):
    """The hooks module cannot be used: the message names the file and why ("line 3: invalid syntax",
    "on_message must be an `async def` function")."""


@dataclass(frozen=True, slots=True)
class LoadedHooks:
    """One load of the hooks file: the functions it defines, by hook name."""

    path: Path
    module_name: str
    functions: Mapping[str, HookFunction]


def load_hooks(path: Path) -> LoadedHooks:
    """Compile and run the hooks file as a new module and pick its hooks. Raises HookLoadError when
    the file cannot be read or compiled, raises when run, or defines a hook of the wrong kind."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise HookLoadError(f"[hooks] module {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: a NUL byte in the source
        where = f"line {exc.lineno}: " if isinstance(exc, SyntaxError) and exc.lineno else ""
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise HookLoadError(f"[hooks] module {path}: {where}{reason}") from exc
    name = f"_kartero_hooks_{secrets.token_hex(6)}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
        functions = _hook_functions(path, module)
    except HookLoadError:
        del sys.modules[name]
        raise
    except (Exception, SystemExit) as exc:  # SystemExit: a sys.exit() in the file must not stop the server
        del sys.modules[name]
        raise HookLoadError(f"[hooks] module {path}: raised {type(exc).__name__}: {_clip(str(exc))}") from exc
    return LoadedHooks(path, name, functions)


def _hook_functions(path: Path, module: types.ModuleType) -> dict[str, HookFunction]:
    functions: dict[str, HookFunction] = {}
    for hook, params in HOOK_ARGUMENTS.items():
        fn = module.__dict__.get(hook)
        if fn is None:
            continue
        wanted = f"`async def {hook}({', '.join(params)})`"
        if not inspect.iscoroutinefunction(fn):
            raise HookLoadError(f"[hooks] module {path}: {hook} must be an {wanted} function, "
                                f"not {type(fn).__name__}")  # fmt: skip
        try:
            inspect.signature(fn).bind(*params)
        except (TypeError, ValueError) as exc:
            raise HookLoadError(f"[hooks] module {path}: {hook} must be {wanted}: {exc}") from exc
        functions[hook] = fn
    for attr, value in module.__dict__.items():
        if attr.startswith("on_") and attr not in HOOK_ARGUMENTS and inspect.isfunction(value):
            log.warning("%s", kv(event="hooks.unknown", module=path, function=attr,
                                 detail="not a hook: " + ", ".join(HOOK_ARGUMENTS)))  # fmt: skip
    return functions


class HookFilter:
    """The hooks module as a `Filter` (kartero/filters/model.py). Construct it at start: a module that
    cannot load raises HookLoadError there, and the server does not start."""

    name = "hooks"

    def __init__(self, settings: HookSettings) -> None:
        if settings.module is None:
            raise HookLoadError("[hooks] module is not set")
        if settings.on_error not in ("tempfail", "accept"):
            raise HookLoadError(f'[hooks] on_error must be "tempfail" or "accept", not {settings.on_error!r}')
        self.path = settings.module
        self.on_error = settings.on_error
        self.timeout_s = settings.timeout_s
        self.hooks = load_hooks(self.path)
        self._abandoned: set[asyncio.Task[object]] = set()  # hooks past their deadline, still running

    def reload(self) -> bool:
        """Load the module again (SIGHUP). New sessions get the new hooks; when the file no longer
        loads, the hooks in use stay and the error is logged. Returns whether the new file is in use."""
        try:
            loaded = load_hooks(self.path)
        except HookLoadError as exc:
            log.error("%s", kv(event="hooks.reload_failed", module=self.path, detail=str(exc)), exc_info=exc)
            return False
        old, self.hooks = self.hooks, loaded
        sys.modules.pop(old.module_name, None)  # sessions that hold it keep their functions
        log.info("%s", kv(event="hooks.reloaded", module=self.path, hooks=",".join(loaded.functions) or "none"))
        return True

    def session(self) -> HookSession:
        return HookSession(self, self.hooks)

    def _keep(self, task: asyncio.Task[object]) -> None:
        """Hold a hook Task that ignored its cancellation until it ends, and read its outcome then."""
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a finished hook Task's exception as seen (it was logged, or the session no longer waits)."""
    if not task.cancelled():
        task.exception()


class _Failed(Exception):
    """A hook answered nothing usable: `detail` is for the log."""

    def __init__(self, detail: str, cause: BaseException | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.cause = cause


class HookSession:
    """The hooks of one SMTP session (a FilterSession). Never raises (but CancelledError)."""

    def __init__(self, owner: HookFilter, hooks_in_use: LoadedHooks) -> None:
        self._owner = owner
        self._functions = hooks_in_use.functions
        self._session = hooks.Session("", "", "", 0, "unknown")

    async def connect(self, client: ClientInfo) -> Verdict:
        self._session = hooks.Session(client.session_id, client.listener, client.address, client.port,
                                      client.hostname)  # fmt: skip
        verdict, _ = await self._run("on_connect", self._session)
        return verdict

    async def helo(self, name: str) -> Verdict:
        self._session = replace(self._session, helo=name)
        return Continue()

    async def mail_from(self, transaction: Transaction) -> Verdict:
        verdict, _ = await self._run("on_mail_from", self._in(transaction), transaction.mail_from)
        return verdict

    async def rcpt_to(self, transaction: Transaction, recipient: str, params: tuple[str, ...]) -> Verdict:
        verdict, _ = await self._run("on_rcpt_to", self._in(transaction), recipient)
        return verdict

    async def message(self, transaction: Transaction, data: bytes | Content) -> MessageVerdict:
        if "on_message" not in self._functions:
            return MessageVerdict(Continue())
        raw = io.BufferedReader(_MessageBytes(data), STREAM_BUFFER_BYTES)
        try:
            try:
                block = header_block(data, raw)
            except OSError as exc:  # the spool file is gone or unreadable: the hook cannot look at it
                return MessageVerdict(self._failed("on_message", _Failed(f"cannot read the message: {exc}", exc)))
            # A hostile header (up to 2 MiB) takes some 100 ms to decode: off the loop when it is big.
            headers = parse_headers(block) if len(block) <= INLINE_HEADER_BYTES else (
                await asyncio.to_thread(parse_headers, block))  # fmt: skip
            message = hooks.Message(
                hooks.Envelope(transaction.mail_from, transaction.recipients), headers, raw, len(data)
            )
            verdict, changes = await self._run("on_message", self._in(transaction), message)
        finally:
            raw.close()  # a hook that kept the stream finds it closed, and the spool file is let go
        return MessageVerdict(verdict, changes)

    async def abort(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _in(self, transaction: Transaction) -> hooks.Session:
        self._session = replace(self._session, helo=transaction.helo, tls_version=transaction.tls_version,
                                authenticated_user=transaction.authenticated_as)  # fmt: skip
        return self._session

    async def _run(self, hook: str, *args: object) -> tuple[Verdict, tuple[AddHeader, ...]]:
        fn = self._functions.get(hook)
        if fn is None:
            return Continue(), ()
        try:
            answer = await self._call(hook, fn, args)
            try:
                return interpret(hook, answer)
            except _Failed:
                raise
            except Exception as exc:  # an answer object that breaks when read (a list whose __iter__ raises)
                raise _Failed(f"returned an answer that cannot be read: {type(exc).__name__}", exc) from exc
        except _Failed as failure:
            return self._failed(hook, failure), ()

    def _failed(self, hook: str, failure: _Failed) -> Verdict:
        """Log a hook's failure, with its traceback, and answer per on_error."""
        log.error("%s", kv(event="hooks.failed", hook=hook, session=self._session.session_id or None,
                           detail=failure.detail), exc_info=failure.cause)  # fmt: skip
        metrics.filter_failed("hooks")
        if self._owner.on_error == "accept":
            return Continue()
        return Refuse(replies.HOOK_FAILED)

    async def _call(self, hook: str, fn: HookFunction, args: tuple[object, ...]) -> object:
        try:
            coroutine = fn(*args)
        except Exception as exc:
            raise _Failed(f"raised {type(exc).__name__}: {_clip(str(exc))}", exc) from exc
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(_guarded(coroutine))
        task.add_done_callback(_retrieve)
        try:
            return await within(self._owner.timeout_s, task, hook)
        except DeadlineExceeded:
            # `within` asked the Task to cancel; it has not run since, so its stack shows where it hung.
            self._owner._keep(task)
            raise _Failed(f"no answer within {self._owner.timeout_s:g} s{_where(task, self._owner.path)}") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                # The hook's own CancelledError (it cancelled something and let it through): its failure,
                # not the session's.
                raise _Failed("was cancelled") from None
            task.cancel()  # the session is going away: so does its hook
            raise
        except Exception as exc:
            raise _Failed(f"raised {type(exc).__name__}: {_clip(str(exc))}", exc) from exc


async def _guarded(coroutine: Coroutine[Any, Any, object]) -> object:
    """The hook's coroutine, with SystemExit made an ordinary error: asyncio would re-raise it out of
    the event loop and stop the server."""
    try:
        return await coroutine
    except SystemExit as exc:
        raise RuntimeError(f"SystemExit({exc.code!r})") from exc


def _where(task: asyncio.Task[object], path: Path) -> str:
    """Where a hung hook waits: the innermost frame in the hooks file along the chain of awaits."""
    found = ""
    step: object = task.get_coro()
    for _ in range(100):  # a chain of awaits is short; a bound all the same
        frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None)
        if frame is None:
            break
        if frame.f_code.co_filename == str(path):
            found = f" (waiting at {path}:{frame.f_lineno} in {frame.f_code.co_name})"
        step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None)
    return found


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


_EXPECTED = "accept(), reject(...), tempfail(...), add_header(...) (on_message), a list of them or None"


def interpret(hook: str, answer: object) -> tuple[Verdict, tuple[AddHeader, ...]]:
    """A hook's answer as the contract's verdict and changes. The first reject or tempfail decides;
    otherwise Continue with the headers added in order. Raises _Failed for an answer of the wrong
    kind, an add_header outside on_message, or more than MAX_RESULTS results."""
    if answer is None:
        return Continue(), ()
    if isinstance(answer, list | tuple):
        if len(answer) > MAX_RESULTS:
            raise _Failed(f"returned {len(answer)} results, more than {MAX_RESULTS}")
        results: list[object] = list(answer)
    else:
        results = [answer]
    refusal: Reply | None = None
    added: list[AddHeader] = []
    for result in results:
        match result:
            case hooks.Accept():
                pass
            case hooks.Reject() | hooks.Tempfail():
                try:
                    reply = Reply(result.code, result.enhanced, result.text)
                except ValueError as exc:  # only a result built around its own checks gets here
                    raise _Failed(f"returned a bad reply: {exc}") from exc
                refusal = refusal or reply
            case hooks.AddHeader():
                if hook != "on_message":
                    raise _Failed(f"returned add_header from {hook}: headers can only be added by on_message")
                try:  # checked again: an object made around __post_init__ must not reach the header
                    checked = hooks.AddHeader(result.name, result.value)
                except ValueError as exc:
                    raise _Failed(f"returned a bad header: {exc}") from exc
                added.append(AddHeader(checked.name, checked.value))
            case _:
                raise _Failed(f"returned {_clip(repr(result))}: expected {_EXPECTED}")
    if refusal is not None:
        return Refuse(refusal), ()
    return Continue(), tuple(added)


# -- the message as hooks see it ------------------------------------------------------------------------


def header_block(data: bytes | Content, raw: io.BufferedIOBase) -> bytes:
    """The message's header block (up to its blank line, at most HEADER_SCAN_BYTES). For a spooled
    message it is in `data.head`; only when it is not is the start of the file read."""
    head = data if isinstance(data, bytes) else data.head
    end, _ = find_body_start(head, 0, min(len(head), HEADER_SCAN_BYTES))
    block = head[:end]
    if _ends_header(block) or isinstance(data, bytes) or end >= HEADER_SCAN_BYTES:
        return block
    prefix = raw.read(HEADER_SCAN_BYTES)
    raw.seek(0)
    end, _ = find_body_start(prefix)
    return prefix[:end]


def _ends_header(block: bytes) -> bool:
    return block.endswith((b"\n\n", b"\n\r\n")) or block in (b"\n", b"\r\n")


def parse_headers(block: bytes) -> hooks.Headers:
    """The fields of a header block, names as written, values unfolded (RFC 5322 §2.2.3) and decoded by
    `mime.headers.decode_words` (RFC 2047 words; 8-bit text as UTF-8, else latin-1). Never raises and
    is linear in the block; a line without a colon is skipped, fields past MAX_FIELDS are dropped.

    Not `email.header.decode_header`: its encoded-word regex is quadratic on junk (1.2 MB of "=?a?q?"
    takes 6 s of CPU on the loop), and an invented charset name grows the codec cache for good."""
    fields: list[tuple[str, str]] = []
    name: str | None = None
    parts: list[bytes] = []
    for line in block.split(b"\n"):
        if len(fields) >= MAX_FIELDS:
            name = None
            break
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                parts.append(line)
            continue
        if name is not None:
            fields.append((name, decode_words(b"".join(parts).strip())))
            name = None
        colon = line.find(b":")
        if colon > 0 and line[:colon].strip():
            name = line[:colon].strip().decode("latin-1")
            parts = [line[colon + 1 :]]
    if name is not None:
        fields.append((name, decode_words(b"".join(parts).strip())))
    return hooks.Headers(fields)


class _MessageBytes(io.RawIOBase):
    """A message (bytes, or a `Content`: head in memory, tail in memory or a span of a spool file) as a
    read-only, seekable raw stream. The spool file is opened at the first read that reaches it, and
    every read copies only what was asked for."""

    def __init__(self, data: bytes | Content) -> None:
        super().__init__()
        self._head, self._tail = (data, b"") if isinstance(data, bytes) else (data.head, data.tail)
        self._size = len(data)
        self._pos = 0
        self._file: io.FileIO | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"bad whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        head = len(self._head)
        if self._pos < head:
            piece = self._head[self._pos : self._pos + len(view)]
            count = len(piece)
            view[:count] = piece
        elif isinstance(self._tail, bytes):
            piece = self._tail[self._pos - head : self._pos - head + len(view)]
            count = len(piece)
            view[:count] = piece
        else:
            count = self._read_file(self._tail, self._pos - head, view[: self._size - self._pos])
        self._pos += count
        return count

    def _read_file(self, span: FileSpan, offset: int, view: memoryview) -> int:
        if self._file is None:
            self._file = io.FileIO(span.path, "r")
        self._file.seek(span.offset + offset)
        count = self._file.readinto(view)
        if not count:
            raise OSError(f"{span.path}: the spool file ended early")
        return count

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed message stream (it is closed when the hook returns)")
