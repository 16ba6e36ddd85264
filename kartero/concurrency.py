"""How the event loop waits for work that is not its own: blocking calls in the worker pool with a
deadline, and coroutines started eagerly so that a decision needing no I/O costs no task switch.

Policy and intake are `async def`. Most of their calls (a RCPT answered from the directory snapshot, a
MAIL FROM check) never suspend; running such a coroutine in a Task would add a loop iteration and a
task object to every SMTP command (about 7 µs here, a few percent of a whole transaction at full rate).
`start_eagerly` runs the coroutine at once, on the caller's stack, up to its first suspension: when it
finishes there the answer is in hand; when it suspends (a DNS lookup, a directory reload, a commit), the
rest runs in an ordinary Task. Python 3.12's eager task factory does the same; this works on 3.11 too.
The first step runs outside any Task, so policy code must not call `asyncio.current_task()` or use
`asyncio.timeout()` before it first awaits: deadlines are the caller's business (see `Blocking` and
the session adapters).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class DeadlineExceeded(TimeoutError):
    """Work given a deadline did not finish within it (its thread may still be running)."""


class Blocking:
    """The one way blocking work (argon2, SQLite, DNS through pyspf/dkimpy, file I/O) runs for the loop:
    in the server's worker pool, awaited with a deadline. Past the deadline the caller gets
    `DeadlineExceeded` and goes on; the thread finishes its call in the background (Python cannot stop
    it), so a hung library costs a pool thread, never a session that waits forever."""

    def __init__(self, executor: Executor | None = None) -> None:
        self.executor = executor  # None: the loop's default executor

    async def __call__(self, timeout_s: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        return await within(timeout_s, work, getattr(fn, "__qualname__", repr(fn)))


async def within(timeout_s: float, awaitable: asyncio.Future[T], what: str = "work") -> T:
    """`await awaitable`, or DeadlineExceeded after `timeout_s`. Unlike `asyncio.wait_for` (3.12) it
    needs no current Task, so it also works in the eager first step of `start_eagerly`."""
    loop = asyncio.get_running_loop()
    if awaitable.done():
        return awaitable.result()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    awaitable.add_done_callback(wake)
    timer = loop.call_later(timeout_s, wake)
    try:
        await waiter
    except BaseException:  # we were cancelled (a caller's own deadline): the work is not wanted either
        awaitable.cancel()
        raise
    finally:
        timer.cancel()
        awaitable.remove_done_callback(wake)
    if not awaitable.done():
        awaitable.cancel()
        raise DeadlineExceeded(f"{what} did not finish within {timeout_s:g} s")
    return awaitable.result()


async def settled(future: concurrent.futures.Future[T], timeout_s: float, what: str = "work") -> T:
    """The result of a Future another thread resolves (a store commit), or DeadlineExceeded after
    `timeout_s`: `within(timeout_s, asyncio.wrap_future(future))` with one loop future instead of three
    (this is on every message's path)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(lambda _: loop.call_soon_threadsafe(wake))
    timer = loop.call_later(timeout_s, wake)
    try:
        await waiter
    finally:
        timer.cancel()
    if not future.done():
        raise DeadlineExceeded(f"{what} did not finish within {timeout_s:g} s")
    return future.result()


@dataclass(frozen=True, slots=True)
class Finished(Generic[T]):
    """The coroutine finished in its first step: `value`, or the exception it raised."""

    value: T | None
    error: BaseException | None = None

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def start_eagerly(coro: Coroutine[Any, Any, T]) -> Finished[T] | asyncio.Task[T]:
    """Run `coro` now up to its first suspension. Finished when it completed there (no Task made),
    otherwise a Task that carries it on from where it stopped."""
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return Finished(stop.value)
    except Exception as exc:
        return Finished(None, exc)
    return asyncio.get_running_loop().create_task(_carry_on(_Resume(coro, pending)))


async def _carry_on(resume: _Resume[T]) -> T:
    return await resume


class _Resume(Generic[T]):
    """What `yield from coro` would be, for a coroutine that has already taken its first step: the
    future it yielded goes to the Task, and every resumption (or cancellation) back to the coroutine."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, T], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, T]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except BaseException as exc:
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
