from __future__ import annotations

import re

import pytest

from roam.connector.allow import AccessList, AllowRule, parse_port, split_host_port
from roam.errors import ConfigError
from roam.names import DnsName, Host, InvalidHost


def allows(rules: list[str], host: str, port: int) -> bool:
    """True when the list admits `host` by name or, for an IP literal, by address."""
    access = AccessList.parse(rules)
    return access.allows_name(Host.parse(host), port) or access.allows_address(host, port)


def by_name(access: AccessList, host: str, port: int) -> bool:
    return access.allows_name(Host.parse(host), port)


# split_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", "80")),
        ("example.com:443", ("example.com", "443")),
        ("*:*", ("*", "*")),
        ("  host:22\n", ("host", "22")),
        ("[::1]:22", ("::1", "22")),
        ("[2001:db8::/32]:443", ("2001:db8::/32", "443")),
        ("host:", ("host", "")),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, str]) -> None:
    assert split_host_port(text, "--flag") == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("example.com", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        (":80", "expected HOST:PORT"),
        ("::1:22", "put an IPv6 address in brackets"),
        ("2001:db8::1:443", "put an IPv6 address in brackets"),
        ("[::1:22", "expected [IPv6]:PORT"),
        ("[::1]22", "expected [IPv6]:PORT"),
        ("[::1]", "expected [IPv6]:PORT"),
    ],
)
def test_split_host_port_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        split_host_port(text, "--flag")
    assert str(info.value).startswith(f"--flag {text.strip()!r}")


# parse_port


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("80", 80), ("65535", 65535)])
def test_parse_port(text: str, port: int) -> None:
    assert parse_port(text, "--flag") == port
    assert parse_port(text, "--flag", wildcard=True) == port


def test_parse_port_wildcard() -> None:
    assert parse_port("*", "--flag", wildcard=True) is None
    with pytest.raises(ConfigError, match=re.escape("port '*' is not a number from 1 to 65535")):
        parse_port("*", "--flag")


@pytest.mark.parametrize("text", ["0", "65536", "70000", "http", "", "-1", "8o", "1.5"])
def test_parse_port_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_port(text, "--flag")
    assert str(info.value) == f"--flag: port {text!r} is not a number from 1 to 65535"


def test_parse_port_error_mentions_wildcard_when_allowed() -> None:
    with pytest.raises(ConfigError, match=re.escape("from 1 to 65535 or *")):
        parse_port("0", "--flag", wildcard=True)


# AllowRule.parse


def test_parse_any_host_any_port() -> None:
    rule = AllowRule.parse("*:*")
    assert rule.any_host
    assert rule.port is None
    assert rule.network is None
    assert rule.name is None
    assert rule.text == "*:*"


def test_parse_any_host_one_port() -> None:
    rule = AllowRule.parse("*:80")
    assert rule.any_host
    assert rule.port == 80


@pytest.mark.parametrize(
    ("text", "network", "port"),
    [
        ("127.0.0.1:*", "127.0.0.1/32", None),
        ("10.0.0.0/8:22", "10.0.0.0/8", 22),
        ("192.168.1.7/24:443", "192.168.1.0/24", 443),
        ("[::1]:22", "::1/128", 22),
        ("[2001:db8::/32]:443", "2001:db8::/32", 443),
    ],
)
def test_parse_address_rules(text: str, network: str, port: int | None) -> None:
    rule = AllowRule.parse(text)
    assert rule.network is not None
    assert str(rule.network) == network
    assert rule.name is None
    assert rule.port == port
    assert not rule.any_host


