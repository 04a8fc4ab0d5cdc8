from __future__ import annotations

import re

import pytest

from roam.errors import ConfigError
from roam.interfaces.forward import ForwardSpec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080=example.com:80", ForwardSpec("127.0.0.1", 8080, "example.com", 80)),
        ("localhost:2222=10.0.0.5:22", ForwardSpec("localhost", 2222, "10.0.0.5", 22)),
        ("127.0.0.1:0=db.internal:5432", ForwardSpec("127.0.0.1", 0, "db.internal", 5432)),
        ("0.0.0.0:1=h:65535", ForwardSpec("0.0.0.0", 1, "h", 65535)),
        ("[::1]:8443=[2001:db8::1]:443", ForwardSpec("::1", 8443, "2001:db8::1", 443)),
        ("[::1]:0=127.0.0.1:22", ForwardSpec("::1", 0, "127.0.0.1", 22)),
        (" 127.0.0.1:80 = example.com:80 ", ForwardSpec("127.0.0.1", 80, "example.com", 80)),
        ("127.0.0.1:5432=lab/db:5432", ForwardSpec("127.0.0.1", 5432, "db", 5432, server="lab")),
        ("udp:127.0.0.1:53=office-2/[::1]:53,redundant",
         ForwardSpec("127.0.0.1", 53, "::1", 53, udp=True, redundant=True, server="office-2")),
    ],
)
def test_parse(text: str, expected: ForwardSpec) -> None:
    assert ForwardSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:8080=example.com:80",
                                  "127.0.0.1:8080=lab/example.com:80"])
def test_str_round_trips_for_ipv4_and_names(text: str) -> None:
    spec = ForwardSpec.parse(text)
    assert str(spec) == text
    assert ForwardSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1:8080", "--forward '127.0.0.1:8080': expected LHOST:LPORT=RHOST:RPORT"),
        ("", "--forward '': expected LHOST:LPORT=RHOST:RPORT"),
        ("127.0.0.1:8080:example.com:80", "expected LHOST:LPORT=RHOST:RPORT"),
        ("127.0.0.1=example.com:80", "--forward listen address '127.0.0.1': expected HOST:PORT"),
        ("127.0.0.1:8080=example.com", "--forward destination 'example.com': expected HOST:PORT"),
        ("=example.com:80", "--forward listen address '': expected HOST:PORT"),
        ("127.0.0.1:8080=", "--forward destination '': expected HOST:PORT"),
        (":8080=example.com:80", "--forward listen address ':8080': expected HOST:PORT"),
        ("127.0.0.1:=example.com:80", "port '' is not a number from 1 to 65535"),
        ("127.0.0.1:8080=example.com:", "port '' is not a number from 1 to 65535"),
        ("127.0.0.1:8080=example.com:0", "port '0' is not a number from 1 to 65535"),
        ("127.0.0.1:70000=example.com:80", "port '70000' is not a number from 1 to 65535"),
        ("127.0.0.1:8080=example.com:http", "port 'http' is not a number from 1 to 65535"),
        ("127.0.0.1:8080=example.com:*", "port '*' is not a number from 1 to 65535"),
        ("::1:8080=example.com:80", "put an IPv6 address in brackets"),
        ("127.0.0.1:8080=2001:db8::1:443", "put an IPv6 address in brackets"),
        ("[::1:8080=example.com:80", "expected [IPv6]:PORT"),
        ("127.0.0.1:1=/h:1", "'' is not a server's name"),
        ("127.0.0.1:1=a b/h:1", "'a b' is not a server's name"),
        ("127.0.0.1:1=a/b/h:1", "'b/h' is not a valid host name"),
    ],
)
def test_parse_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        ForwardSpec.parse(text)


def test_port_error_quotes_the_whole_spec() -> None:
    text = "127.0.0.1:8080=example.com:0"
    with pytest.raises(ConfigError, match=re.escape(f"--forward {text!r}: port '0'")):
        ForwardSpec.parse(text)


def test_reverse_specs_name_their_own_flag_and_sides() -> None:
    spec = ForwardSpec.parse_reverse("127.0.0.1:2222=127.0.0.1:22")
    assert (spec.listen_host, spec.listen_port, spec.dest_host, spec.dest_port) == (
        "127.0.0.1", 2222, "127.0.0.1", 22)
    with pytest.raises(ConfigError, match="--reverse '1:2': expected RHOST:RPORT=LHOST:LPORT"):
        ForwardSpec.parse_reverse("1:2")
    with pytest.raises(ConfigError, match="reverse forwards carry TCP"):
        ForwardSpec.parse_reverse("udp:127.0.0.1:53=127.0.0.1:53")
    with pytest.raises(ConfigError, match="not a number from 1 to 65535"):
        ForwardSpec.parse_reverse("127.0.0.1:0=127.0.0.1:22")


