"""What units and the registrar say to each other, inside the Noise channel.

    register  {"op": "register", "stamp": NS, "expires": S, "addresses": [...],
               "relays": [...], "visible_to": [...]}
    lookup    {"op": "lookup", "target": PUBLIC_KEY}
    answers   {"ok": true, ...} or {"ok": false, "code": CODE, "reason": TEXT}

JSON, because every message is small and only an authenticated unit's
message is ever parsed (the Noise handshake before it proved the sender's
key); still every field is checked for type, count and size, and anything
else is a ProtocolError that names the field. Sans-IO.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from roam.connector.allow import parse_port, split_host_port
from roam.crypto.keys import decode_public_key, encode_key
from roam.errors import ConfigError, KeyFileError, ProtocolError

# A unit's addresses: its interfaces' addresses and an advertised one or two;
# sixteen covers a host with several networks and both address families.
MAX_ADDRESSES = 16
MAX_RELAYS = 8  # as roam.relay.route.MAX_HOPS: the relays a unit can be reached through
# Who may look a unit up: a server lists its clients' keys; a thousand
# clients per server fit in one message (47 bytes each, base64 and quotes).
MAX_VISIBLE_TO = 1024
MAX_TEXT = 300  # one address or relay, as written on a command line
# A registration lives at most an hour; units refresh well before (at half).
MAX_EXPIRES_S = 3600


class Code(StrEnum):
    """Why the registrar refused: the wire codes of its answers."""

    BAD_REQUEST = "BAD_REQUEST"
    REPLAYED = "REPLAYED"
    CLOCK = "CLOCK"
    FULL = "FULL"
    NOT_FOUND = "NOT_FOUND"
    # The registrar cannot reach its records (a shared Redis that is down):
    # nothing was decided; the unit asks its next registrar, or again later.
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Register:
    stamp_ns: int
    expires_s: int
    addresses: tuple[str, ...]
    relays: tuple[str, ...] = ()
    visible_to: frozenset[bytes] = frozenset()

    def encode(self) -> bytes:
        return _dump({"op": "register", "stamp": self.stamp_ns, "expires": self.expires_s,
                      "addresses": list(self.addresses), "relays": list(self.relays),
                      "visible_to": sorted(encode_key(k) for k in self.visible_to)})


@dataclass(frozen=True, slots=True)
class Lookup:
    target: bytes

    def encode(self) -> bytes:
        return _dump({"op": "lookup", "target": encode_key(self.target)})


Request = Register | Lookup


@dataclass(frozen=True, slots=True)
class Registered:
    expires_s: int

    def encode(self) -> bytes:
        return _dump({"ok": True, "expires": self.expires_s})


@dataclass(frozen=True, slots=True)
class Found:
    addresses: tuple[str, ...]
    relays: tuple[str, ...]
    expires_in_s: float

    def encode(self) -> bytes:
        return _dump({"ok": True, "addresses": list(self.addresses),
                      "relays": list(self.relays), "expires_in": round(self.expires_in_s, 1)})


@dataclass(frozen=True, slots=True)
class Refused:
    code: Code
    reason: str

    def encode(self) -> bytes:
        return _dump({"ok": False, "code": self.code.value, "reason": self.reason[:MAX_TEXT]})


Answer = Registered | Found | Refused


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"{what} is not JSON text") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return obj


def _int(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"{key!r} must be a whole number from {low} to {high}")
    return value


def _texts(obj: dict[str, Any], key: str, most: int) -> list[str]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > most:
        raise ProtocolError(f"{key!r} must be a list of at most {most}")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT for v in value):
        raise ProtocolError(f"each of {key!r} must be text of 1 to {MAX_TEXT} characters")
    return value


def check_address(text: str) -> str:
    """`host:port` or `[v6]:port`, with a real port; a ProtocolError otherwise."""
    try:
        host, port = split_host_port(text, "address")
        if not host or parse_port(port, "address") is None:
            raise ConfigError("no port")
    except ConfigError as exc:
        raise ProtocolError(f"address {text!r}: {exc}") from None
    return text


def _key(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what} must be a public key (base64 text)")
    try:
        return decode_public_key(text)
    except KeyFileError as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def decode_request(data: bytes) -> Request:
    obj = _load(data, "request")
    op = obj.get("op")
    if op == "lookup":
        return Lookup(_key(obj.get("target"), "'target'"))
    if op == "register":
        addresses = tuple(check_address(a) for a in _texts(obj, "addresses", MAX_ADDRESSES))
        relays = tuple(_texts(obj, "relays", MAX_RELAYS))
        visible = frozenset(_key(k, "each of 'visible_to'")
                            for k in _texts(obj, "visible_to", MAX_VISIBLE_TO))
        return Register(_int(obj, "stamp", 0, 2**63 - 1), _int(obj, "expires", 1, MAX_EXPIRES_S),
                        addresses, relays, visible)
    raise ProtocolError(f"unknown request {op!r} (known: register, lookup)")


def decode_answer(data: bytes) -> Answer:
    obj = _load(data, "answer")
    if obj.get("ok") is True:
        if "expires" in obj:
            return Registered(_int(obj, "expires", 1, MAX_EXPIRES_S))
        addresses = tuple(check_address(a) for a in _texts(obj, "addresses", MAX_ADDRESSES))
        expires_in = obj.get("expires_in")
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            raise ProtocolError("'expires_in' must be a number")
        return Found(addresses, tuple(_texts(obj, "relays", MAX_RELAYS)), float(expires_in))
    if obj.get("ok") is False:
        try:
            code = Code(str(obj.get("code")))
        except ValueError:
            raise ProtocolError(f"unknown refusal code {obj.get('code')!r}") from None
        reason = obj.get("reason")
        if not isinstance(reason, str):
            raise ProtocolError("'reason' must be text")
        return Refused(code, reason[:MAX_TEXT])
    raise ProtocolError("an answer needs 'ok': true or false")
