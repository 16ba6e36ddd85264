"""Issue 15: the `kartero.service` unit `kartero init` writes (tests/integration/test_systemd.py runs
`systemd-analyze verify` on it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kartero.systemd import render_unit, server_command

COMMAND = ["/opt/kartero/bin/python", "-m", "kartero", "--config", "/etc/kartero/kartero.toml", "serve"]


def _settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_issue_15_unit_runs_the_server_unprivileged_and_hardened() -> None:
    settings = _settings(render_unit(COMMAND, Path("/var/lib/kartero/data")))
    assert settings["ExecStart"] == "/opt/kartero/bin/python -m kartero --config /etc/kartero/kartero.toml serve"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["ReadWritePaths"] == "/var/lib/kartero/data"
    for key, value in {
        "Type": "exec", "User": "kartero", "Group": "kartero", "Restart": "on-failure",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LimitNOFILE": "65536", "SystemCallFilter": "@system-service", "WantedBy": "multi-user.target",
    }.items():  # fmt: skip
        assert settings[key] == value, key


@pytest.mark.parametrize("home", ["/home/mail/kartero/data", "/root/kartero/data"])
def test_issue_15_a_data_folder_under_home_is_read_only_not_hidden(home: str) -> None:
    """ProtectHome=yes would hide /home and /root from the server, its data folder with them."""
    text = render_unit(COMMAND, Path(home))
    assert _settings(text)["ProtectHome"] == "read-only"
    assert _settings(text)["ReadWritePaths"] == home
    interpreter_at_home = ["/home/mail/venv/bin/python", *COMMAND[1:]]
    assert _settings(render_unit(interpreter_at_home, Path("/srv/data")))["ProtectHome"] == "read-only"


def test_issue_15_unit_quotes_and_escapes_paths() -> None:
    """systemd reads `%` as a specifier everywhere, `$` as a variable on command lines only (ReadWritePaths=
    took `/srv/$$data` literally: a folder that does not exist, so the service failed to start), splits
    words at spaces (systemd.unit(5))."""
    command = ["/opt/kartero/bin/python", "-m", "kartero", "--config", "/etc/mail 100%/$x/kartero.toml", "serve"]
    settings = _settings(render_unit(command, Path("/srv/$data 5%")))
    assert settings["ExecStart"] == ('/opt/kartero/bin/python -m kartero --config "/etc/mail 100%%/$$x/kartero.toml"'
                                     " serve")  # fmt: skip
    assert settings["ReadWritePaths"] == '"/srv/$data 5%%"'
    with pytest.raises(ValueError, match="a path systemd cannot take"):
        render_unit(COMMAND, Path("/srv/da\nta"))


def test_issue_15_unit_starts_this_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(tmp_path / "etc" / "kartero.toml")
    assert server_command(Path("etc/kartero.toml")) == [
        str(Path(sys.executable).absolute()), "-m", "kartero", "--config", config, "serve"
    ]  # fmt: skip
