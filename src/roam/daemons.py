"""The server and client daemons: settings in, running session layer out.

Each prints one line per listening socket on stdout once it is ready
(`listening HOST:PORT`, `forward HOST:PORT=DEST:PORT`), so scripts and tests
that pass port 0 learn the real port.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from roam.connector.allow import AccessList, format_host_port, parse_port, split_host_port
from roam.connector.connector import Connector
from roam.core.preamble import Suite
from roam.core.session import SessionConfig
from roam.crypto.cpu import default_cipher
from roam.crypto.keys import decode_public_key, load_authorized_keys, load_private_key
from roam.errors import ConfigError, KeyFileError, TransportError
from roam.interfaces.forward import Forward, ForwardSpec
from roam.transport.client import BACKOFF, Client, ClientConfig
from roam.transport.server import Server, ServerConfig

log = logging.getLogger("roam")


def _address(text: str, flag: str) -> tuple[str, int]:
    host, port_text = split_host_port(text, flag)
    port = 0 if port_text == "0" else parse_port(port_text, f"{flag} {text!r}")
    if port is None:
        raise ConfigError(f"{flag} {text!r}: a port is needed")
    return host, port


def _ready(line: str) -> None:
    print(line, flush=True)


async def run_server(listen: str, key: str, authorized_keys: str, allow: list[str],
                     linger: float) -> int:
    host, port = _address(listen, "--listen")
    private = load_private_key(key)
    authorized = load_authorized_keys(authorized_keys)
    if not authorized:
        log.warning("%s lists no keys: every client will be refused", authorized_keys)
    access = AccessList.parse(allow)
    if not access.rules:
        log.warning("no --allow rule: every destination will be refused")
    server = Server(ServerConfig(host, port, private, authorized, Connector(access),
                                 SessionConfig(detached_timeout=linger)))
    try:
        bound = await server.start()
    except OSError as exc:
        raise ConfigError(f"--listen {listen!r}: {exc.strerror or exc}") from None
    _ready(f"listening {format_host_port(bound[0], bound[1])}")
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()
    return 0


async def run_client(server: str, server_key: str, key: str, forwards: list[str],
                     cipher: str) -> int:
    host, port = _address(server, "--server")
    try:
        pinned = decode_public_key(server_key)
    except KeyFileError as exc:
        raise ConfigError(f"--server-key: {exc}") from None
    private = load_private_key(key)
    specs = [ForwardSpec.parse(f) for f in forwards]
    if not specs:
        log.warning("no --forward given: the session will carry nothing")
    name = default_cipher() if cipher == "auto" else {"aesgcm": "AESGCM",
                                                       "chachapoly": "ChaChaPoly"}[cipher]
    suite = Suite.AESGCM_SHA256 if name == "AESGCM" else Suite.CHACHAPOLY_BLAKE2S
    client = Client(ClientConfig(host, port, pinned, private, SessionConfig(), suite))
    attempt = 0
    while True:
        try:
            await client.handshake()
            break
        except TransportError as exc:
            # The server may not be up yet: keep trying, as a daemon should.
            delay = BACKOFF[min(attempt + 2, len(BACKOFF) - 1)]
            log.warning("%s; retrying in %.1f s", exc, delay)
            attempt += 1
            await asyncio.sleep(delay)
    started = [Forward(spec, lambda: client.driver) for spec in specs]
    try:
        for fwd in started:
            lhost, lport = await fwd.start()
            _ready(f"forward {format_host_port(lhost, lport)}="
                   f"{format_host_port(fwd.spec.dest_host, fwd.spec.dest_port)}")
        await client.stopped.wait()
        print("roam client: stopped: the session cannot continue", file=sys.stderr)
        return 1
    finally:
        for fwd in started:
            fwd.close()
        client.stop()
        await asyncio.sleep(0.05)  # the CLOSE frame leaves before the loop ends
