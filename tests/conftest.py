from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("tests.unit.smtp.transcript", "tests.unit.imap.harness", "tests.integration.harness")

from tests.pgserver import PrivatePostgres  # noqa: E402 - after the rewrite registration
from tests.rspamd import PrivateRspamd  # noqa: E402

_pycache_prefix: list[str] = []  # the folder pytest_configure made, removed at the end
_setting_up: list[str] = []  # the scopes of the fixtures being set up now, innermost last
_postgres: list[PrivatePostgres] = []  # the session's server, once a test has asked for it


def pytest_configure(config: pytest.Config) -> None:
    """Let the Python processes the tests start (every `kartero serve`, every CLI call) share compiled
    bytecode in a folder of the run's own. With PYTHONDONTWRITEBYTECODE set (as on this project's
    machines) each of the hundreds of `python -m kartero` processes would otherwise compile the whole
    package from source again (~0.3 s of CPU each); the prefix keeps the source tree free of
    __pycache__ folders as that setting intends. A prefix the caller chose is kept."""
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    prefix = tempfile.mkdtemp(prefix="kartero-pycache-")
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    _pycache_prefix.append(prefix)


def pytest_unconfigure(config: pytest.Config) -> None:
    for prefix in _pycache_prefix:
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object]) -> Iterator[object]:
    _setting_up.append(fixturedef.scope)
    try:
        return (yield)
    finally:
        _setting_up.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Once a test and its function fixtures are done, the databases it was given are dropped."""
    try:
        return (yield)
    finally:
        for server in _postgres:
            server.drop_finished()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    """One private PostgreSQL server for the whole test run (initdb into a temporary folder, its own
    loopback port); each test that needs one makes a database of its own with `new_database()`,
    dropped when the test ends unless a fixture wider than a test asked for it."""
    server = PrivatePostgres()
    server.is_shared = lambda: any(scope != "function" for scope in _setting_up)
    server.start()
    _postgres.append(server)
    yield server
    _postgres.remove(server)
    server.close()


@pytest.fixture(scope="session")
def rspamd() -> Iterator[PrivateRspamd]:
    """One private rspamd (proxy worker in milter mode, controller) with its own redis for the whole
    test run (tests/rspamd.py: own config folder, loopback ports, no DNS). Tests that count learned
    messages compare counts before and after, and learn messages of their own words."""
    server = PrivateRspamd()
    try:
        server.start()
        yield server
    finally:
        server.close()
