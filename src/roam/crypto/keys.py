"""X25519 key files, WireGuard-style.

A private key file holds one line: the base64 of the raw 32-byte private key.
Public keys are shown and stored as 44-character base64. An authorized-keys
file lists one public key per line, optionally followed by a name.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from roam.errors import KeyFileError

__all__ = [
    "KEY_LEN",
    "decode_public_key",
    "encode_key",
    "generate_private_key",
    "load_authorized_keys",
    "load_private_key",
    "public_key",
    "short_id",
    "write_private_key",
]

KEY_LEN = 32
# Far more than any key file needs; keeps a wrong path (a disk image, say)
# from being read into memory whole.
_MAX_FILE = 1 << 20


def generate_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    if len(private) != KEY_LEN:
        raise KeyFileError(f"a private key is {KEY_LEN} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def encode_key(raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise KeyFileError(f"a key is {KEY_LEN} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def _decode_key(text: str, what: str) -> bytes:
    text = text.strip()
    if not text:
        raise KeyFileError(f"{what} is empty")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # ValueError covers non-ASCII text, which b64decode refuses that way.
        raise KeyFileError(f"{what} is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise KeyFileError(f"{what} decodes to {len(raw)} bytes, expected {KEY_LEN}")
    return raw


def decode_public_key(text: str) -> bytes:
    return _decode_key(text, "public key")


def short_id(public: bytes) -> str:
    """A short, stable name for a peer in log lines."""
    return base64.b64encode(public).decode("ascii")[:8]


def write_private_key(path: str | os.PathLike[str], raw: bytes) -> None:
    """Create `path` with mode 0600 holding `raw`; never overwrites.

    Missing directories above it are made with mode 0700, as `roam keygen
    ~/.roam/client.key` needs on a machine without ~/.roam yet; existing
    ones are left as they are.
    """
    line = (encode_key(raw) + "\n").encode("ascii")
    missing: list[str] = []
    parent = os.path.dirname(os.fspath(path))
    while parent and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        try:
            # Each level by itself: os.makedirs gives only the last one the mode.
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # made meanwhile by someone else: creating the key says if it is usable
        except OSError as exc:
            raise KeyFileError(f"cannot create directory {directory} for "
                               f"{os.fspath(path)}: {exc.strerror}") from None
    try:
        # O_EXCL also refuses a symlink planted at `path`, and the mode is set
        # at creation so the key is never readable by others, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{os.fspath(path)} exists; refusing to overwrite") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {os.fspath(path)}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(line)
    except OSError as exc:
        raise KeyFileError(f"cannot write {os.fspath(path)}: {exc.strerror}") from None


def _read_file(path: str | os.PathLike[str], what: str, private: bool) -> str:
    name = os.fspath(path)
    try:
        # O_NONBLOCK so a FIFO at `path` cannot hang us; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {name} does not exist") from None
    except PermissionError:
        raise KeyFileError(f"cannot read {what} {name}: permission denied") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open {what} {name}: {exc.strerror}") from None
    try:
        # Checked on the open file so the answer is about what we read.
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise KeyFileError(f"{what} {name} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {name} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if private and mode & 0o077:
            raise KeyFileError(
                f"permissions {mode:04o} for {name} are too open; run chmod 600 {name}"
            )
        data = b""
        while len(data) <= _MAX_FILE:
            chunk = os.read(fd, _MAX_FILE + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {name}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise KeyFileError(f"{what} {name} is too large to be a key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {name} is not UTF-8 text") from None


def read_text_file(path: str | os.PathLike[str], what: str, private: bool) -> str:
    """A small UTF-8 file named `what` in errors; `private`: readable by its
    owner only (a file of secrets), else refused with the chmod to run."""
    return _read_file(path, what, private)


def load_private_key(path: str | os.PathLike[str]) -> bytes:
    name = os.fspath(path)
    lines = [ln for ln in _read_file(path, "private key file", private=True).splitlines() if ln]
    if len(lines) != 1:
        raise KeyFileError(
            f"private key file {name} must hold exactly one line, found {len(lines)}"
        )
    return _decode_key(lines[0], f"private key in {name}")


def load_authorized_keys(path: str | os.PathLike[str]) -> dict[bytes, str]:
    """Map each authorized public key to its name.

    Each line is `BASE64KEY [name]`; `#` starts a comment, blank lines are
    skipped. A key without a name is named by its `short_id`.
    """
    name = os.fspath(path)
    keys: dict[bytes, str] = {}
    first_seen: dict[bytes, int] = {}
    text = _read_file(path, "authorized keys file", private=False)
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split(None, 1)
        if not fields:
            continue
        key = _decode_key(fields[0], f"{name} line {lineno}: key")
        if key in keys:
            raise KeyFileError(
                f"{name} line {lineno}: duplicate key (already on line {first_seen[key]})"
            )
        keys[key] = fields[1].strip() if len(fields) > 1 else short_id(key)
        first_seen[key] = lineno
    return keys
