"""Config: TOML to typed settings, and one exact line for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartero.config import ConfigError, ListenAddress, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kartero.toml"
    path.write_text(text)
    return path


BASE = 'hostname = "mx.example.test"\ndomains = ["Example.TEST", "b\u00fccher.example"]\n'


def test_full_config_is_typed_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "c.pem").write_text("x")
    (tmp_path / "tls" / "k.pem").write_text("x")
    path = write(
        tmp_path,
        BASE
        + 'data_dir = "store"\n'
        + '[listen]\nsmtp = ["127.0.0.1:2525", "[::1]:2525"]\n'
        + '[tls]\ncert = "tls/c.pem"\nkey = "tls/k.pem"\n'
        + '[limits]\nmessage_size = "10MiB"\nrecipients_per_message = 5\ncommand_timeout = "2m"\n'
        + "data_timeout = 90\n",
    )
    config = load(path, env={})
    assert config.hostname == "mx.example.test"
    assert config.domains == ("example.test", "xn--bcher-kva.example")
    assert config.data_dir == (tmp_path / "store").resolve()
    assert config.listen["smtp"] == (ListenAddress("127.0.0.1", 2525), ListenAddress("::1", 2525))
    assert str(config.listen["smtp"][1]) == "[::1]:2525"
    assert config.tls is not None and config.tls.cert == (tmp_path / "tls" / "c.pem").resolve()
    assert config.limits.message_size == 10 * 1024 * 1024
    assert config.limits.recipients_per_message == 5
    assert config.limits.command_timeout_s == 120.0
    assert config.limits.data_timeout_s == 90.0
    assert config.source == path.resolve()


def test_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, 'domains = ["example.test"]\n'), env={})
    assert config.hostname == "mail.example.test"
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.listen == {}
    assert config.tls is None
    assert config.limits.message_size == 50_000_000


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (BASE + "smtp_port = 25\n", "smtp_port: unknown key"),
        (BASE + '[listen]\nsmpt = ["127.0.0.1:25"]\n', "[listen] smpt: unknown key"),
        (BASE + '[listen]\nsmtp = ["127.0.0.1:70000"]\n', "[listen] smtp: port 70000 out of range 1-65535"),
        (
            BASE + '[listen]\nsmtp = ["127.0.0.1"]\n',
            '[listen] smtp: expected "host:port" or "[ipv6]:port", got \'127.0.0.1\'',
        ),
        (BASE + '[listen]\nsmtp = ["mail.example:25"]\n', "[listen] smtp: 'mail.example' is not an IP address"),
        (BASE + "[listen]\nsmtp = [25]\n", '[listen] smtp: expected addresses like "127.0.0.1:25", got 25'),
        (BASE + '[listen]\nsubmissions = ["127.0.0.1:465"]\n', "[listen] submissions: needs a [tls] certificate"),
        (BASE + "[delivery]\nport = 70000\n", "[delivery] port: port 70000 out of range 1-65535"),
        (BASE + '[delivery]\nqueue_lifetime = "forever"\n', "[delivery] queue_lifetime: expected a duration"),
        (BASE + '[delivery]\nrelayhost = "smart host:25"\n', '[delivery] relayhost: expected "host:port"'),
        (BASE + '[dns]\nnameservers = ["ns.example:53"]\n', "[dns] nameservers: 'ns.example' is not an IP address"),
        (BASE + '[dns]\nnameservers = "127.0.0.1"\n', "[dns] nameservers: must be a list"),
        (
            BASE + '[routes]\n"partner.example" = "10.0.0.5:99999"\n',
            "[routes] partner.example: port 99999 out of range",
        ),
        (
            BASE + '[listen]\nimaps = ["127.0.0.1:993"]\n',
            "[listen] imaps: needs a [tls] certificate (implicit TLS)",
        ),
        (BASE + '[tls]\ncert = "nope.pem"\nkey = "nope.pem"\n', "[tls] cert: file not found: "),
        (BASE + '[tls]\ncert = "c.pem"\n', "[tls] key: missing"),
        (
            BASE + '[limits]\nmessage_size = "lots"\n',
            "[limits] message_size: expected a size like \"50MB\", got 'lots'",
        ),
        (BASE + "[limits]\nrecipients_per_message = 0\n", "[limits] recipients_per_message: must be at least 1"),
        (BASE + '[limits]\nrecipients_per_message = "5"\n', "[limits] recipients_per_message: must be an integer"),
        (BASE + '[limits]\ncommand_timeout = "soon"\n', "[limits] command_timeout: expected a duration like"),
        (BASE + "[limits]\nconnections = true\n", "[limits] connections: must be an integer"),
        ('hostname = "x.example"\n', "domains: must be a non-empty list of domain names"),
        ("domains = []\n", "domains: must be a non-empty list of domain names"),
        ('domains = ["bad_domain!"]\n', "domains: invalid domain"),
        (BASE + "hostname = 5\n", "invalid TOML"),
        (BASE + "log_level = 'loud'\n", "log_level: must be one of debug, info, warning, error"),
        (BASE + "listen = 5\n", "[listen]: must be a table"),
    ],
)
def test_each_mistake_names_file_key_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(path, env={})
    message = str(exc.value)
    assert message.startswith(f"{path}: "), message
    assert problem in message, message
    assert "\n" not in message


def test_delivery_dns_and_routes(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            BASE + '[dns]\nnameservers = ["127.0.0.53:5353", "[::1]"]\ntimeout = "2s"\n'
            '[delivery]\nport = 2525\nqueue_lifetime = "1h"\nretry_first = "10s"\nrelayhost = "[10.0.0.1]:587"\n'
            '[routes]\n"Partner.Example" = "10.0.0.5"\n',
        ),
        env={},
    )
    assert [str(n) for n in config.dns.nameservers] == ["127.0.0.53:5353", "[::1]:53"]
    assert config.dns.timeout_s == 2.0
    assert config.delivery.port == 2525 and config.delivery.queue_lifetime_s == 3600.0
    assert config.delivery.retry_first_s == 10.0 and str(config.delivery.relayhost) == "10.0.0.1:587"
    assert {k: str(v) for k, v in config.routes.items()} == {"partner.example": "10.0.0.5:25"}


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere.toml: file not found$"):
        load(tmp_path / "nothere.toml", env={})


def test_env_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'domains = ["env.example"]\n')
    assert load(None, env={"KARTERO_CONFIG": str(path)}).domains == ("env.example",)


def test_embedded_default_when_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load(None, env={})
    assert config.source is None
    assert config.domains == ("localhost",)
    assert config.data_dir == (tmp_path / "kartero-data").resolve()
    assert config.listen["smtp"] == (ListenAddress("127.0.0.1", 2525),)
    assert config.listen["imap"] == (ListenAddress("127.0.0.1", 1430),)
    assert config.listen["imaps"] == (ListenAddress("127.0.0.1", 9930),)
    assert config.listen["pop3"] == (ListenAddress("127.0.0.1", 1100),)
    assert config.listen["pop3s"] == (ListenAddress("127.0.0.1", 9950),)
    assert config.listen["submission"] == (ListenAddress("127.0.0.1", 5870),)
    assert config.listen["submissions"] == (ListenAddress("127.0.0.1", 4650),)
    assert config.make_certificate


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "kartero.toml"
    path.write_bytes(b'domains = ["\xff"]\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load(path, env={})
