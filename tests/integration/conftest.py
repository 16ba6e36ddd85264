from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import KarteroServer


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[KarteroServer]:
    """A running Kartero for example.test with bob, carol, an alias and a catch-all on other.test."""
    server = KarteroServer(tmp_path / "mx", domains=("example.test", "other.test"))
    server.add_user("bob@example.test")
    server.add_user("carol@example.test")
    server.add_alias("team@example.test", "bob@example.test")
    server.add_alias("team@example.test", "carol@example.test")
    server.add_user("dave@other.test")
    server.add_alias("@other.test", "dave@other.test")
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        assert server.stop() == 0, server.log
