"""docs/imap.md follows the capability list: every capability the IMAP core advertises, in any state,
has a row in kartero/imap/rfcs.py, every row's capability is advertised, and the document is current."""

from __future__ import annotations

from pathlib import Path

from kartero.imap import rfcs
from kartero.imap.connection import ImapConnection, ImapSettings
from kartero.imap.state import ImapState

DOC = Path(__file__).resolve().parents[3] / "docs" / "imap.md"


def advertised() -> set[str]:
    words: set[str] = set()
    for is_tls in (False, True):
        conn = ImapConnection(ImapSettings("imap.example.test", is_tls_available=True), is_tls=is_tls)
        words |= set(conn.capabilities().split())
        conn.state = ImapState.AUTHENTICATED
        words |= set(conn.capabilities().split())
    return {w.split("=")[0] if w.startswith("APPENDLIMIT=") else w for w in words}


def test_every_capability_has_a_row_and_every_row_is_advertised() -> None:
    rows = {row.capability for row in rfcs.TABLE if row.capability}
    assert advertised() - rows == set(), "add a row to kartero/imap/rfcs.py"
    assert rows - advertised() == set(), "a row names a capability the server does not advertise"


def test_docs_imap_md_is_generated_from_the_table() -> None:
    assert DOC.read_text() == rfcs.render(), "run: python -m kartero.imap.rfcs > docs/imap.md"
