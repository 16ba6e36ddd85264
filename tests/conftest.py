from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("tests.unit.smtp.transcript", "tests.unit.imap.harness", "tests.integration.harness")

from tests.pgserver import PrivatePostgres  # noqa: E402 - after the rewrite registration


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    """One private PostgreSQL server for the whole test run (initdb into a temporary folder, its own
    loopback port); each test that needs one makes a database of its own with `new_database()`."""
    server = PrivatePostgres()
    server.start()
    yield server
    server.close()