@pytest.mark.parametrize(
    ("text", "name", "below"),
    [
        ("example.com:80", "example.com", False),
        ("Example.COM:80", "example.com", False),
        ("example.com.:80", "example.com", False),
        ("localhost:8080", "localhost", False),
        ("*.example.com:443", "example.com", True),
        ("*.Example.Com.:443", "example.com", True),
        ("*.bücher.example:443", "xn--bcher-kva.example", True),
        ("_sip._tcp.example.com:5060", "_sip._tcp.example.com", False),
    ],
)
def test_parse_name_rules(text: str, name: str, below: bool) -> None:
    rule = AllowRule.parse(text)
    assert rule.name == DnsName.parse(name)
    assert rule.below is below
    assert rule.network is None
    assert not rule.any_host


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nonsense", "expected HOST:PORT"),
        ("example.com", "expected HOST:PORT"),
        ("10.0.0.1", "expected HOST:PORT"),
        ("example.com:", "port '' is not a number from 1 to 65535 or *"),
        ("example.com:0", "port '0' is not a number from 1 to 65535 or *"),
        ("example.com:70000", "port '70000' is not a number from 1 to 65535 or *"),
        ("example.com:http", "port 'http' is not a number from 1 to 65535 or *"),
        ("*:-1", "port '-1' is not a number"),
        ("10.0.0.0/40:80", "'10.0.0.0/40' is not a valid CIDR network"),
        ("[10.0.0.0/40]:80", "'10.0.0.0/40' is not a valid CIDR network"),
        ("10.0.0.0/abc:80", "'10.0.0.0/abc' is not a valid CIDR network"),
        ("[2001:db8::/200]:443", "'2001:db8::/200' is not a valid CIDR network"),
        ("a*.com:80", "a wildcard may only lead a name (*.example.com)"),
        ("sub.*.example.com:80", "a wildcard may only lead a name"),
        ("*example.com:80", "a wildcard may only lead a name"),
        ("::1:22", "put an IPv6 address in brackets"),
        ("2001:db8::/32:443", "put an IPv6 address in brackets"),
        ("[::1:22", "expected [IPv6]:PORT"),
        (":80", "expected HOST:PORT"),
        (":*", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        # Names are checked as DNS names, and the message names the problem.
        ("localhost\0.corp.example:80", "label 1 'localhost\\x00' contains '\\x00' (U+0000)"),
        ("*.corp\0.example:80", "label 1 'corp\\x00' contains"),
        ("a..example:80", "label 2 is empty"),
        ("*.:80", "it is empty"),
        ("-a.example:80", "label 1 '-a' starts with a hyphen"),
        ("a b.example:80", "contains ' ' (U+0020)"),
        ("a" * 64 + ".example:80", "is 64 octets long; at most 63"),
        (".".join(["a" * 63] * 4) + ":80", "it is 255 octets long; at most 253"),
        ("999.1.1.1:80", "is a number"),
        ("☃.example:80", "not a valid internationalised label"),
    ],
)
def test_parse_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        AllowRule.parse(text)
    assert str(info.value).startswith(f"--allow {text!r}")


# Matching


def test_any_host_any_port_allows_everything() -> None:
    assert allows(["*:*"], "example.com", 1)
    assert allows(["*:*"], "10.1.2.3", 65535)
    assert allows(["*:*"], "::1", 22)


def test_any_host_one_port() -> None:
    assert allows(["*:80"], "example.com", 80)
    assert allows(["*:80"], "127.0.0.1", 80)
    assert allows(["*:80"], "::1", 80)
    assert not allows(["*:80"], "example.com", 81)
    assert not allows(["*:80"], "127.0.0.1", 443)


def test_single_address_any_port() -> None:
    access = AccessList.parse(["127.0.0.1:*"])
    assert access.allows_address("127.0.0.1", 1)
    assert access.allows_address("127.0.0.1", 65535)
    assert not access.allows_address("127.0.0.2", 80)
    assert not access.allows_address("::1", 80)
    # An address rule never admits a name; the name's resolved address is checked.
    assert not by_name(access, "localhost", 80)
    assert not by_name(access, "127.0.0.1", 80)


def test_cidr_v4() -> None:
    access = AccessList.parse(["10.0.0.0/8:22"])
    assert access.allows_address("10.0.0.1", 22)
    assert access.allows_address("10.255.255.255", 22)
    assert not access.allows_address("11.0.0.1", 22)
    assert not access.allows_address("10.0.0.1", 23)


def test_ipv6_address_in_brackets() -> None:
    access = AccessList.parse(["[::1]:22"])
    assert access.allows_address("::1", 22)
    assert access.allows_address("0:0:0:0:0:0:0:1", 22)
    assert not access.allows_address("::2", 22)
    assert not access.allows_address("::1", 23)
    assert not access.allows_address("127.0.0.1", 22)


def test_cidr_v6() -> None:
    access = AccessList.parse(["[2001:db8::/32]:443"])
    assert access.allows_address("2001:db8::1", 443)
    assert access.allows_address("2001:db8:ffff:ffff::1", 443)
    assert access.allows_address("2001:DB8::abcd", 443)
    assert not access.allows_address("2001:db9::1", 443)
    assert not access.allows_address("2001:db8::1", 80)
    assert not access.allows_address("10.0.0.1", 443)


