"""`kartero dns DOMAIN` against a loopback DNS server: a complete zone is all ok; each gap is reported
with the record that fixes it."""

from __future__ import annotations

import re
from pathlib import Path

from kartero.autoconfig.mtasts import policy_id, policy_text
from kartero.config import MtaStsConfig
from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, run_cli_in_process

# The id of the policy the server serves with the default [mta_sts] (tests/unit/autoconfig pin its text)
POLICY_ID = policy_id(policy_text("mail.example.test", MtaStsConfig()))
BASE = f"""
example.test. 60 IN MX 10 mail.example.test.
mail.example.test. 60 IN A 127.0.0.2
example.test. 60 IN TXT "v=spf1 mx -all"
_mta-sts.example.test. 60 IN TXT "v=STSv1; id={POLICY_ID}"
_smtp._tls.example.test. 60 IN TXT "v=TLSRPTv1; rua=mailto:tls@example.test"
mta-sts.example.test. 60 IN A 127.0.0.2
autoconfig.example.test. 60 IN A 127.0.0.2
autodiscover.example.test. 60 IN A 127.0.0.2
2.0.0.127.in-addr.arpa. 60 IN PTR mail.example.test.
"""
DMARC = '_dmarc.example.test. 60 IN TXT "v=DMARC1; p=reject"\n'
SERVICES = ("imaps", "imap", "pop3s", "pop3", "submissions", "submission")


def srv_zone(server: KarteroServer) -> str:
    """The RFC 6186 records of the server's client listeners (all six are on, on their bound ports)."""
    return "".join(f"_{name}._tcp.example.test. 60 IN SRV 0 1 {getattr(server, name + '_port')} mail.example.test.\n"
                   for name in SERVICES)  # fmt: skip


def rows(stdout: str) -> list[tuple[str, str, str]]:
    """(status, check, detail) of each line after the first: the check's column is as wide as its longest
    name, "SRV submissions"."""
    return [(line[:9].strip(), line[10:25].strip(), line[26:]) for line in stdout.splitlines()[1:] if line[:1] != "*"]


def setup(tmp_path: Path, dns: LoopbackDNS) -> tuple[KarteroServer, str]:
    server = KarteroServer(tmp_path / "k", domains=("example.test",), hostname="mail.example.test",
                           extra_config=dns.config)  # fmt: skip
    out = run_cli_in_process(server.config, "dkim", "keygen", "example.test", "--selector", "s1").stdout
    record = re.search(r'^(\S+) IN TXT "(.+)"$', out, re.M)
    assert record is not None
    value = record.group(2)
    return server, f"{record.group(1)} 60 IN TXT " + " ".join(
        f'"{value[i : i + 200]}"' for i in range(0, len(value), 200)
    )


def test_complete_zone_is_all_ok(tmp_path: Path) -> None:
    with LoopbackDNS("") as dns:
        server, dkim_record = setup(tmp_path, dns)
        dns.zones.set_zone(BASE + DMARC + dkim_record + "\n" + srv_zone(server))
        result = run_cli_in_process(server.config, "dns", "example.test", check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    assert (
        lines[0]
        == f"DNS records for example.test (mail host mail.example.test), looked up through 127.0.0.1:{dns.port}:"
    )
    assert [row[:2] for row in rows(result.stdout)] == [
        ("ok", "MX"), ("ok", "A/AAAA"), ("ok", "SPF"), ("ok", "DKIM s1"), ("ok", "DMARC"), ("ok", "MTA-STS"),
        ("ok", "MTA-STS web"), ("ok", "TLS-RPT"), ("ok", "autoconfig"), ("ok", "autodiscover"),
        *(("ok", f"SRV {name}") for name in SERVICES), ("ok", "PTR"),
    ]  # fmt: skip
    assert lines[4].startswith("ok        DKIM s1         s1._domainkey.example.test publishes the rsa key")


def test_missing_dmarc_is_exactly_the_gap(tmp_path: Path) -> None:
    with LoopbackDNS("") as dns:
        server, dkim_record = setup(tmp_path, dns)
        dns.zones.set_zone(BASE + dkim_record + "\n" + srv_zone(server))
        result = run_cli_in_process(server.config, "dns", "example.test", check=False)
        not_ok = [line for line in result.stdout.splitlines()[1:] if not line.startswith("ok ")]
        assert result.returncode == 1
        assert not_ok == [
            'missing   DMARC           add: _dmarc.example.test. IN TXT "v=DMARC1; p=quarantine; '
            'rua=mailto:postmaster@example.test"'
        ]
        # Other gaps and mistakes, each with its fix.
        dns.zones.set_zone(
            'example.test. 60 IN MX 10 mx.elsewhere.example.\nexample.test. 60 IN TXT "v=spf1 +all"\n'
            + '_dmarc.example.test. 60 IN TXT "v=DMARC1; p=nonsense"\n'
            + dkim_record.replace("p=", "p=AAAA")
            + "\n"
        )
        result = run_cli_in_process(server.config, "dns", "example.test", check=False)
    by_name = {name: (status, detail) for status, name, detail in rows(result.stdout)}
    assert result.returncode == 1
    assert by_name["MX"][0] == "wrong"
    assert by_name["MX"][1].startswith("found MX 10 mx.elsewhere.example., none is mail.example.test")
    assert by_name["A/AAAA"][0] == "missing" and by_name["A/AAAA"][1].startswith("add: mail.example.test. IN A")
    assert by_name["SPF"] == (
        "wrong", '"v=spf1 +all" does not end in -all or ~all: publish example.test. IN TXT "v=spf1 mx -all"'
    )
    assert by_name["DKIM s1"][0] == "wrong"
    assert by_name["DKIM s1"][1].startswith("s1._domainkey.example.test publishes another key")
    assert by_name["DMARC"][0] == "wrong" and by_name["DMARC"][1].startswith('"v=DMARC1; p=nonsense" has no valid p=')
    assert by_name["MTA-STS"] == (
        "missing*", f'recommended: _mta-sts.example.test. IN TXT "v=STSv1; id={POLICY_ID}" (the policy is served '
        "at https://mta-sts.example.test/.well-known/mta-sts.txt, RFC 8461)"
    )  # fmt: skip
    assert by_name["SRV imaps"] == (
        "missing*", f"recommended: _imaps._tcp.example.test. IN SRV 0 1 {server.imaps_port} mail.example.test."
    )
