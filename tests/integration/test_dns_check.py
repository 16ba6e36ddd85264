"""`kartero dns DOMAIN` against a loopback DNS server: a complete zone is all ok; each gap is reported
with the record that fixes it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, run_cli

BASE = """
example.test. 60 IN MX 10 mail.example.test.
mail.example.test. 60 IN A 127.0.0.2
example.test. 60 IN TXT "v=spf1 mx -all"
_mta-sts.example.test. 60 IN TXT "v=STSv1; id=20261126"
_smtp._tls.example.test. 60 IN TXT "v=TLSRPTv1; rua=mailto:tls@example.test"
2.0.0.127.in-addr.arpa. 60 IN PTR mail.example.test.
"""
DMARC = '_dmarc.example.test. 60 IN TXT "v=DMARC1; p=reject"\n'


def setup(tmp_path: Path, dns: LoopbackDNS) -> tuple[KarteroServer, str]:
    server = KarteroServer(tmp_path / "k", domains=("example.test",), hostname="mail.example.test",
                           extra_config=dns.config)  # fmt: skip
    out = run_cli(server.config, "dkim", "keygen", "example.test", "--selector", "s1").stdout
    record = re.search(r'^(\S+) IN TXT "(.+)"$', out, re.M)
    assert record is not None
    value = record.group(2)
    return server, f"{record.group(1)} 60 IN TXT " + " ".join(
        f'"{value[i : i + 200]}"' for i in range(0, len(value), 200)
    )


def test_complete_zone_is_all_ok(tmp_path: Path) -> None:
    with LoopbackDNS("") as dns:
        server, dkim_record = setup(tmp_path, dns)
        dns.zones.set_zone(BASE + DMARC + dkim_record + "\n")
        result = run_cli(server.config, "dns", "example.test", check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    assert (
        lines[0]
        == f"DNS records for example.test (mail host mail.example.test), looked up through 127.0.0.1:{dns.port}:"
    )
    assert [line.split()[:2] for line in lines[1:]] == [
        ["ok", "MX"], ["ok", "A/AAAA"], ["ok", "SPF"], ["ok", "DKIM"], ["ok", "DMARC"], ["ok", "MTA-STS"],
        ["ok", "TLS-RPT"], ["ok", "PTR"],
    ]  # fmt: skip
    assert lines[4].startswith("ok        DKIM s1      s1._domainkey.example.test publishes the rsa key")


def test_missing_dmarc_is_exactly_the_gap(tmp_path: Path) -> None:
    with LoopbackDNS("") as dns:
        server, dkim_record = setup(tmp_path, dns)
        dns.zones.set_zone(BASE + dkim_record + "\n")
        result = run_cli(server.config, "dns", "example.test", check=False)
        not_ok = [line for line in result.stdout.splitlines()[1:] if not line.startswith("ok ")]
        assert result.returncode == 1
        assert not_ok == [
            'missing   DMARC        add: _dmarc.example.test. IN TXT "v=DMARC1; p=quarantine; '
            'rua=mailto:postmaster@example.test"'
        ]
        # Other gaps and mistakes, each with its fix.
        dns.zones.set_zone(
            'example.test. 60 IN MX 10 mx.elsewhere.example.\nexample.test. 60 IN TXT "v=spf1 +all"\n'
            + '_dmarc.example.test. 60 IN TXT "v=DMARC1; p=nonsense"\n'
            + dkim_record.replace("p=", "p=AAAA")
            + "\n"
        )
        result = run_cli(server.config, "dns", "example.test", check=False)
    by_name = {line.split()[1]: line for line in result.stdout.splitlines()[1:] if len(line.split()) > 1}
    assert result.returncode == 1
    assert by_name["MX"].startswith(
        "wrong     MX           found MX 10 mx.elsewhere.example., none is mail.example.test"
    )
    assert by_name["A/AAAA"].startswith("missing   A/AAAA       add: mail.example.test. IN A")
    assert by_name["SPF"] == (
        'wrong     SPF          "v=spf1 +all" does not end in -all or ~all: '
        'publish example.test. IN TXT "v=spf1 mx -all"'
    )
    assert by_name["DKIM"].startswith("wrong     DKIM s1      s1._domainkey.example.test publishes another key")
    assert by_name["DMARC"].startswith('wrong     DMARC        "v=DMARC1; p=nonsense" has no valid p=')
    assert by_name["MTA-STS"].startswith("missing*  MTA-STS      recommended: _mta-sts.example.test.")