def test_exact_name() -> None:
    access = AccessList.parse(["example.com:80"])
    assert by_name(access, "example.com", 80)
    assert not by_name(access, "example.com", 443)
    assert not by_name(access, "sub.example.com", 80)
    assert not by_name(access, "example.org", 80)
    assert not by_name(access, "badexample.com", 80)
    # A name rule says nothing about addresses.
    assert not access.allows_address("93.184.216.34", 80)


@pytest.mark.parametrize("host", ["EXAMPLE.COM", "Example.Com", "example.com.", "EXAMPLE.com."])
def test_name_case_and_trailing_dot(host: str) -> None:
    for rule in ["example.com:80", "EXAMPLE.COM.:80"]:
        assert by_name(AccessList.parse([rule]), host, 80), (rule, host)


def test_wildcard_name() -> None:
    access = AccessList.parse(["*.example.com:443"])
    assert by_name(access, "sub.example.com", 443)
    assert by_name(access, "a.b.example.com", 443)
    assert by_name(access, "SUB.Example.COM.", 443)
    assert not by_name(access, "example.com", 443)
    assert not by_name(access, "badexample.com", 443)
    assert not by_name(access, "example.com.evil.net", 443)
    assert not by_name(access, "sub.example.com", 80)


def test_wildcard_is_label_wise_and_never_matches_a_nul() -> None:
    access = AccessList.parse(["*.corp.example:*"])
    assert by_name(access, "db.corp.example", 80)
    assert by_name(access, "DB.Corp.Example.", 80)
    assert not by_name(access, "evilcorp.example", 80)
    assert not by_name(access, "corp.example", 80)
    assert not by_name(access, "corp.example.evil", 80)
    # The NUL name never becomes a Host, so no rule ever sees it.
    with pytest.raises(InvalidHost, match=re.escape("U+0000")):
        Host.parse("localhost\0.corp.example")


def test_idna_names_match_in_either_spelling() -> None:
    access = AccessList.parse(["*.bücher.example:443", "straße.de:80"])
    assert by_name(access, "www.xn--bcher-kva.example", 443)
    assert by_name(access, "WWW.Bücher.example.", 443)
    assert by_name(access, "xn--strae-oqa.de", 80)
    assert not by_name(access, "strasse.de", 80)  # non-transitional: ß is not ss


def test_an_address_host_is_never_admitted_by_a_name_rule() -> None:
    access = AccessList.parse(["*.corp.example:*", "localhost:*"])
    assert not by_name(access, "127.0.0.1", 80)
    assert not by_name(access, "::1", 80)


def test_wildcard_name_any_port() -> None:
    access = AccessList.parse(["*.example.com:*"])
    assert by_name(access, "www.example.com", 1)
    assert by_name(access, "www.example.com", 65535)
    assert not by_name(access, "example.com", 80)


def test_several_rules_any_one_suffices() -> None:
    access = AccessList.parse(["example.com:80", "10.0.0.0/8:22", "[::1]:*"])
    assert by_name(access, "example.com", 80)
    assert access.allows_address("10.9.8.7", 22)
    assert access.allows_address("::1", 9999)
    assert not by_name(access, "example.com", 22)
    assert not access.allows_address("10.9.8.7", 80)


def test_port_of_one_rule_does_not_leak_to_another() -> None:
    access = AccessList.parse(["example.com:80", "*.example.org:443"])
    assert not by_name(access, "example.com", 443)
    assert not by_name(access, "www.example.org", 80)


@pytest.mark.parametrize("addr", ["not-an-ip", "", "example.com", "999.1.1.1"])
def test_allows_address_rejects_non_addresses(addr: str) -> None:
    assert not AccessList.parse(["*:*"]).allows_address(addr, 80)
    assert not AccessList.parse(["0.0.0.0/0:*", "[::/0]:*"]).allows_address(addr, 80)


def test_empty_access_list_allows_nothing() -> None:
    access = AccessList.parse([])
    assert access.rules == []
    assert not by_name(access, "example.com", 80)
    assert not by_name(access, "localhost", 22)
    assert not access.allows_address("127.0.0.1", 80)
    assert not access.allows_address("::1", 22)


def test_access_list_parse_stops_on_first_bad_rule() -> None:
    with pytest.raises(ConfigError, match=re.escape("--allow 'bad'")):
        AccessList.parse(["*:80", "bad", "also-bad"])
