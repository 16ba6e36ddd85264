from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD, KarteroServer
from tests.pgserver import PrivatePostgres

# The protocol suites run against both stores (issue 11): the embedded SQLite store and PostgreSQL.
BOTH_BACKENDS = frozenset({
    "test_receive.py", "test_submission.py", "test_imap.py", "test_imap_extensions.py",
    "test_imap_message_extensions.py", "test_imap_session_extensions.py", "test_imap_stress.py", "test_pop3.py",
    "test_outbound.py", "test_hostile_mail.py", "test_limits.py", "test_login_throttle.py",
})  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_backend" in metafunc.fixturenames and metafunc.definition.path.name in BOTH_BACKENDS:
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


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[KarteroServer]:
    """A running Kartero for example.test with bob, carol, an alias and a catch-all on other.test."""
    server = KarteroServer(tmp_path / "mx", domains=("example.test", "other.test"))
    with server.directory() as directory:  # one store opening for all six changes
        directory.add_user("bob@example.test", PASSWORD)
        directory.add_user("carol@example.test", PASSWORD)
        directory.add_alias("team@example.test", "bob@example.test")
        directory.add_alias("team@example.test", "carol@example.test")
        directory.add_user("dave@other.test", PASSWORD)
        directory.add_alias("@other.test", "dave@other.test")
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        assert server.stop() == 0, server.log
