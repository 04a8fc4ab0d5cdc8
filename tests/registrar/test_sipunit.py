"""`--registrar sip:USER@DOMAIN,via=HOST:PORT,password-file=FILE`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roam.errors import ConfigError
from roam.registrar.sipunit import is_sip, parse_sip_registrar


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "bob.pass"
    path.write_text("s3cret\n")
    os.chmod(path, 0o600)
    return path


def test_a_sip_registrar_is_an_account_and_where_to_reach_it(secret: Path) -> None:
    r = parse_sip_registrar(f"sip:bob@roam.test,via=127.0.0.1:5060,password-file={secret},"
                            "transport=udp")
    assert (r.account.aor, r.account.password, r.via, r.transport) == (
        "sip:bob@roam.test", "s3cret", ("127.0.0.1", 5060), "udp")
    assert is_sip("SIP:bob@roam.test")
    assert not is_sip("127.0.0.1:4440,key=x")


@pytest.mark.parametrize(("tail", "problem"), [
    ("", "needs via=HOST:PORT and password-file=FILE"),
    (",via=127.0.0.1:5060", "needs via=HOST:PORT and password-file=FILE"),
    (",via=127.0.0.1:5060,password-file=SECRET,transport=tls", "transport='tls'"),
    (",via=127.0.0.1:5060,password-file=SECRET,colour=red", "unknown or repeated option"),
    (",via=127.0.0.1,password-file=SECRET", "expected HOST:PORT"),
])
def test_bad_options_are_named(secret: Path, tail: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sip_registrar("sip:bob@roam.test" + tail.replace("SECRET", str(secret)))
    assert problem in str(info.value)


def test_a_password_file_others_can_read_is_refused(secret: Path) -> None:
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="--registrar"):
        parse_sip_registrar(f"sip:bob@roam.test,via=127.0.0.1:5060,password-file={secret}")
