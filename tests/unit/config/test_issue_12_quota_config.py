"""Issue 12: `[limits] default_quota`, the storage limit of accounts without their own (0: none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.config import ConfigError, load, parse_size

BASE = 'domains = ["example.test"]\n'


@pytest.mark.parametrize(("value", "expected"), [("", 0), ("default_quota = 0", 0), ('default_quota = "0"', 0),
                                                 ('default_quota = "500M"', 500_000_000),
                                                 ('default_quota = "2GiB"', 2 << 30), ("default_quota = 1024", 1024)])
def test_issue_12_default_quota(tmp_path: Path, value: str, expected: int) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + "[limits]\n" + value + "\n")
    assert load(path, env={}).limits.default_quota == expected


def test_issue_12_default_quota_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + '[limits]\ndefault_quota = "lots"\n')
    with pytest.raises(ConfigError, match=r"\[limits\] default_quota: expected a size"):
        load(path, env={})


def test_issue_12_sizes_as_the_cli_reads_them() -> None:
    assert [parse_size(t) for t in ("500M", "2G", "0", " 64KiB ", "1.5G", "-1")] == [
        500_000_000, 2_000_000_000, 0, 65536, None, None]
