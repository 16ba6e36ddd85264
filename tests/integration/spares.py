"""Servers started ahead: while a test runs, the servers the next two will ask for boot beside it.

Starting `kartero serve` takes ~0.8 s of CPU and 1.2-2 s of wall time, most of a short integration
test's time, and most of those tests get their server from a fixture that makes the same one each time
(`mx`, a module's `server`). With `fresh_server` such a fixture still hands each test a server of its
own that no other test used (own folder, ports, store or database, made by the same code); it was
only started while the tests before it ran, so its start overlaps them instead of adding to the run.

A spare is made only for a test among the next LOOKAHEAD of the run that asks for the same fixture,
with its backend; one no test took (that test failed before asking for it) is stopped at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer
from tests.pgserver import PrivatePostgres

# Makes a server, accounts added, not started: (folder, store URL) -> server. The URL is "" for the
# embedded store, else that of a database of the private PostgreSQL server.
Build = Callable[[Path, str], KarteroServer]
Key = tuple[str, str, str]  # the module defining the fixture, the fixture's name, the backend

LOOKAHEAD = 2  # tests ahead whose servers start beside the one running (two on the two cores CI has)
_starter = ThreadPoolExecutor(LOOKAHEAD, thread_name_prefix="spare-server")
_spares: dict[Key, list[Future[KarteroServer]]] = {}  # per key, in the order the tests will take them
_lock = threading.Lock()
_INDEX = pytest.StashKey[dict[int, int]]()


def fresh_server(request: pytest.FixtureRequest, build: Build) -> KarteroServer:
    """The started server of `build` for the test asking for `request.fixturename`: the spare started
    for it while earlier tests ran, else one made now; then the next tests' spares are begun."""
    key = (build.__module__, request.fixturename, _backend(request.node))
    with _lock:
        waiting = _spares.get(key)
        spare = waiting.pop(0) if waiting else None
    if spare is not None:
        server = spare.result()  # a start that failed fails this test, as it would have without spares
        if server.store_url:
            _postgres(request).adopt(server.store_url)  # dropped when this test ends
    else:
        tmp_path: Path = request.getfixturevalue("tmp_path")
        server = build(tmp_path / "mx", _database(request, key[2], keep=False))
        server.start()
    _prepare_next(request, build)
    return server


def stop_unused() -> None:
    """Stop the spares no test took (the integration conftest calls this at the end of the run)."""
    with _lock:
        left = [spare for spares in _spares.values() for spare in spares]
        _spares.clear()
    for spare in left:
        try:
            server = spare.result()
        except Exception:
            continue
        if server.process and server.process.poll() is None:
            server.stop()


def _prepare_next(request: pytest.FixtureRequest, build: Build) -> None:
    """Begin the spares the next LOOKAHEAD tests of the run will take from this fixture."""
    name = request.fixturename
    wanted: dict[Key, int] = {}
    for following in _next_items(request, LOOKAHEAD):
        if not isinstance(following, pytest.Function) or name not in following.fixturenames:
            continue
        if build.__module__ != following.module.__name__ and (
            not build.__module__.endswith(".conftest") or hasattr(following.module, name)
        ):
            continue  # the next test's fixture of that name is another one (its module's own)
        key = (build.__module__, name, _backend(following))
        wanted[key] = wanted.get(key, 0) + 1
    for key, count in wanted.items():
        with _lock:
            missing = count - len(_spares.get(key, []))
        for _ in range(missing):
            url = _database(request, key[2], keep=True)  # here: PrivatePostgres is not for threads
            tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
            spare = _starter.submit(_start, build, tmp_path_factory.mktemp("spare") / "mx", url)
            with _lock:
                _spares.setdefault(key, []).append(spare)


def _start(build: Build, root: Path, url: str) -> KarteroServer:
    server = build(root, url)
    server.start()
    return server


def _next_items(request: pytest.FixtureRequest, count: int) -> list[pytest.Item]:
    items = request.session.items
    index = request.session.stash.setdefault(_INDEX, {})
    if not index:
        index.update({id(item): i for i, item in enumerate(items)})
    i = index.get(id(request.node))
    return [] if i is None else items[i + 1 : i + 1 + count]


def _backend(item: pytest.Item) -> str:
    """The test's store: "postgresql" or "sqlite" (the integration conftest's `store_backend`)."""
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("store_backend", "sqlite")) if callspec is not None else "sqlite"


def _database(request: pytest.FixtureRequest, backend: str, *, keep: bool) -> str:
    return _postgres(request).migrated_database(keep=keep) if backend == "postgresql" else ""


def _postgres(request: pytest.FixtureRequest) -> PrivatePostgres:
    postgres: PrivatePostgres = request.getfixturevalue("postgres")
    return postgres
