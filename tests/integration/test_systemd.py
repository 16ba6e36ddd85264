"""Issue 15: `kartero init` writes `kartero.service`, and systemd accepts it (`systemd-analyze verify`,
which also checks that ExecStart's program exists: the unit names this test run's interpreter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import KARTERO

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_issue_15_init_writes_a_unit_systemd_accepts(tmp_path: Path) -> None:
    result = subprocess.run([*KARTERO, "init", str(tmp_path / "etc"), "--domain", "example.test"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "etc" / "kartero.service"
    assert f"wrote {unit} (systemd: docs/systemd.md)\n" in result.stdout
    text = unit.read_text()
    assert f"\nExecStart={sys.executable} -m kartero --config {tmp_path / 'etc' / 'kartero.toml'} serve\n" in text
    assert f"\nReadWritePaths={tmp_path / 'etc' / 'data'}\n" in text
    assert unit.stat().st_mode & 0o777 == 0o644
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    verified = _verify(unit)
    assert verified.returncode == 0, verified.stderr
    assert "kartero.service" not in verified.stdout + verified.stderr  # no warning about any line of it
    # The check sees mistakes: a misspelt key is reported, a missing program fails.
    unit.write_text(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "Unknown key 'NoNewPrivilege'" in _verify(unit).stderr
    unit.write_text(text.replace(f"ExecStart={sys.executable}", f"ExecStart={tmp_path}/no-python"))
    assert _verify(unit).returncode != 0
