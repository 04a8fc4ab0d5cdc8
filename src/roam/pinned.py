"""`HOST:PORT,key=PUBLIC_KEY`: a unit named by where it is and the identity
it must prove there (a relay, a registrar), and the NAME of named units.

Sans-IO: parsing only.
"""

from __future__ import annotations

import re

from roam.connector.allow import parse_port, split_host_port
from roam.crypto.keys import decode_public_key
from roam.errors import ConfigError, KeyFileError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "letters, digits, '.', '_', '-'"


def is_name(text: str) -> bool:
    """A name for a relay or a server: what `via=` and `NAME/` refer to."""
    return _NAME.fullmatch(text) is not None


def parse_pinned(part: str, *, flag: str, text: str, whose: str) -> tuple[str, int, bytes]:
    """(host, port, key) from `part` (`HOST:PORT,key=PUBLIC_KEY`), a piece of
    the flag's `text`; a ConfigError names the flag, the text and the problem."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{flag} {text!r}: {problem}")

    address, comma, key_part = part.partition(",")
    if not comma or not key_part.startswith("key="):
        raise fail(f"missing key=PUBLIC_KEY (the {whose}'s identity, from roam pubkey)")
    host, port_text = split_host_port(address.strip(), f"{flag} {text!r}")
    port = parse_port(port_text, f"{flag} {text!r}")
    if port is None:
        raise fail(f"the {whose}'s address needs a port")
    try:
        key = decode_public_key(key_part[4:].strip())
    except KeyFileError as exc:
        raise fail(str(exc)) from None
    return host, port, key
