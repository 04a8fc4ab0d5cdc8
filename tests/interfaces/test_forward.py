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
    ],
)
def test_parse(text: str, expected: ForwardSpec) -> None:
    assert ForwardSpec.parse(text) == expected


def test_str_round_trips_for_ipv4_and_names() -> None:
    text = "127.0.0.1:8080=example.com:80"
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
