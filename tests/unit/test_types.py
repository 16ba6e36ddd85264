"""`mypy --strict` (configured in pyproject.toml) on the whole package: type hints are checked, not decor."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_is_clean() -> None:
    mypy = shutil.which("mypy")
    if mypy is None:
        pytest.fail("mypy is not installed (it is in the test extras: pip install -e '.[test]')")
    result = subprocess.run([mypy, "kartero"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
