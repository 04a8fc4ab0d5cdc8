"""A relay's settings: files of keys and secrets, and a relay that would admit nobody."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.errors import ConfigError, KeyFileError
from roam.relay.config import load_otp_secret, load_totp_secrets, relay_config

SECRET = base64.b32encode(b"x" * 20).decode()


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def test_totp_secrets_are_read_per_identity(tmp_path: Path) -> None:
    who = public_key(generate_private_key())
    path = private(tmp_path / "totp", f"# people\n{encode_key(who)} {SECRET.lower()} ana\n\n")
    assert load_totp_secrets(path) == {who: b"x" * 20}


@pytest.mark.parametrize(("line", "error"), [
    ("KEY", "expected PUBLIC_KEY BASE32_SECRET"),
    ("KEY !!!notbase32", "not base32"),
    ("KEY " + base64.b32encode(b"x" * 10).decode(), "80 bits; at least 128"),
    ("nonsense " + SECRET, "line 1"),
])
def test_a_wrong_secrets_line_is_named(tmp_path: Path, line: str, error: str) -> None:
    key = encode_key(public_key(generate_private_key()))
    path = private(tmp_path / "totp", line.replace("KEY", key) + "\n")
    with pytest.raises(KeyFileError, match=error):
        load_totp_secrets(path)


def test_a_secrets_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "totp"
    path.write_text("")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load_totp_secrets(path)


def test_a_clients_secret_is_one_base32_line(tmp_path: Path) -> None:
    assert load_otp_secret(private(tmp_path / "s", SECRET + "\n")) == b"x" * 20
    with pytest.raises(KeyFileError, match="one base32 secret on one line"):
        load_otp_secret(private(tmp_path / "t", f"{SECRET}\n{SECRET}\n"))


def test_a_relay_that_would_admit_nobody_is_a_configuration_error(tmp_path: Path) -> None:
    write_private_key(tmp_path / "relay.key", generate_private_key())
    with pytest.raises(ConfigError, match="would admit nobody"):
        relay_config(("127.0.0.1", 0), str(tmp_path / "relay.key"), None, None, None)
    with pytest.raises(ConfigError, match="the only value is 'any'"):
        relay_config(("127.0.0.1", 0), str(tmp_path / "relay.key"), None, None, "all")
    assert relay_config(("127.0.0.1", 0), str(tmp_path / "relay.key"), None, None,
                        "any").admit_any


def test_dial_allow_is_parsed_as_the_servers_allow_rules_and_named_in_errors(
        tmp_path: Path) -> None:
    write_private_key(tmp_path / "relay.key", generate_private_key())
    key = str(tmp_path / "relay.key")
    config = relay_config(("127.0.0.1", 0), key, None, None, "any",
                          ["198.19.0.0/16:*", "*.corp.example:4433"])
    assert config.dial_allow is not None
    assert config.dial_allow.allows_address("198.19.1.2", 7400)
    assert not config.dial_allow.allows_address("10.0.0.1", 7400)
    assert relay_config(("127.0.0.1", 0), key, None, None, "any").dial_allow is None
    with pytest.raises(ConfigError, match=r"--dial-allow '10\.0\.0\.0/33:1': '10\.0\.0\.0/33' "
                                          "is not a valid CIDR network"):
        relay_config(("127.0.0.1", 0), key, None, None, "any", ["10.0.0.0/33:1"])
    with pytest.raises(ConfigError, match=r"--dial-allow 'h:x'.*port 'x'"):
        relay_config(("127.0.0.1", 0), key, None, None, "any", ["h:x"])


def test_a_fleet_needs_a_redis_url_and_an_address_the_others_can_dial(tmp_path: Path) -> None:
    write_private_key(tmp_path / "relay.key", generate_private_key())
    key = str(tmp_path / "relay.key")
    url = "redis://10.0.0.5:6379/0"
    config = relay_config(("198.18.3.2", 4434), key, None, None, "any", None, url)
    assert (config.directory, config.fleet_address) == (url, "198.18.3.2:4434")
    config = relay_config(("0.0.0.0", 4434), key, None, None, "any", None, url,
                          "relay1.example:4434")
    assert config.fleet_address == "relay1.example:4434"
    with pytest.raises(ConfigError, match=r"needs --fleet-address"):
        relay_config(("0.0.0.0", 4434), key, None, None, "any", None, url)
    with pytest.raises(ConfigError, match=r"--fleet-address 'x:0'"):
        relay_config(("0.0.0.0", 4434), key, None, None, "any", None, url, "x:0")
    with pytest.raises(ConfigError, match=r"give --directory too"):
        relay_config(("0.0.0.0", 4434), key, None, None, "any", None, None, "x:1")
    with pytest.raises(ConfigError, match=r"--directory 'mysql://h:1'"):
        relay_config(("198.18.3.2", 4434), key, None, None, "any", None, "mysql://h:1")
