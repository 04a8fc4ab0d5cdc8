"""Fuzz `load_config` on arbitrary files: only ConfigError escapes, what it
accepts has the shape click expects, and valid settings round-trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given

from roam.config import load_config
from roam.errors import ConfigError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import apply_mutations
from tests.fuzz.provider import Provider, built

KNOWN: dict[str, tuple[str, bool]] = {
    "config": ("config", False),
    "listen": ("listen", False),
    "key": ("key", False),
    "authorized-keys": ("authorized_keys", False),
    "allow": ("allow", True),
    "forward": ("forward", True),
    "linger": ("linger", False),
    "no-udp": ("no_udp", False),
}
KEYS = [*KNOWN, "authorized_keys", "no_udp", "unknown", '"quoted key"', "a.b", "ALLOW", ""]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One file rewritten for every input: tmp_path is per test, not per input.
    return tmp_path_factory.mktemp("config") / "roam.toml"


def toml_str(text: str) -> str:
    """`text` as a TOML basic string: quotes, backslashes and control
    characters escaped (TOML 1.0, "String"), everything else as it is."""
    escaped = "".join(f"\\u{ord(c):04x}" if c in '"\\' or ord(c) < 0x20 or c == "\x7f"
                      else c for c in text)
    return f'"{escaped}"'


def toml_literal(value: str | int | bool | list[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_str(v) for v in value) + "]"
    return toml_str(value)


def toml_string(p: Provider) -> str:
    return toml_str(p.text(12))


def toml_value(p: Provider, depth: int = 0) -> str:
    match p.below(10 if depth < 3 else 7):
        case 0 | 1:
            return toml_string(p)
        case 2:
            return p.choice(["0", "-1", "+7", "0x_1F", "1_000", "9" * 30, "1e400", "nan", "-inf",
                             "3.14", "0o17", "0b101"])
        case 3:
            return p.choice(["true", "false", "1979-05-27T07:32:00Z", "07:32:00", "1979-05-27"])
        case 4:
            return "'" + p.text(10).replace("'", "").replace("\n", "") + "'"
        case 5:
            # Thousands of digits (int() refuses over 4300) or deep nesting
            # (recursion in the parser): limits below the TOML grammar.
            return p.choice(["1" * (4000 + p.below(1000)), "[" * 400 + "]" * 400,
                             "{a=" * 400 + "1" + "}" * 400])
        case 6:
            return p.choice(["", "[", "{", "\"unterminated", "= 1", "'''", "1 2"])
        case 7 | 8:
            return "[" + ", ".join(toml_value(p, depth + 1) for _ in range(p.below(4))) + "]"
        case _:
            return "{" + ", ".join(f"{p.choice(KEYS) or 'k'} = {toml_value(p, depth + 1)}"
                                   for _ in range(p.below(3))) + "}"


def build_toml(p: Provider) -> bytes:
    lines = []
    for _ in range(p.below(6)):
        match p.below(6):
            case 0:
                lines.append(f"[{p.choice(KEYS) or 'table'}]")
            case 1:
                lines.append("# " + p.text(10))
            case _:
                lines.append(f"{p.choice(KEYS)} = {toml_value(p)}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def loads_or_config_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        settings = load_config(str(path), KNOWN)
    except ConfigError as exc:
        message = str(exc)
    else:
        check_shape(settings)
        return
    assert str(path) in message  # the message names the file


def check_shape(settings: dict[str, Any]) -> None:
    """Each value is what click's default_map takes for its parameter."""
    dests = {dest: repeatable for dest, repeatable in KNOWN.values()}
    for dest, value in settings.items():
        assert dest in dests
        assert dest != "config"
        if dests[dest]:
            assert isinstance(value, list)
            assert all(isinstance(v, str) for v in value)
        else:
            assert not isinstance(value, list | dict)


@fuzz_settings(0.3)
@given(built(lambda p: p.blob(200)))
def test_random_bytes_raise_only_config_error(config_file: Path, data: bytes) -> None:
    loads_or_config_error(config_file, data)


@fuzz_settings(0.5)
@given(built(lambda p: build_toml(p) if p.below(3) else apply_mutations(build_toml(p),
                                                                          p.blob(16))))
# An integer of 4301 digits: tomllib let int()'s ValueError through.
@example(b"linger = " + b"1" * 4301)
# Arrays nested past the recursion limit: tomllib raised RecursionError.
@example(b"allow = " + b"[" * 2000 + b"]" * 2000)
@example(b"key = " + b"{a=" * 1000 + b"1" + b"}" * 1000)
def test_toml_raises_only_config_error(config_file: Path, data: bytes) -> None:
    loads_or_config_error(config_file, data)


def build_settings(p: Provider) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name, (_, repeatable) in KNOWN.items():
        if name == "config" or not p.flag():
            continue
        if repeatable:
            settings[name] = [p.text(10) for _ in range(p.below(3))]
        else:
            settings[name] = p.choice([p.text(10), p.uint(63), p.flag()])
    return settings


@fuzz_settings(0.2)
@given(built(build_settings))
def test_valid_settings_round_trip(config_file: Path, settings: dict[str, Any]) -> None:
    text = "".join(f"{name} = {toml_literal(value)}\n" for name, value in settings.items())
    config_file.write_text(text, encoding="utf-8")
    assert load_config(str(config_file), KNOWN) == {
        KNOWN[name][0]: value for name, value in settings.items()}
