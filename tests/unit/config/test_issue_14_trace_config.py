"""Issue 14: `[trace] keep`, how long the message trace keeps each message's path (0: none kept)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.config import ConfigError, load

BASE = 'domains = ["example.test"]\n'


@pytest.mark.parametrize(("value", "expected"), [("", 30 * 86400.0), ("keep = 0", 0.0), ('keep = "0"', 0.0),
                                                 ('keep = "7d"', 7 * 86400.0), ('keep = "12h"', 43200.0)])
def test_issue_14_trace_keep(tmp_path: Path, value: str, expected: float) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + "[trace]\n" + value + "\n")
    trace = load(path, env={}).trace
    assert trace.keep_s == expected and trace.is_enabled is (expected > 0)


@pytest.mark.parametrize(("text", "problem"), [('keep = "forever"', r"\[trace\] keep: expected a duration"),
                                               ('keep = "-1d"', r"\[trace\] keep: expected a duration"),
                                               ('store = "yes"', r"\[trace\] store: unknown key")])
def test_issue_14_trace_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + "[trace]\n" + text + "\n")
    with pytest.raises(ConfigError, match=problem):
        load(path, env={})
