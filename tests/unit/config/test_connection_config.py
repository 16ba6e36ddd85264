"""Config of issue 8's connection limits, deadlines and PROXY protocol trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.config import ConfigError, Limits, load

BASE = 'domains = ["example.test"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kartero.toml"
    path.write_text(BASE + text)
    return path


def test_connection_limits_and_deadlines(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[listen]\nsmtp = ["127.0.0.1:2525"]\nproxy_from = ["10.0.0.0/8", "2001:db8::/32"]\n'
                        "[limits]\nconnections = 100\nsmtp_connections = 10\nsubmission_connections = 11\n"
                        "imap_connections = 12\npop3_connections = 13\nunauthenticated_connections_per_ip = 3\n"
                        'connections_per_user_and_ip = 0\ncommand_deadline = "10s"\nlogin_deadline = "2m"\n'),
                  env={})  # fmt: skip
    lim = config.limits
    assert (lim.connections, lim.smtp_connections, lim.submission_connections, lim.imap_connections,
            lim.pop3_connections) == (100, 10, 11, 12, 13)  # fmt: skip
    assert (lim.unauthenticated_connections_per_ip, lim.connections_per_user_and_ip) == (3, 0)
    assert (lim.command_deadline_s, lim.login_deadline_s) == (10.0, 120.0)
    assert config.proxy_from == ("10.0.0.0/8", "2001:db8::/32")
    assert list(config.listen) == ["smtp"]  # proxy_from is no listener


def test_defaults() -> None:
    lim = Limits()
    assert (lim.connections, lim.smtp_connections, lim.submission_connections, lim.imap_connections,
            lim.pop3_connections) == (4000, 1000, 500, 2000, 500)  # fmt: skip
    assert (lim.connections_per_ip, lim.unauthenticated_connections_per_ip, lim.connections_per_user_and_ip) == (
        50, 10, 10
    )  # fmt: skip
    assert (lim.command_deadline_s, lim.login_deadline_s) == (30.0, 60.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[limits]\nimap_connections = 0\n", "[limits] imap_connections: must be at least 1"),
        ("[limits]\nunauthenticated_connections_per_ip = -1\n",
         "[limits] unauthenticated_connections_per_ip: must be at least 0"),
        ('[limits]\nlogin_deadline = "soon"\n',
         "[limits] login_deadline: expected a duration like \"5m\" or \"30s\", got 'soon'"),
        ('[listen]\nproxy_from = ["10.0.0.300/8"]\n', "[listen] proxy_from: not a network: '10.0.0.300/8'"),
        ('[listen]\nproxy_from = "10.0.0.0/8"\n',
         '[listen] proxy_from: expected a list of networks like ["192.0.2.0/24", "::1"]'),
    ],
)  # fmt: skip
def test_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load(path, env={})
    assert str(error.value) == f"{path}: {problem}"
