"""Fixtures shared by the unit tests of the IMAP handlers and the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kartero.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh embedded store with one account, bob@example.test (account id 1), and nothing delivered."""
    s = SQLiteStore(tmp_path / "data")
    s.accounts.add_account("bob@example.test", "unused")
    s.start()
    yield s
    s.close()
