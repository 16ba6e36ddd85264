"""The `[auth]` section (issue 8): the failed-login throttle's limits and the SCRAM key rounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.config import AuthConfig, ConfigError, load

BASE = 'domains = ["example.test"]\n'


def test_auth_defaults_and_values(tmp_path: Path) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE)
    assert load(path, env={}).auth == AuthConfig(900.0, 10, 30, 100, 100_000)
    path.write_text(BASE + '[auth]\nfailure_window = "1h"\nfailures_per_address_and_account = 5\n'
                    "failures_per_address = 20\nfailures_per_account = 50\nscram_iterations = 4096\n")  # fmt: skip
    assert load(path, env={}).auth == AuthConfig(3600.0, 5, 20, 50, 4096)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[auth]\nscram_iterations = 1000\n", "[auth] scram_iterations: must be at least 4096"),
        ("[auth]\nfailures_per_address = 0\n", "[auth] failures_per_address: must be at least 1"),
        ('[auth]\nfailure_window = "never"\n', "[auth] failure_window: expected a duration"),
        ("[auth]\nlockout = 5\n", "[auth] lockout: unknown key"),
    ],
)
def test_auth_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + text)
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load(path, env={})
