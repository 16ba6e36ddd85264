"""Domain names in canonical form; a hostile name is refused before any IDNA work (issue 8)."""

from __future__ import annotations

import time

import pytest

from kartero.dns.names import DomainError, canonical_domain


def test_canonical_forms() -> None:
    assert canonical_domain("Example.ORG.") == "example.org"
    assert canonical_domain("bücher.example") == "xn--bcher-kva.example"
    with pytest.raises(DomainError):
        canonical_domain("")


def test_issue_8_long_names_are_refused_before_idna() -> None:
    assert canonical_domain("ä" + ".a" * 100) == "xn--4ca" + ".a" * 100
    started = time.process_time()
    for name in ("ä" * 1_000_000, "a" * 256, ("ä" * 60 + ".") * 5):
        with pytest.raises(DomainError, match="longer than 255"):
            canonical_domain(name)
    assert time.process_time() - started < 0.5
