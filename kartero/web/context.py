"""What every HTTP handler shares: the operations, the credentials check, and the server's state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from kartero.auth.accounts import Authenticator
from kartero.auth.throttle import AuthThrottle
from kartero.concurrency import Blocking
from kartero.config import Config
from kartero.store.interface import Store
from kartero.web.chart import Bucket
from kartero.web.ops import Operations

# A store query or a password check; a DNS check waits for its lookups (each under [dns] timeout).
T = TypeVar("T")

QUICK_S = 30.0
SLOW_S = 120.0


@dataclass(slots=True, kw_only=True)
class WebContext:
    config: Config
    store: Store
    ops: Operations
    authenticator: Authenticator
    blocking: Blocking
    throttle: AuthThrottle | None = None
    wake_queue: Callable[[], None] = lambda: None  # after "retry now": the runner looks at the queue at once
    connections: Callable[[], dict[str, int]] = dict  # sessions open now, per service
    metrics: Callable[[], tuple[bytes, str]] | None = None  # the Prometheus exposition (body, content type)
    certificate_expiry: Callable[[], int | None] = lambda: None  # unix time the TLS certificate expires
    # The dashboard chart's hourly counts over the last 24 h, oldest first (from the message trace);
    # None: the dashboard says there is no activity data yet. Called in the worker pool.
    activity: Callable[[], list[Bucket]] | None = None
    # ACME http-01 (RFC 8555 §8.3): the key authorization for a token, None for an unknown one.
    # Blocking (a small file read): called in the worker pool.
    acme_http01: Callable[[str], str | None] = lambda token: None
    started_at: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def body_deadline_s(self) -> float:
        """How long after its header a request's body (a form, JSON) may take to arrive: `[limits]
        command_deadline`, as an SMTP or IMAP command. A client that sends a Content-Length and then
        trickles (or nothing) must not hold its connection and handler for ever."""
        return self.config.limits.command_deadline_s

    async def run(self, fn: Callable[..., T], *args: Any, slow: bool = False) -> T:
        """`fn(*args)` in the worker pool, under a deadline (a hung store fails the request, not the loop)."""
        return await self.blocking(SLOW_S if slow else QUICK_S, fn, *args)


CONTEXT = web.AppKey("kartero", WebContext)
