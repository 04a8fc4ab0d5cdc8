"""A registrar's settings: its key, its database, who may look up whom."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from roam.crypto.keys import decode_public_key, load_private_key, read_text_file
from roam.errors import KeyFileError
from roam.registrar.records import ANY, Policy


@dataclass
class RegistrarConfig:
    listen: tuple[str, int]
    private_key: bytes
    db: str = ":memory:"
    policy: Policy = field(default_factory=dict)


def load_lookup_policy(path: str | os.PathLike[str]) -> Policy:
    """`ASKER TARGET` per line: public keys, or `*` for anyone (as asker) or
    anybody (as target); `#` starts a comment. Beyond these, a unit is seen
    by itself and by the keys its own registration lists."""
    name = os.fspath(path)
    policy: dict[bytes, set[bytes | None]] = {}
    text = read_text_file(path, "lookup policy file", private=False)
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise KeyFileError(f"{name} line {lineno}: expected ASKER TARGET (public keys "
                               "or *)")

        def key(text: str, what: str, lineno: int = lineno) -> bytes:
            try:
                return decode_public_key(text)
            except KeyFileError as exc:
                raise KeyFileError(f"{name} line {lineno}: {what}: {exc}") from None

        asker = ANY if fields[0] == "*" else key(fields[0], "asker")
        target = None if fields[1] == "*" else key(fields[1], "target")
        policy.setdefault(asker, set()).add(target)
    return {k: frozenset(v) for k, v in policy.items()}


def registrar_config(listen: tuple[str, int], key: str, db: str | None,
                     allow_lookup: str | None) -> RegistrarConfig:
    return RegistrarConfig(listen, load_private_key(key), db or ":memory:",
                           load_lookup_policy(allow_lookup) if allow_lookup else {})
