from __future__ import annotations

import re
from pathlib import Path

import pytest

from roam.config import load_config
from roam.errors import ConfigError

KNOWN: dict[str, tuple[str, bool]] = {
    "config": ("config", False),
    "listen": ("listen", False),
    "key": ("key", False),
    "authorized-keys": ("authorized_keys", False),
    "allow": ("allow", True),
    "linger": ("linger", False),
    "log-level": ("log_level", False),
}
KNOWN_LIST = "allow, authorized-keys, key, linger, listen, log-level"


def write(tmp_path: Path, text: str, name: str = "roam.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_strings_and_lists(tmp_path: Path) -> None:
    path = write(tmp_path, '''
listen = "127.0.0.1:7000"
key = "server.key"
authorized-keys = "clients"
allow = ["*:80", "[::1]:22"]
''')
    assert load_config(path, KNOWN) == {
        "listen": "127.0.0.1:7000",
        "key": "server.key",
        "authorized_keys": "clients",
        "allow": ["*:80", "[::1]:22"],
    }


def test_single_string_for_repeatable_becomes_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'allow = "example.com:443"\n')
    assert load_config(path, KNOWN) == {"allow": ["example.com:443"]}


def test_empty_list_for_repeatable(tmp_path: Path) -> None:
    path = write(tmp_path, "allow = []\n")
    assert load_config(path, KNOWN) == {"allow": []}


@pytest.mark.parametrize("key", ["authorized-keys", "authorized_keys", '"authorized-keys"'])
def test_dash_and_underscore_forms(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'{key} = "clients"\nlog_level = "debug"\n')
    assert load_config(path, KNOWN) == {"authorized_keys": "clients", "log_level": "debug"}


def test_non_string_scalars_pass_through(tmp_path: Path) -> None:
    path = write(tmp_path, "linger = 30\n")
    assert load_config(path, KNOWN) == {"linger": 30}
    path = write(tmp_path, "linger = 2.5\n", "float.toml")
    assert load_config(path, KNOWN) == {"linger": 2.5}


def test_empty_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), KNOWN) == {}
    assert load_config(write(tmp_path, "# nothing\n", "comment.toml"), KNOWN) == {}


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, KNOWN)
    assert str(info.value) == f"config file {path} does not exist"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), KNOWN)
    assert str(info.value) == f"config file {tmp_path} is a directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('key = "clé"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(f"config file {path} is not UTF-8 text")):
        load_config(str(path), KNOWN)


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ('listen = "127.0.0.1:7000"\nkey = \n', "line 2, column 7"),
        ("listen 127.0.0.1\n", "line 1, column 8"),
        ('allow = ["*:80",\n', "at end of document"),
        ('key = "a"\nkey = "b"\n', "line 2"),
    ],
)
def test_invalid_toml_names_position(tmp_path: Path, text: str, position: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, KNOWN)
    message = str(info.value)
    assert message.startswith(f"config file {path} is not valid TOML: ")
    assert position in message


@pytest.mark.parametrize("key", ["lisen", "allowed", "config", "server"])
def test_unknown_key_lists_known_keys(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'{key} = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, KNOWN)
    assert str(info.value) == (
        f"config file {path}: unknown setting {key!r} (known: {KNOWN_LIST})"
    )


def test_unknown_key_keeps_the_spelling_used(tmp_path: Path) -> None:
    path = write(tmp_path, 'authorized_key = "x"\n')
    with pytest.raises(ConfigError, match=re.escape("unknown setting 'authorized_key'")):
        load_config(path, KNOWN)


def test_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:7000"\n')
    with pytest.raises(ConfigError, match=re.escape("unknown setting 'server'")):
        load_config(path, KNOWN)


def test_list_for_single_valued_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ["127.0.0.1:7000", "127.0.0.1:7001"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, KNOWN)
    assert str(info.value) == f"config file {path}: 'listen' takes one value, not a list"


def test_table_for_single_valued_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'key = { path = "server.key" }\n')
    with pytest.raises(ConfigError, match=re.escape("'key' takes one value, not a dict")):
        load_config(path, KNOWN)


@pytest.mark.parametrize("value", ["80", '["*:80", 443]', "[[\"*:80\"]]", "true"])
def test_repeatable_needs_strings(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"allow = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, KNOWN)
    assert str(info.value) == f"config file {path}: 'allow' must be a string or a list of strings"


def test_key_is_the_flag_name_not_the_parameter_name(tmp_path: Path) -> None:
    # roam client's --server sets the parameter server_addr.
    known = {"server": ("server_addr", False), "forward": ("forward", True)}
    path = write(tmp_path, 'server = "127.0.0.1:7000"\nforward = "127.0.0.1:1=h:2"\n')
    assert load_config(path, known) == {"server_addr": "127.0.0.1:7000",
                                        "forward": ["127.0.0.1:1=h:2"]}
