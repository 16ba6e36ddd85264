"""MTA-STS policy text and TXT record parsing, and MX pattern matching (RFC 8461 §3, §4.1)."""

from __future__ import annotations

import pytest

from kartero.delivery.mtasts import MAX_AGE_CAP_S, PolicyError, parse_policy, parse_txt


def test_policy_parsing_and_mx_patterns() -> None:
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"
    policy = parse_policy("example.com", "id1", text, 0.0)
    assert (policy.mode, policy.mx, policy.max_age_s, policy.enforced) == (
        "enforce", ("mail.example.com", "*.example.net"), 604800, True
    )  # fmt: skip
    assert policy.allows("mail.example.com") and policy.allows("MAIL.example.com.")
    assert policy.allows("mx1.example.net") and not policy.allows("example.net")
    assert not policy.allows("a.b.example.net")  # a wildcard stands for exactly one label
    assert not policy.allows("evil-mail.example.com")
    assert parse_policy("x", "i", "version: STSv1\nmode: none\nmax_age: 99999999999\n", 0).max_age_s == MAX_AGE_CAP_S


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mode: enforce\nmx: a\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "bad mode"),
        ("version: STSv1\nmode: enforce\nmx: a\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
    ],
)
def test_bad_policies(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy("example.com", "id", text, 0.0)


def test_txt_record() -> None:
    assert parse_txt(("v=STSv1; id=20160831085700Z;",)) == "20160831085700Z"
    assert parse_txt(("v=spf1 -all", "v=STSv1; id=abc")) == "abc"
    assert parse_txt(("v=STSv1; id=a", "v=STSv1; id=b")) is None  # two records: none (§3.1)
    assert parse_txt(("v=STSv1;",)) is None
