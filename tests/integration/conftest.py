from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD, KarteroServer
from tests.integration.spares import fresh_server, stop_unused
from tests.pgserver import PrivatePostgres

# The protocol suites run against both stores (issue 11): the embedded SQLite store and PostgreSQL.
BOTH_BACKENDS = frozenset({
    "test_receive.py", "test_submission.py", "test_imap.py", "test_imap_extensions.py",
    "test_imap_message_extensions.py", "test_imap_session_extensions.py", "test_imap_stress.py", "test_pop3.py",
    "test_outbound.py", "test_hostile_mail.py", "test_limits.py", "test_login_throttle.py",
})  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "store_unused(why): in a both-backends module, a test whose checks never reach the store (the "
        "server only opens it; why says so): run on the embedded store only, its PostgreSQL run would repeat it")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (
        "store_backend" in metafunc.fixturenames
        and metafunc.definition.path.name in BOTH_BACKENDS
        and metafunc.definition.get_closest_marker("store_unused") is None
    ):
        metafunc.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(autouse=True)
def store_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which store the servers a test starts use: "postgresql" gives each a database of its own on the
    private PostgreSQL server (made and migrated as `kartero db init` does)."""
    backend: str = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        postgres: PrivatePostgres = request.getfixturevalue("postgres")

        KarteroServer.new_database = postgres.migrated_database
    try:
        yield backend
    finally:
        KarteroServer.new_database = None


def _mx(root: Path, store_url: str) -> KarteroServer:
    server = KarteroServer(root, domains=("example.test", "other.test"), store_url=store_url)
    with server.directory() as directory:  # one store opening for all six changes
        directory.add_user("bob@example.test", PASSWORD)
        directory.add_user("carol@example.test", PASSWORD)
        directory.add_alias("team@example.test", "bob@example.test")
        directory.add_alias("team@example.test", "carol@example.test")
        directory.add_user("dave@other.test", PASSWORD)
        directory.add_alias("@other.test", "dave@other.test")
    return server


@pytest.fixture
def mx(request: pytest.FixtureRequest) -> Iterator[KarteroServer]:
    """A running Kartero for example.test with bob, carol, an alias and a catch-all on other.test (one
    of its own for each test, started while the test before ran: tests/integration/spares.py)."""
    server = fresh_server(request, _mx)
    yield server
    if server.process and server.process.poll() is None:
        assert server.stop() == 0, server.log


@pytest.fixture(scope="session", autouse=True)
def _unused_spares() -> Iterator[None]:
    yield
    stop_unused()
