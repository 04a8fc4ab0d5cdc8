"""A client's servers: one, or several named ones, each pinned by its identity.

    --server HOST:PORT --server-key PUBLIC_KEY            (one server)
    --server office=HOST:PORT,key=PUBLIC_KEY \\
    --server lab=HOST:PORT,key=PUBLIC_KEY                 (several; the first is the default)

A forward names the server it goes to (`--forward 127.0.0.1:5432=lab/db:5432`);
one without a name goes to the first. HOST:PORT is where direct paths
connect, and the address the last relay dials when the server keeps no uplink
on it: the client itself may never be able to reach it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from roam.connector.allow import format_host_port, parse_port, split_host_port
from roam.crypto.keys import decode_public_key
from roam.errors import ConfigError, KeyFileError
from roam.pinned import NAME_RULE, is_name

DEFAULT_NAME = "server"  # what an unnamed --server is called in status and logs


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    host: str
    port: int
    key: bytes

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)


def is_server_name(text: str) -> bool:
    return is_name(text)


def parse_server(text: str, server_key: str | None) -> ServerSpec:
    """`HOST:PORT` (its key from --server-key) or `NAME=HOST:PORT,key=PUBLIC_KEY`."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"--server {text!r}: {problem}")

    # A key (base64) may hold '=': only the part before the first comma names.
    named, comma, key_part = text.partition(",")
    name, eq, address = named.partition("=")
    if eq:
        name = name.strip()
        if not is_server_name(name):
            raise fail(f"expected NAME=HOST:PORT,key=PUBLIC_KEY (NAME: {NAME_RULE})")
    else:
        name, address = DEFAULT_NAME, named
    if comma:
        if not key_part.startswith("key="):
            raise fail(f"unknown option {key_part!r}: the one option is key=PUBLIC_KEY")
        key_text, flag = key_part[4:].strip(), "key="
    elif server_key is not None:
        key_text, flag = server_key, "--server-key"
    else:
        raise fail("no key: give key=PUBLIC_KEY (the server's identity, from roam pubkey) "
                   "or --server-key")
    host, port_text = split_host_port(address.strip(), "--server")
    port = parse_port(port_text, "--server")
    if port is None or port == 0:
        raise fail("the server's address needs a port")
    try:
        key = decode_public_key(key_text)
    except KeyFileError as exc:
        raise fail(f"{flag}: {exc}") from None
    return ServerSpec(name, host, port, key)


def parse_servers(texts: Sequence[str], server_key: str | None) -> list[ServerSpec]:
    """Every --server, in order (the first is the default); names are unique."""
    if not texts:
        raise ConfigError("--server is needed: where the server is (HOST:PORT), or --server-key "
                          "with --registrar to look it up")
    servers: list[ServerSpec] = []
    for text in texts:
        spec = parse_server(text, server_key)
        if any(s.name == spec.name for s in servers):
            raise ConfigError(
                f"--server {text!r}: a server named {spec.name!r} is already given"
                + (" (give each of several servers a name: NAME=HOST:PORT,key=...)"
                   if spec.name == DEFAULT_NAME else ""))
        servers.append(spec)
    return servers


def server_for(servers: Sequence[ServerSpec], name: str | None, what: str) -> ServerSpec:
    """The server a forward names (None: the first); a ConfigError lists the names."""
    if name is None:
        return servers[0]
    for spec in servers:
        if spec.name == name:
            return spec
    raise ConfigError(f"{what}: no server named {name!r}; the servers are "
                      f"{', '.join(s.name for s in servers)}")
