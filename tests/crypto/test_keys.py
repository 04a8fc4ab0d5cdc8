from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from roam.crypto.keys import (
    decode_public_key,
    encode_key,
    generate_private_key,
    load_authorized_keys,
    load_private_key,
    public_key,
    short_id,
    write_private_key,
)
from roam.errors import KeyFileError

PUB_A = public_key(bytes(range(32)))
PUB_B = public_key(bytes(range(1, 33)))
B64_A = encode_key(PUB_A)
B64_B = encode_key(PUB_B)


def test_generate_and_derive() -> None:
    private = generate_private_key()
    assert len(private) == 32
    assert len(public_key(private)) == 32
    assert public_key(private) == public_key(private)
    assert generate_private_key() != private


def test_public_key_rejects_wrong_length() -> None:
    with pytest.raises(KeyFileError, match="32 bytes, got 31"):
        public_key(bytes(31))


def test_encode_decode_round_trip() -> None:
    text = encode_key(PUB_A)
    assert len(text) == 44
    assert decode_public_key(text) == PUB_A
    assert decode_public_key(f"  {text}\n") == PUB_A


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("not base64!!", "not valid base64"),
        ("AAAA====AAAA", "not valid base64"),
        ("clé", "not valid base64"),
        (base64.b64encode(bytes(16)).decode(), "decodes to 16 bytes, expected 32"),
        (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes, expected 32"),
    ],
)
def test_decode_public_key_errors(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError, match=problem):
        decode_public_key(text)


def test_short_id() -> None:
    assert short_id(PUB_A) == B64_A[:8]


def test_private_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "key"
    private = generate_private_key()
    write_private_key(path, private)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == encode_key(private) + "\n"
    assert load_private_key(path) == private
    assert load_private_key(str(path)) == private


def test_write_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("precious\n")
    with pytest.raises(KeyFileError, match="exists; refusing to overwrite"):
        write_private_key(path, generate_private_key())
    assert path.read_text() == "precious\n"


def test_write_refuses_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_private_key(tmp_path / "link", generate_private_key())
    assert not target.exists()


def test_write_into_missing_directories_makes_them_private(tmp_path: Path) -> None:
    # `roam keygen ~/.roam/client.key` on a machine where ~/.roam is not there yet.
    path = tmp_path / "home" / ".roam" / "client.key"
    private = generate_private_key()
    write_private_key(path, private)
    assert load_private_key(path) == private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for made in (tmp_path / "home", tmp_path / "home" / ".roam"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made


def test_write_leaves_existing_directories_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    write_private_key(tmp_path / "key", generate_private_key())
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_write_below_a_file_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(KeyFileError, match=f"cannot create {tmp_path / 'file' / 'key'}: "
                                           "Not a directory"):
        write_private_key(tmp_path / "file" / "key", generate_private_key())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_too_open_permissions(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    write_private_key(path, generate_private_key())
    path.chmod(mode)
    expected = f"permissions {mode:04o} for {path} are too open; run chmod 600 {path}"
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert str(info.value) == expected


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "key"
    private = generate_private_key()
    write_private_key(path, private)
    path.chmod(0o400)
    assert load_private_key(path) == private


def test_missing_private_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_private_key(tmp_path / "absent")


def test_private_key_path_is_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is a directory"):
        load_private_key(tmp_path)


def test_private_key_path_is_fifo(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_private_key(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files whatever their mode")
def test_unreadable_private_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_private_key(path, generate_private_key())
    path.chmod(0o000)
    with pytest.raises(KeyFileError, match="permission denied"):
        load_private_key(path)


def _private_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "exactly one line, found 0"),
        (b"\n\n", "exactly one line, found 0"),
        (f"{B64_A}\n{B64_B}\n".encode(), "exactly one line, found 2"),
        (b"garbage!\n", "not valid base64"),
        (base64.b64encode(bytes(31)) + b"\n", "decodes to 31 bytes, expected 32"),
        (b"\xff\xfe\n", "not UTF-8"),
    ],
)
def test_malformed_private_key(tmp_path: Path, content: bytes, problem: str) -> None:
    path = _private_file(tmp_path, content)
    with pytest.raises(KeyFileError, match=problem) as info:
        load_private_key(path)
    assert str(path) in str(info.value)


def test_private_key_without_trailing_newline(tmp_path: Path) -> None:
    private = generate_private_key()
    assert load_private_key(_private_file(tmp_path, encode_key(private).encode())) == private


def test_authorized_keys_comments_and_names(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(
        "# roam authorized keys\n"
        "\n"
        f"{B64_A} alice-laptop   # added 2024\n"
        "   # indented comment\n"
        f"  {B64_B}\t\n"
    )
    assert load_authorized_keys(path) == {PUB_A: "alice-laptop", PUB_B: B64_B[:8]}


def test_authorized_keys_name_with_spaces(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(f"{B64_A} Alice's phone\n")
    assert load_authorized_keys(path) == {PUB_A: "Alice's phone"}


def test_authorized_keys_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text("# nobody yet\n")
    assert load_authorized_keys(path) == {}


def test_authorized_keys_may_be_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(f"{B64_A}\n")
    path.chmod(0o644)
    assert PUB_A in load_authorized_keys(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not-a-key bob", "not valid base64"),
        (base64.b64encode(bytes(20)).decode(), "decodes to 20 bytes, expected 32"),
        (f"{B64_A} again", "duplicate key \\(already on line 2\\)"),
    ],
)
def test_authorized_keys_errors_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(f"# header\n{B64_A} alice\n\n{line}\n")
    with pytest.raises(KeyFileError, match=problem) as info:
        load_authorized_keys(path)
    assert f"{path} line 4" in str(info.value)


def test_authorized_keys_missing_or_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_authorized_keys(tmp_path / "absent")
    with pytest.raises(KeyFileError, match="is a directory"):
        load_authorized_keys(tmp_path)
