"""roam's command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from roam.config import load_config
from roam.errors import ConfigError, HandshakeError, KeyFileError, RoamError

log = logging.getLogger("roam")


def _setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s roam-{role} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is None:
            return
        known = {opt[2:]: (p.name, bool(getattr(p, "multiple", False)))
                 for p in ctx.command.params if p.name
                 for opt in getattr(p, "opts", []) if opt.startswith("--")}
        try:
            ctx.default_map = load_config(value, known)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True,
                        expose_value=False, callback=callback,
                        help="Read settings from a TOML file (keys are the flag names).")(f)


def _run(role: str, main: Coroutine[Any, Any, int]) -> None:
    """Run a daemon's coroutine; SIGTERM/SIGINT cancel it cleanly."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("no task")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await main
        except asyncio.CancelledError:
            log.info("stopping on signal")
            return 0

    try:
        code = asyncio.run(runner())
    except (ConfigError, HandshakeError) as exc:
        click.echo(f"roam {role}: error: {exc}", err=True)
        sys.exit(1)
    except RoamError as exc:
        click.echo(f"roam {role}: error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="roam")
def main() -> None:
    """roam keeps applications' TCP connections alive while the network under them changes."""


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Write a new private key to PATH (mode 0600); print only its public key."""
    from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key

    key = generate_private_key()
    try:
        write_private_key(path, key)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(encode_key(public_key(key)))


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
def pubkey(path: str) -> None:
    """Print the public key of the private key in PATH."""
    from roam.crypto.keys import encode_key, load_private_key, public_key

    try:
        click.echo(encode_key(public_key(load_private_key(path))))
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


_log_level = click.option("--log-level", default="info", show_default=True,
                          type=click.Choice(["debug", "info", "warning", "error"]))


@main.command()
@_config_option
@click.option("--listen", required=True, metavar="HOST:PORT", help="Address for transports.")
@click.option("--key", required=True, type=click.Path(dir_okay=False),
              help="This server's private key file.")
@click.option("--authorized-keys", required=True, type=click.Path(dir_okay=False),
              help="Client public keys allowed in, one per line.")
@click.option("--allow", multiple=True, metavar="HOST:PORT",
              help="Destination the server may open (repeatable; HOST may be *, a CIDR, "
                   "a name or *.suffix; PORT may be *). Default: none.")
@click.option("--linger", default=900.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds a session without transport waits for its client to resume.")
@_log_level
def server(listen: str, key: str, authorized_keys: str, allow: tuple[str, ...], linger: float,
           log_level: str) -> None:
    """Run the server daemon beside the services."""
    from roam.daemons import run_server

    _setup_logging(log_level, "server")
    _run("server", run_server(listen, key, authorized_keys, list(allow), linger))


@main.command()
@_config_option
@click.option("--server", "server_addr", required=True, metavar="HOST:PORT",
              help="The roam server's address.")
@click.option("--server-key", required=True, metavar="PUBKEY",
              help="The server's public key (base64), pinned.")
@click.option("--key", required=True, type=click.Path(dir_okay=False),
              help="This client's private key file.")
@click.option("--forward", multiple=True, metavar="LHOST:LPORT=RHOST:RPORT",
              help="Carry connections to LHOST:LPORT to RHOST:RPORT beside the server "
                   "(repeatable).")
@click.option("--cipher", type=click.Choice(["auto", "aesgcm", "chachapoly"]), default="auto",
              show_default=True, help="AEAD: auto picks AES-GCM where the CPU has AES "
                                      "instructions.")
@_log_level
def client(server_addr: str, server_key: str, key: str, forward: tuple[str, ...], cipher: str,
           log_level: str) -> None:
    """Run the client daemon on the mobile unit."""
    from roam.daemons import run_client

    _setup_logging(log_level, "client")
    _run("client", run_client(server_addr, server_key, key, list(forward), cipher))


@main.command()
@click.option("--duration", default=12.0, show_default=True, type=click.FloatRange(min=4),
              help="Seconds of traffic.")
def demo(duration: float) -> None:
    """Run a server, a client, an application and a breaking link on loopback."""
    from roam.demo import run_demo

    sys.exit(asyncio.run(run_demo(duration)))


if __name__ == "__main__":
    main()
