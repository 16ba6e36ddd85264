"""How the admin pages write sizes, quotas and durations (issue 14)."""

from __future__ import annotations

from kartero.config import parse_size
from kartero.web.ui import _duration, _offset, _quota, _size


def test_quotas_are_written_as_an_admin_types_them_and_read_back() -> None:
    for size, text in ((2 * 10**9, "2G"), (500 * 10**6, "500M"), (3 * 2**30, "3Gi"), (1536 * 2**20, "1536Mi"),
                       (1000, "1k"), (1023, "1023"), (0, "0")):  # fmt: skip
        assert _quota(size) == text
        assert parse_size(text) == size


def test_sizes_and_durations_for_people() -> None:
    assert [_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**30, 3 * 2**40)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 GiB", "3.0 TiB"]  # fmt: skip
    assert [_duration(s) for s in (59, 240, 3 * 3600 + 60 * 12, 3 * 86400 + 5 * 3600 + 59)] == [
        "0 min", "4 min", "3 h 12 min", "3 d 5 h"]  # fmt: skip


class _Query:
    def __init__(self, offset: str) -> None:
        self.query = {"offset": offset}


def test_issue_14_a_page_offset_is_a_small_ascii_number_or_zero() -> None:
    got = [_offset(_Query(text)) for text in ("200", "-1", "²", "١٢", "9" * 12, "", "1e3")]  # type: ignore[arg-type]
    assert got == [200, 0, 0, 0, 0, 0, 0]
