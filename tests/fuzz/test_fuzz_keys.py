"""Fuzz key decoding and key files: only KeyFileError escapes, what is
accepted is 32-byte keys, and encoded keys round-trip."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import given

from roam.crypto.keys import (
    KEY_LEN,
    decode_public_key,
    encode_key,
    load_authorized_keys,
    load_private_key,
)
from roam.errors import KeyFileError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import apply_mutations
from tests.fuzz.provider import Provider, built

WHITESPACE = [" ", "\t", "  ", "\u00a0", "\u2003", "\x0b", "\x1c"]
NEWLINES = ["\n", "\r\n", "\r", "\x85", "\u2028"]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private (mode 0600) file rewritten for every input."""
    path = tmp_path_factory.mktemp("keys") / "key"
    path.write_bytes(b"")
    os.chmod(path, 0o600)
    return path


def key_text(p: Provider) -> str:
    """A key as a person may paste it: right, nearly right, or wrong."""
    raw = base64.b64encode(p.take(p.choice([KEY_LEN, KEY_LEN, KEY_LEN - 1, KEY_LEN + 1, 0, 48])))
    text = raw.decode("ascii")
    match p.below(6):
        case 0:
            text = text.rstrip("=")
        case 1:
            text = apply_mutations(raw, p.blob(8)).decode("latin-1")
        case 2:
            text = text.replace("+", "-").replace("/", "_")  # the URL-safe alphabet
        case 3:
            text = p.choice(WHITESPACE) + text + p.choice(WHITESPACE)
    return text


def build_authorized(p: Provider) -> bytes:
    lines = []
    for _ in range(p.below(5)):
        match p.below(5):
            case 0:
                lines.append("# " + p.text(8))
            case 1:
                lines.append(p.choice(WHITESPACE) * p.below(2))
            case _:
                line = key_text(p)
                if p.flag():
                    line += p.choice(WHITESPACE) + p.text(8)
                if p.flag():
                    line += " # " + p.text(5)
                lines.append(line)
    if lines and p.below(4) == 0:
        lines.append(lines[0])  # the same key twice
    data = p.choice(NEWLINES).join(lines).encode("utf-8", "surrogatepass")
    return apply_mutations(data, p.blob(8)) if p.below(4) == 0 else data


@fuzz_settings(0.5)
@given(built(lambda p: key_text(p) if p.flag() else p.text(50)))
def test_decoding_public_keys_raises_only_key_file_error(text: str) -> None:
    try:
        key = decode_public_key(text)
    except KeyFileError:
        return
    assert len(key) == KEY_LEN
    # Not `encode_key(key) == text.strip()`: base64 ignores the unused low
    # bits of the last character, so several spellings give one key.
    assert decode_public_key(encode_key(key)) == key


@fuzz_settings(0.2)
@given(built(lambda p: p.take(KEY_LEN)))
def test_keys_round_trip(raw: bytes) -> None:
    assert decode_public_key(encode_key(raw)) == raw


@fuzz_settings(0.3)
@given(built(lambda p: p.blob(200) if p.below(4) == 0 else build_authorized(p)))
def test_authorized_keys_files_raise_only_key_file_error(key_file: Path, data: bytes) -> None:
    key_file.write_bytes(data)
    try:
        keys = load_authorized_keys(key_file)
    except KeyFileError as exc:
        message = str(exc)
    else:
        for key, name in keys.items():
            assert len(key) == KEY_LEN
            assert name
            assert name == name.strip()
        return
    assert str(key_file) in message  # a person learns which file is wrong


@fuzz_settings(0.3)
@given(built(lambda p: p.blob(80) if p.below(4) == 0 else (
    p.choice(NEWLINES) * p.below(2) + key_text(p) + p.choice(NEWLINES) * p.below(3)
).encode("utf-8", "surrogatepass")))
def test_private_key_files_raise_only_key_file_error(key_file: Path, data: bytes) -> None:
    key_file.write_bytes(data)
    try:
        key = load_private_key(key_file)
    except KeyFileError as exc:
        message = str(exc)
    else:
        assert len(key) == KEY_LEN
        return
    assert str(key_file) in message