# Hosts are validated and kept in normal form


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080=DB.Corp.Example.:5432",
         ForwardSpec("127.0.0.1", 8080, "db.corp.example", 5432)),
        ("LocalHost:2222=bücher.example:80",
         ForwardSpec("localhost", 2222, "xn--bcher-kva.example", 80)),
        ("[::1]:8443=[2001:DB8:0::1]:443", ForwardSpec("::1", 8443, "2001:db8::1", 443)),
        ("[::]:0=[fe80::1%eth0]:22", ForwardSpec("::", 0, "fe80::1%eth0", 22)),
        ("udp:127.0.0.1:53=_dns._udp.corp.example:53",
         ForwardSpec("127.0.0.1", 53, "_dns._udp.corp.example", 53, True)),
    ],
)
def test_hosts_are_normalised(text: str, expected: ForwardSpec) -> None:
    spec = ForwardSpec.parse(text)
    assert spec == expected
    assert ForwardSpec.parse(("udp:" if spec.udp else "") + str(spec)) == spec


def test_bracketed_ipv6_keeps_its_brackets_in_str() -> None:
    assert str(ForwardSpec.parse("[::1]:8443=[2001:DB8::1]:443")) == "[::1]:8443=[2001:db8::1]:443"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1:8080=localhost\0.corp.example:80",
         "destination: 'localhost\\x00.corp.example' is not a valid host name: label 1"),
        ("127.0.0.1:8080=a..example:80", "destination: 'a..example' is not a valid host name: "
                                         "label 2 is empty"),
        ("127.0.0.1:8080=-a.example:80", "label 1 '-a' starts with a hyphen"),
        ("127.0.0.1:8080=" + ".".join(["a" * 63] * 4) + ":80", "255 octets long; at most 253"),
        ("bad host:8080=example.com:80", "listen address: 'bad host' is not a valid host name"),
        ("127.0.0.1:8080=[example.com]:80", "brackets are for IPv6 addresses, not 'example.com'"),
        ("[127.0.0.1]:8080=example.com:80", "listen address: brackets are for IPv6 addresses"),
        ("127.0.0.1:8080=127.1:80", "is a number"),
    ],
)
def test_bad_hosts_are_config_errors_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        ForwardSpec.parse(text)
    assert str(info.value).startswith(f"--forward {text!r}: ")


def test_label_of_64_octets_in_a_forward() -> None:
    with pytest.raises(ConfigError, match=re.escape("is 64 octets long; at most 63")):
        ForwardSpec.parse("127.0.0.1:8080=" + "a" * 64 + ".example:80")


def test_reverse_hosts_are_checked_and_named_by_their_own_flag() -> None:
    spec = ForwardSpec.parse_reverse("LOCALHOST.:2222=127.0.0.1:22")
    assert spec.listen_host == "localhost"
    with pytest.raises(ConfigError, match=re.escape(
            "--reverse 'a_b-:2222=127.0.0.1:22': listen address beside the server: 'a_b-' is "
            "not a valid host name: label 1 'a_b-' ends with a hyphen")):
        ForwardSpec.parse_reverse("a_b-:2222=127.0.0.1:22")
    with pytest.raises(ConfigError, match=re.escape("local address: ")):
        ForwardSpec.parse_reverse("127.0.0.1:2222=loc\0alhost:22")


# Options after the destination: `,redundant` for UDP


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:5004=10.1.0.9:5004,redundant",
         ForwardSpec("127.0.0.1", 5004, "10.1.0.9", 5004, udp=True, redundant=True)),
        ("udp:[::1]:0=[2001:db8::9]:5004, redundant ",
         ForwardSpec("::1", 0, "2001:db8::9", 5004, udp=True, redundant=True)),
        ("udp:127.0.0.1:5004=voice.corp.example:5004",
         ForwardSpec("127.0.0.1", 5004, "voice.corp.example", 5004, udp=True)),
    ],
)
def test_parse_redundant(text: str, expected: ForwardSpec) -> None:
    spec = ForwardSpec.parse(text)
    assert spec == expected
    assert ForwardSpec.parse("udp:" + str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("udp:127.0.0.1:5004=10.1.0.9:5004,redundnat",
         "--forward 'udp:127.0.0.1:5004=10.1.0.9:5004,redundnat': unknown option "
         "'redundnat' (known: redundant)"),
        ("udp:127.0.0.1:5004=10.1.0.9:5004,",
         "--forward 'udp:127.0.0.1:5004=10.1.0.9:5004,': empty option (a stray ',')"),
        ("udp:127.0.0.1:5004=10.1.0.9:5004,redundant,,", "empty option (a stray ',')"),
        ("udp:127.0.0.1:5004=10.1.0.9:5004,redundant,redundant",
         "'redundant' is given twice"),
        ("127.0.0.1:8080=example.com:80,redundant",
         "--forward '127.0.0.1:8080=example.com:80,redundant': 'redundant' is for UDP "
         "forwards (udp:LHOST:LPORT=RHOST:RPORT,redundant)"),
        ("tcp:127.0.0.1:8080=example.com:80,redundant", "'redundant' is for UDP forwards"),
        ("udp:127.0.0.1:5004,redundant=10.1.0.9:5004",
         "--forward 'udp:127.0.0.1:5004,redundant=10.1.0.9:5004': expected "
         "LHOST:LPORT=RHOST:RPORT"),
    ],
)
def test_parse_option_errors_name_the_option(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        ForwardSpec.parse(text)


def test_a_reverse_forward_takes_no_option() -> None:
    with pytest.raises(ConfigError, match="--reverse"):
        ForwardSpec.parse_reverse("127.0.0.1:2222=127.0.0.1:22,redundant")
