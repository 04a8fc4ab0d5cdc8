"""A relay's settings, from its command line and files, checked before it listens."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field

from roam.connector.allow import AccessList, format_host_port, split_host_port
from roam.crypto.keys import (
    decode_public_key,
    load_authorized_keys,
    load_private_key,
    read_text_file,
    short_id,
)
from roam.errors import ConfigError, KeyFileError
from roam.relay.admission import MIN_TOTP_SECRET


@dataclass
class RelayConfig:
    listen: tuple[str, int]
    private_key: bytes
    admit_keys: dict[bytes, str] = field(default_factory=dict)
    admit_totp: dict[bytes, bytes] = field(default_factory=dict)
    admit_any: bool = False
    # Where the relay may dial for a client (the next relay, or a server
    # without an uplink here): None dials wherever an admitted client asks.
    dial_allow: AccessList | None = None
    # A fleet's shared directory (roam.relay.fleet): a Redis URL, and the
    # address the fleet's other relays dial this one at.
    directory: str | None = None
    fleet_address: str | None = None


def load_totp_secrets(path: str | os.PathLike[str]) -> dict[bytes, bytes]:
    """Each line `PUBLIC_KEY BASE32_SECRET [name]` (as authenticator apps show
    secrets); `#` starts a comment. The file holds secrets: mode 600."""
    name = os.fspath(path)
    text = read_text_file(path, "TOTP secrets file", private=True)
    secrets: dict[bytes, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2:
            raise KeyFileError(f"{name} line {lineno}: expected PUBLIC_KEY BASE32_SECRET")
        try:
            identity = decode_public_key(fields[0])
        except KeyFileError as exc:
            raise KeyFileError(f"{name} line {lineno}: {exc}") from None
        secret = _base32_secret(fields[1], f"{name} line {lineno}")
        if identity in secrets:
            raise KeyFileError(f"{name} line {lineno}: a second secret for "
                               f"{short_id(identity)}")
        secrets[identity] = secret
    return secrets


def relay_config(listen: tuple[str, int], key: str, admit_keys: str | None,
                 admit_totp: str | None, admit: str | None,
                 dial_allow: list[str] | None = None, directory: str | None = None,
                 fleet_address: str | None = None) -> RelayConfig:
    if admit not in (None, "any"):
        raise ConfigError(f"--admit {admit!r}: the only value is 'any' (admit every identity)")
    config = RelayConfig(listen, load_private_key(key), admit_any=admit == "any",
                         dial_allow=(AccessList.parse(dial_allow, "--dial-allow")
                                     if dial_allow else None))
    if admit_keys is not None:
        config.admit_keys = load_authorized_keys(admit_keys)
    if admit_totp is not None:
        config.admit_totp = load_totp_secrets(admit_totp)
    if not (config.admit_keys or config.admit_totp or config.admit_any):
        raise ConfigError("the relay would admit nobody: give --admit-keys, --admit-totp, "
                          "or --admit any")
    if fleet_address is not None and directory is None:
        raise ConfigError("--fleet-address is for a relay of a fleet: give --directory too")
    if directory is not None:
        from roam.relay.fleet import check_directory  # the Redis client only for a fleet

        check_directory(directory)
        config.directory = directory
        config.fleet_address = _fleet_address(fleet_address, listen)
    return config


def _fleet_address(given: str | None, listen: tuple[str, int]) -> str:
    """Where the fleet's other relays dial this one: --fleet-address, else
    the listen address when it names one host (not a wildcard, not port 0)."""
    if given is None:
        host, port = listen
        if host in ("", "0.0.0.0", "::") or port == 0:
            raise ConfigError("a relay of a fleet listening on "
                              f"{format_host_port(host, port)} needs --fleet-address "
                              "HOST:PORT: where the fleet's other relays reach it")
        return format_host_port(host, port)
    try:
        host, port_text = split_host_port(given, "--fleet-address")
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--fleet-address {given!r}: expected HOST:PORT") from None
    if not host or not 0 < port < 65536 or len(given.encode()) > 255:
        raise ConfigError(f"--fleet-address {given!r}: expected HOST:PORT (port 1-65535)")
    return format_host_port(host, port)


def load_otp_secret(path: str | os.PathLike[str]) -> bytes:
    """A client's TOTP secret for relays: one base32 line (mode 600)."""
    name = os.fspath(path)
    lines = [ln.strip() for ln in read_text_file(path, "one-time code secret file",
                                                 private=True).splitlines() if ln.strip()]
    if len(lines) != 1:
        raise KeyFileError(f"{name} must hold one base32 secret on one line, "
                           f"found {len(lines)} lines")
    return _base32_secret(lines[0].replace(" ", ""), name)


def _base32_secret(text: str, where: str) -> bytes:
    """A TOTP secret as authenticator apps show it: base32, any case, dashes
    and padding optional; at least MIN_TOTP_SECRET bytes."""
    raw = text.upper().replace("-", "")
    try:
        secret = base64.b32decode(raw + "=" * (-len(raw) % 8))
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: the secret is not base32") from None
    if len(secret) < MIN_TOTP_SECRET:
        raise KeyFileError(f"{where}: the secret is {len(secret) * 8} bits; at least "
                           f"{MIN_TOTP_SECRET * 8}")
    return secret
