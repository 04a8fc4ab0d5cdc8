"""Hosts as they enter roam: IP literals and DNS names, validated and normalised once."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.errors import RoamError
from roam.names import MAX_LABEL, MAX_NAME, DnsName, Host, InvalidHost


def name(text: str) -> str:
    return DnsName.parse(text).text


def problem(text: str) -> str:
    with pytest.raises(InvalidHost) as info:
        Host.parse(text)
    return str(info.value)


# Normalisation


@pytest.mark.parametrize(("text", "expected"), [
    ("example.com", "example.com"),
    ("localhost", "localhost"),
    ("EXAMPLE.COM", "example.com"),
    ("DB.Corp.Example.", "db.corp.example"),
    ("db.corp.example.", "db.corp.example"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("123.example", "123.example"),
    ("1e100.net", "1e100.net"),
    # Hyphens in the third and fourth place are reserved for A-labels by
    # IDNA2008, but real ASCII names use them: they are not refused.
    ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"),
])
def test_ascii_names_are_lower_cased_without_the_root(text: str, expected: str) -> None:
    assert name(text) == expected
    assert str(Host.parse(text)) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("bücher.example", "xn--bcher-kva.example"),
    ("Bücher.Example.", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    # UTS 46 mapping: full-width letters and the ideographic full stop.
    ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\u3002com", "example.com"),
    # Non-transitional processing (IDNA2008): sharp s stays itself.
    ("straße.de", "xn--strae-oqa.de"),
    # A-labels are what a resolver is given: they stand for themselves.
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.Example", "xn--bcher-kva.example"),
])
def test_idna(text: str, expected: str) -> None:
    assert name(text) == expected


def test_a_unicode_name_and_its_a_label_are_one_name() -> None:
    assert DnsName.parse("bücher.example") == DnsName.parse("xn--bcher-kva.example")
    assert Host.parse("Bücher.example.") == Host.parse("xn--bcher-kva.example")


@pytest.mark.parametrize("text", ["_sip._tcp.example.com", "my_host.corp.example",
                                  "_dmarc.x.example"])
def test_underscores_are_allowed_in_ascii_labels(text: str) -> None:
    assert name(text) == text


def test_longest_label_and_longest_name() -> None:
    label = "a" * MAX_LABEL
    assert name(label + ".example") == label + ".example"
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == MAX_NAME == 253
    assert name(longest) == longest
    assert name(longest + ".") == longest  # the root's dot is not counted


# Refusals name the problem


def test_nul_byte_is_refused_and_named() -> None:
    message = problem("localhost\0.corp.example")
    assert "label 1" in message
    assert "U+0000" in message
    assert "\0" not in message  # shown escaped, never raw, in logs


@pytest.mark.parametrize(("text", "char"), [
    ("exa mple.com", "U+0020"),
    ("example.com/x", "U+002F"),
    ("user@example.com", "U+0040"),
    ("example.com:80", "U+003A"),
    ("exa%mple.com", "U+0025"),
    ("a\\.example", "U+005C"),
    ("a*.example", "U+002A"),
    ("[::1]", "U+005B"),
    ("tab\t.example", "U+0009"),
])
def test_characters_outside_letters_digits_hyphen_underscore(text: str, char: str) -> None:
    message = problem(text)
    assert char in message
    assert "letters, digits" in message


def test_label_of_64_octets() -> None:
    message = problem("a" * 64 + ".corp.example")
    assert re.search(r"label 1 .* 64 octets", message), message
    assert "63" in message


def test_name_of_254_and_255_octets() -> None:
    name254 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])
    assert len(name254) == 254
    assert "254 octets" in problem(name254)
    name255 = ".".join(["a" * 63] * 4)
    assert len(name255) == 255
    message = problem(name255)
    assert "255 octets" in message
    assert "253" in message


def test_a_single_label_of_255_octets() -> None:
    assert "255 octets" in problem("a" * 255)


@pytest.mark.parametrize(("text", "label"), [
    ("example..com", "label 2 is empty"),
    (".example.com", "label 1 is empty"),
    ("example.com..", "label 3 is empty"),
    ("", "empty"),
    (".", "empty"),
])
def test_empty_labels(text: str, label: str) -> None:
    assert label in problem(text)


@pytest.mark.parametrize(("text", "label"), [
    ("-a.example", "label 1 '-a' starts with a hyphen"),
    ("a-.example", "label 1 'a-' ends with a hyphen"),
    ("a.-b-.example", "label 2 '-b-' starts with a hyphen"),
    ("a.example-", "label 2 'example-' ends with a hyphen"),
])
def test_leading_and_trailing_hyphens(text: str, label: str) -> None:
    assert label in problem(text)


@pytest.mark.parametrize("text", ["1.2.3", "127.1", "0x7f.1", "2130706433", "017700000001",
                                  "host.123", "01.2.3.4", "1.2.3.0x4"])
def test_a_numeric_last_label_is_not_a_name(text: str) -> None:
    # The C library reads these as IPv4 addresses (inet_aton): never a name.
    assert "number" in problem(text)


@pytest.mark.parametrize("text", [
    "☃.example",  # valid in UTS 46, DISALLOWED in IDNA2008
    "a\u200db.example",  # ZERO WIDTH JOINER out of context (RFC 5892 CONTEXTJ)
    "b_ücher.example",  # no underscore in a U-label
])
def test_invalid_internationalised_labels(text: str) -> None:
    message = problem(text)
    assert "label 1" in message
    assert "RFC 5891" in message


def test_a_u_label_whose_a_label_is_too_long() -> None:
    message = problem("ü" * 60 + ".example")
    assert "label 1" in message
    assert "octets" in message


def test_invalid_host_is_a_roam_error() -> None:
    assert issubclass(InvalidHost, RoamError)


def test_long_input_is_shown_shortened() -> None:
    assert len(problem("a" * 2000)) < 300


# IP literals


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1", "127.0.0.1"),
    ("0.0.0.0", "0.0.0.0"),
    ("::1", "::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("0:0:0:0:0:0:0:1", "::1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("fe80::1%2", "fe80::1%2"),
])
def test_ip_literals(text: str, expected: str) -> None:
    host = Host.parse(text)
    assert host.address == ipaddress.ip_address(expected)
    assert host.name is None
    assert str(host) == expected


@pytest.mark.parametrize("text", ["fe80::1%eth\0", "fe80::1%a b", "fe80::1%" + "x" * 16])
def test_ipv6_scope_must_be_an_interface_name_or_number(text: str) -> None:
    assert "scope" in problem(text)


def test_name_host() -> None:
    host = Host.parse("DB.corp.example.")
    assert host.address is None
    assert host.name == DnsName.parse("db.corp.example")
    assert str(host) == "db.corp.example"
    assert host == Host.parse("db.corp.example")
    assert hash(host) == hash(Host.parse("db.corp.example"))


# The types hold only what parse would give


def test_a_name_not_in_normal_form_cannot_be_built_directly() -> None:
    with pytest.raises(InvalidHost):
        DnsName("Example.com")
    with pytest.raises(InvalidHost):
        DnsName("localhost\0.corp.example")
    assert DnsName("example.com") == DnsName.parse("Example.COM.")


def test_host_of_a_scoped_address_is_checked_too() -> None:
    with pytest.raises(InvalidHost):
        Host(ipaddress.IPv6Address("fe80::1%a\0"))


# Label-wise relations


def test_below_is_label_wise() -> None:
    corp = DnsName.parse("corp.example")
    assert DnsName.parse("db.corp.example").is_below(corp)
    assert DnsName.parse("a.b.corp.example").is_below(corp)
    assert not DnsName.parse("corp.example").is_below(corp)
    assert not DnsName.parse("evilcorp.example").is_below(corp)
    assert not DnsName.parse("corp.example.evil").is_below(corp)
    assert DnsName.parse("db.corp.example").labels == ("db", "corp", "example")


# Whatever the input: a Host in normal form, or InvalidHost, and nothing else


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    st.text(st.sampled_from("aZ09-_.\0 ü例ß\u200d\u3002\uff0e%:[]*\\"), max_size=80),
    st.lists(st.text(st.sampled_from("abc-_ü"), max_size=70), max_size=6).map(".".join),
))
def test_any_text_is_a_normal_host_or_invalid(text: str) -> None:
    try:
        host = Host.parse(text)
    except InvalidHost:
        return
    normal = str(host)
    assert Host.parse(normal) == host  # the normal form is a fixed point
    if host.name is not None:
        assert normal.isascii()
        assert len(normal) <= MAX_NAME
        assert all(0 < len(label) <= MAX_LABEL for label in normal.split("."))
        assert set(normal) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
