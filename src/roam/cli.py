"""roam's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from roam.config import load_config
from roam.core.compress import CompressionMode
from roam.errors import ConfigError, HandshakeError, KeyFileError, RoamError
from roam.eventloop import DEFAULT as DEFAULT_LOOP
from roam.eventloop import EVENT_LOOPS, loop_factory

log = logging.getLogger("roam")


def _setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s roam-{role} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


class _FilePath(click.Path[str]):
    """A file's path, with a leading `~` or `~user` expanded as a shell would.

    The shell leaves `~` alone in `--key=~/x` and never sees a --config file,
    whose values click passes through this same type as defaults: one type for
    every path option expands them all alike, wherever they were written.
    """

    def __init__(self) -> None:
        super().__init__(dir_okay=False)

    def convert(self, value: str | os.PathLike[str], param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        return super().convert(os.path.expanduser(value), param, ctx)


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

    return click.option("--config", type=_FilePath(), is_eager=True,
                        expose_value=False, callback=callback,
                        help="Read settings from a TOML file (keys are the flag names).")(f)


def _run(role: str, main: Coroutine[Any, Any, int], event_loop: str) -> None:
    """Run a daemon's coroutine on `event_loop`; SIGTERM/SIGINT cancel it cleanly."""

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
        with asyncio.Runner(loop_factory=loop_factory(event_loop)) as loop_runner:
            code = loop_runner.run(runner())
    except (ConfigError, HandshakeError) as exc:
        click.echo(f"roam {role}: error: {exc}", err=True)
        sys.exit(1)
    except RoamError as exc:
        click.echo(f"roam {role}: error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


# One example per command, shown by its --help: what a person types first.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "keygen": ("roam keygen ~/.config/roam/client.key",),
    "pubkey": ("roam pubkey ~/.config/roam/client.key >> authorized_keys",),
    "server": ("roam server --listen 0.0.0.0:4433 --key server.key",
               "--authorized-keys authorized_keys --allow db.internal:5432"),
    "relay": ("roam relay --listen 0.0.0.0:4434 --key relay.key --admit-keys admitted",),
    "registrar": ("roam registrar --listen 0.0.0.0:4440 --key registrar.key",
                  "--db registrar.db"),
    "lookup": ("roam lookup SERVER_PUB --key client.key",
               "--registrar 198.51.100.9:4440,key=REGISTRAR_PUB"),
    "client": ("roam client --server 198.51.100.7:4433 --server-key SERVER_PUB",
               "--key client.key --forward 127.0.0.1:5432=db.internal:5432",
               "--path wifi:dev=wlan0 --path cell:dev=wwan0,priority=200"),
    "status": ("roam status --server --json",),
    "link": ("roam link wifi down",),
    "switch": ("roam switch cell",),
    "demo": ("roam demo --hold 5",),
    "completion": ("roam completion bash > /etc/bash_completion.d/roam",),
}


def _example(command: str) -> str:
    # \b keeps click from rewrapping the lines.
    return "\b\nExample:\n  " + " \\\n      ".join(EXAMPLES[command])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="roam")
def main() -> None:
    """roam keeps applications' TCP connections alive while the network under them changes."""


@main.command(epilog=_example("keygen"))
@click.argument("path", type=_FilePath())
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


@main.command(epilog=_example("pubkey"))
@click.argument("path", type=_FilePath())
def pubkey(path: str) -> None:
    """Print the public key of the private key in PATH."""
    from roam.crypto.keys import encode_key, load_private_key, public_key

    try:
        click.echo(encode_key(public_key(load_private_key(path))))
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


_control_flag = click.option(
    "--control", type=_FilePath(), default=None,
    help="Control socket for roam status (default: /run/roam/ROLE.sock as root, else "
         "$XDG_RUNTIME_DIR/roam/ROLE.sock, else /tmp/roam-UID/ROLE.sock; its directory "
         "must be the daemon user's alone).")

_metrics_flag = click.option(
    "--metrics", default=None, metavar="HOST:PORT",
    help="Serve Prometheus metrics (/metrics), the status (/status.json) and a live status "
         "page (/) over HTTP here; port 0 picks a free port, printed as `metrics URL`.")

class _CompressParam(click.ParamType[CompressionMode]):
    name = "compress"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> CompressionMode:
        if isinstance(value, CompressionMode):
            return value
        try:
            return CompressionMode.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_compress_flag = click.option(
    "--compress", "compression", type=_CompressParam(), default="auto", show_default=True,
    metavar="auto|off|zstd[:LEVEL]",
    help="Compress DATA with zstd when both sides allow it (LEVEL 1-19, default 3); auto "
         "keeps compressing a connection only while it saves at least 10%.")

_log_level = click.option("--log-level", default="info", show_default=True,
                          type=click.Choice(["debug", "info", "warning", "error"]))

_event_loop_flag = click.option(
    "--event-loop", type=click.Choice(EVENT_LOOPS), default=DEFAULT_LOOP, show_default=True,
    help="The event loop the daemon runs on; uvloop costs less CPU per round trip and "
         "with many connections.")


@main.command(epilog=_example("server"))
@_config_option
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Address for transports (not needed with --uplink).")
@click.option("--uplink", "uplinks", multiple=True, metavar="HOST:PORT,key=RELAY_PUBKEY",
              help="Keep uplinks open to this relay, for clients to reach this server "
                   "through it without any inbound connection (repeatable).")
@click.option("--key", required=True, type=_FilePath(),
              help="This server's private key file.")
@click.option("--authorized-keys", required=True, type=_FilePath(),
              help="Client public keys allowed in, one per line.")
@click.option("--allow", multiple=True, metavar="HOST:PORT",
              help="Destination the server may open (repeatable; HOST may be *, a CIDR, "
                   "a name or *.suffix; PORT may be *). Default: none.")
@click.option("--linger", default=900.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds a session without transport waits for its client to resume.")
@click.option("--udp/--no-udp", default=True, show_default=True,
              help="Also listen for UDP on the same address, for datagram channels.")
@click.option("--allow-listen", multiple=True, metavar="HOST:PORT",
              help="Where clients' reverse forwards may have the server listen "
                   "(repeatable). Default: nowhere.")
@click.option("--registrar", "registrars", multiple=True,
              metavar="HOST:PORT,key=PUBKEY | sip:USER@DOMAIN,via=HOST:PORT,password-file=F",
              help="Register where this server can be reached at this registrar, built-in "
                   "or SIP (repeatable; its authorized clients may look it up).")
@click.option("--advertise", multiple=True, metavar="HOST:PORT",
              help="The address to register (repeatable)  [default: the --listen address, "
                   "or every interface's when it listens on all, or the --path networks']")
@click.option("--path", "paths", multiple=True,
              metavar="NAME:dev=IFACE[,priority=N][,kind=K][,min-signal=N]",
              help="A network this server may be reached on (repeatable; a mobile server): "
                   "when the best one changes it tells its clients (MOVE) and registrars.")
@click.option("--links", type=click.Choice(["linux", "static", "emulated"]), default="linux",
              show_default=True, help="Link driver reporting the --path networks' state.")
@click.option("--dwell", default=3.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a more preferred network must stay usable before moving to it.")
@click.option("--event-log", type=_FilePath(), default=None,
              help="Append JSON-lines events (network moves) to this file.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Server processes sharing the --listen port (SO_REUSEPORT); each "
                   "resume reaches the one holding its session (docs/workers.md).")
@_compress_flag
@_control_flag
@_metrics_flag
@_log_level
@_event_loop_flag
def server(listen: str | None, uplinks: tuple[str, ...], key: str, authorized_keys: str,
           allow: tuple[str, ...], linger: float, udp: bool, allow_listen: tuple[str, ...],
           registrars: tuple[str, ...], advertise: tuple[str, ...], paths: tuple[str, ...],
           links: str, dwell: float, event_log: str | None, workers: int,
           compression: CompressionMode, control: str | None, metrics: str | None,
           log_level: str, event_loop: str) -> None:
    """Run the server daemon beside the services."""
    from roam.daemons import run_server

    _setup_logging(log_level, "server")
    _run("server", run_server(listen, key, authorized_keys, list(allow), linger, control, udp,
                              list(allow_listen), compression, list(uplinks),
                              list(registrars), list(advertise), list(paths), links, dwell,
                              event_log, metrics, workers=workers), event_loop)


@main.command(epilog=_example("relay"))
@_config_option
@click.option("--listen", required=True, metavar="HOST:PORT",
              help="Address where clients' transports and servers' uplinks arrive.")
@click.option("--key", required=True, type=_FilePath(),
              help="This relay's private key file (its identity).")
@click.option("--admit-keys", type=_FilePath(), default=None,
              help="Public keys admitted as they are (clients, and servers' uplinks), one "
                   "per line as in authorized_keys.")
@click.option("--admit-totp", type=_FilePath(), default=None,
              help="Identities admitted with a one-time code: PUBLIC_KEY BASE32_SECRET per "
                   "line (mode 600).")
@click.option("--admit", type=click.Choice(["any"]), default=None,
              help="Admit every identity (nobody is admitted by default).")
@click.option("--dial-allow", multiple=True, metavar="HOST:PORT",
              help="Where the relay may dial for a client: the next relay, or a server "
                   "without an uplink here (as the server's --allow: *, address, CIDR, "
                   "name, *.suffix; port or *; repeatable)  [default: anywhere]")
@click.option("--directory", default=None, metavar="URL",
              help="Join a relay fleet sharing this Redis directory (redis://HOST:PORT/DB, "
                   "rediss://, unix://, redis+cluster://HOST:PORT for Redis Cluster): a "
                   "client on any relay of the fleet reaches any server uplinked to one.")
@click.option("--fleet-address", default=None, metavar="HOST:PORT",
              help="Where the fleet's other relays dial this one  [default: --listen]")
@_control_flag
@_metrics_flag
@_log_level
def relay(listen: str, key: str, admit_keys: str | None, admit_totp: str | None,
          admit: str | None, dial_allow: tuple[str, ...], directory: str | None,
          fleet_address: str | None, control: str | None,
          metrics: str | None, log_level: str) -> None:
    """Run a relay: splice clients' transports to servers, seeing only ciphertext.

    Example: roam relay --listen 0.0.0.0:4434 --key relay.key --admit-keys admitted
    """
    from roam.daemons import run_relay

    _setup_logging(log_level, "relay")
    # asyncio's own loop, not uvloop: uvloop (libuv) reports a socket's
    # error to a reader once and then drops its watcher, and an idle
    # uplink's reset would go unseen (docs/relays.md). The bytes move in
    # the kernel either way.
    _run("relay", run_relay(listen, key, admit_keys, admit_totp, admit, control,
                            list(dial_allow), metrics, directory=directory,
                            fleet_address=fleet_address), "asyncio")


@main.command(epilog=_example("registrar"))
@_config_option
@click.option("--listen", required=True, metavar="HOST:PORT",
              help="Address where units register and look each other up.")
@click.option("--key", required=True, type=_FilePath(),
              help="This registrar's private key file (units pin its public key).")
@click.option("--db", type=_FilePath(), default=None,
              metavar="FILE | redis://HOST:PORT/DB | redis+cluster://HOST:PORT",
              help="Where the registrations are kept: an SQLite file (kept over a restart), "
                   "or a Redis that several registrars share (rediss:// for TLS)  "
                   "[default: memory only]")
@click.option("--allow-lookup", type=_FilePath(), default=None,
              help="ASKER TARGET per line (public keys or *): who may look up whom, "
                   "beyond each unit's own list.")
@_control_flag
@_metrics_flag
@_log_level
def registrar(listen: str, key: str, db: str | None, allow_lookup: str | None,
              control: str | None, metrics: str | None, log_level: str) -> None:
    """Run a registrar: where each unit is now, for the units allowed to know.

    \b
    Example: roam registrar --listen 0.0.0.0:4440 --key registrar.key
               --db /var/lib/roam/registrar.db
    """
    from roam.daemons import run_registrar

    _setup_logging(log_level, "registrar")
    _run("registrar", run_registrar(listen, key, db, allow_lookup, control, metrics),
         "asyncio")


@main.command(epilog=_example("lookup"))
@click.argument("public_key", metavar="PUBLIC_KEY")
@click.option("--registrar", "registrars", multiple=True,
              metavar="HOST:PORT,key=PUBKEY", help="A registrar to ask (repeatable).")
@click.option("--key", required=True, type=_FilePath(),
              help="Your private key file: the registrar answers by who asks.")
def lookup(public_key: str, registrars: tuple[str, ...], key: str) -> None:
    """Show what the registrars know of a unit: its addresses and relays.

    \b
    Example: roam lookup SERVER_PUB --key client.key
               --registrar 198.51.100.9:4440,key=REGISTRAR_PUB
    """
    from roam.daemons import run_lookup

    _run("lookup", run_lookup(public_key, key, list(registrars)), "asyncio")


@main.command(epilog=_example("client"))
@_config_option
@click.option("--server", "server_addr", multiple=True,
              metavar="HOST:PORT | NAME=HOST:PORT,key=PUBKEY",
              help="The roam server's address; repeat with NAME=...,key=... for several "
                   "servers, each with a session of its own (the first is the default). "
                   "Without it, --server-key and --registrar find the server.")
@click.option("--server-key", default=None, metavar="PUBKEY",
              help="The server's public key (base64), pinned (for a --server without key=).")
@click.option("--key", required=True, type=_FilePath(),
              help="This client's private key file.")
@click.option("--forward", multiple=True,
              metavar="[udp:]LHOST:LPORT=[SERVER/]RHOST:RPORT[,redundant]",
              help="Carry connections to LHOST:LPORT to RHOST:RPORT beside the server "
                   "(repeatable; SERVER/ names one of several --server); udp: carries "
                   "datagrams, and ,redundant sends each of them on the active and the "
                   "backup path at once.")
@click.option("--cipher", type=click.Choice(["auto", "aesgcm", "chachapoly"]), default="auto",
              show_default=True, help="AEAD: auto picks AES-GCM where the CPU has AES "
                                      "instructions.")
@click.option("--path", "paths", multiple=True,
              metavar="NAME:dev=IFACE[,priority=N][,kind=K][,billing=B][,idle-switch=S]"
                      "[,min-signal=N][,redundant=no][,via=RELAY[+RELAY...]]",
              help="A local attachment the session may use (repeatable); lower priority "
                   "is preferred.")
@click.option("--links", type=click.Choice(["linux", "static", "emulated"]), default="linux",
              show_default=True, help="Link driver reporting the paths' state.")
@click.option("--dwell", default=3.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a more preferred path must stay usable before a switch to it.")
@click.option("--event-log", type=_FilePath(), default=None,
              help="Append JSON-lines events (handovers, path changes) to this file.")
@click.option("--udp/--no-udp", default=True, show_default=True,
              help="Carry datagram channels over UDP when it gets through (else on the "
                   "stream transport).")
@click.option("--socks", metavar="HOST:PORT", default=None,
              help="Serve SOCKS5 (CONNECT, UDP ASSOCIATE) here; names are resolved on the "
                   "server side.")
@click.option("--socks-auth", metavar="USER:PASSFILE", default=None,
              help="Require this SOCKS5 user name and the password in PASSFILE.")
@click.option("--transparent", multiple=True, metavar="CIDR",
              help="Intercept this machine's TCP and UDP to these networks (root, "
                   "nftables; repeatable).")
@click.option("--cleanup", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _, value: _cleanup(ctx, value),
              help="Remove transparent-mode rules a crashed client left behind, and exit.")
@click.option("--reverse", multiple=True, metavar="RHOST:RPORT=LHOST:LPORT",
              help="Have the server listen on RHOST:RPORT and carry each connection to "
                   "LHOST:LPORT here (repeatable; the server's --allow-listen must permit).")
@click.option("--dns", "dns_listen", metavar="HOST:PORT", default=None,
              help="Serve DNS (UDP and TCP) here: intercepted names get pool addresses.")
@click.option("--dns-intercept", multiple=True, metavar="PATTERN",
              help="Names answered with a pool address (NAME, *.SUFFIX or *; repeatable).")
@click.option("--dns-pool", metavar="CIDR", default=None,
              help="Loopback addresses for intercepted names  [default: 127.77.0.0/16]")
@click.option("--dns-upstream", metavar="HOST:PORT", default=None,
              help="Resolver for other names  [default: the first in /etc/resolv.conf]")
@click.option("--dns-ports", metavar="PORT[,PORT...]", default=None,
              help="Ports to listen on at each pool address  [default: 80,443]")
@click.option("--relay", "relays", multiple=True, metavar="NAME=HOST:PORT,key=PUBKEY",
              help="A relay paths may go through (--path ...,via=NAME[+NAME...]; "
                   "repeatable).")
@click.option("--relay-otp-secret", type=_FilePath(), default=None,
              help="Compute the relays' one-time codes from this base32 secret (mode 600).")
@click.option("--relay-otp-prompt", is_flag=True, default=False,
              help="Ask for the relays' one-time code at start (from an authenticator app).")
@click.option("--registrar", "registrars", multiple=True,
              metavar="HOST:PORT,key=PUBKEY | sip:USER@DOMAIN,via=HOST:PORT,password-file=F",
              help="Ask this registrar where the server is, at start (without --server, or "
                   "with --server sip:USER@DOMAIN) and after a failed resume (repeatable).")
@_compress_flag
@_control_flag
@_metrics_flag
@_log_level
@_event_loop_flag
def client(server_addr: tuple[str, ...], server_key: str | None, key: str,
           forward: tuple[str, ...], cipher: str,
           paths: tuple[str, ...], links: str, dwell: float, event_log: str | None, udp: bool,
           socks: str | None, socks_auth: str | None, transparent: tuple[str, ...],
           reverse: tuple[str, ...],
           dns_listen: str | None,
           dns_intercept: tuple[str, ...], dns_pool: str | None, dns_upstream: str | None,
           dns_ports: str | None, relays: tuple[str, ...], relay_otp_secret: str | None,
           relay_otp_prompt: bool, registrars: tuple[str, ...], compression: CompressionMode,
           control: str | None, metrics: str | None, log_level: str,
           event_loop: str) -> None:
    """Run the client daemon on the mobile unit.

    \b
    Example: roam client --server 198.18.0.1:4433 --server-key PUBKEY
               --key client.key --forward 127.0.0.1:8080=127.0.0.1:80
    """
    from roam.client_daemon import DnsOptions, RelayOptions, run_client

    if relay_otp_secret is not None and relay_otp_prompt:
        raise click.UsageError("give --relay-otp-secret or --relay-otp-prompt, not both")
    code = None
    if relay_otp_prompt:
        typed = click.prompt("One-time code for the relays", err=True).strip()
        if len(typed) != 6 or not typed.isdigit():
            raise click.UsageError(f"a one-time code is 6 digits, not {typed!r}")
        code = int(typed)
    _setup_logging(log_level, "client")
    _run("client", run_client(list(server_addr), server_key, key, list(forward), cipher,
                              list(paths), links, dwell, control, event_log, udp, socks,
                              socks_auth, DnsOptions(dns_listen, list(dns_intercept), dns_pool,
                                                     dns_upstream, dns_ports),
                              list(reverse), list(transparent), compression,
                              RelayOptions(list(relays), relay_otp_secret, code),
                              list(registrars), metrics), event_loop)


def _cleanup(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from roam.interfaces.transparent import remove

    try:
        remove()
    except ConfigError as exc:
        click.echo(f"roam client: error: {exc}", err=True)
        ctx.exit(1)
    click.echo("roam client: no transparent-mode rules are left")
    ctx.exit(0)


def _ask(control: str | None, role: str, cmd: str, fields: dict[str, Any] | None = None) -> Any:
    from roam.control.client import request
    from roam.control.server import default_control_path

    try:
        return request(control or default_control_path(role), cmd, fields)
    except RoamError as exc:
        raise click.ClickException(str(exc)) from None


@main.command(epilog=_example("status"))
@click.option("--control", type=_FilePath(), default=None,
              help="The daemon's control socket (default: the client's).")
@click.option("--server", "of_server", is_flag=True, help="Ask the server daemon instead.")
@click.option("--relay", "of_relay", is_flag=True, help="Ask the relay daemon instead.")
@click.option("--registrar", "of_registrar", is_flag=True,
              help="Ask the registrar daemon instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole status as JSON.")
def status(control: str | None, of_server: bool, of_relay: bool, of_registrar: bool,
           as_json: bool) -> None:
    """Show paths, the active path, channels and the handover history."""
    from roam.control.render import render_status

    if of_server + of_relay + of_registrar > 1:
        raise click.UsageError("ask one of --server, --relay and --registrar")
    role = ("server" if of_server else "relay" if of_relay
            else "registrar" if of_registrar else "client")
    result = _ask(control, role, "status")
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(render_status(result))


@main.command(epilog=_example("link"))
@click.argument("name")
@click.argument("change", metavar="up|down|signal=N")
@click.option("--control", type=_FilePath(), default=None,
              help="The daemon's control socket (default: the client's).")
@click.option("--server", "of_server", is_flag=True,
              help="Change the server daemon's network instead.")
def link(name: str, change: str, control: str | None, of_server: bool) -> None:
    """Change an emulated link: up, down or signal=N."""
    role = "server" if of_server else "client"
    click.echo(json.dumps(_ask(control, role, "link", {"path": name, "change": change})))


@main.command(epilog=_example("switch"))
@click.argument("name")
@click.option("--control", type=_FilePath(), default=None,
              help="The daemon's control socket (default: the client's).")
@click.option("--server", "of_server", is_flag=True,
              help="Move the server daemon to its network NAME instead: it tells its "
                   "clients, which follow it there.")
def switch(name: str, control: str | None, of_server: bool) -> None:
    """Hand the session over to path NAME now (soft if the old path allows).

    The session stays on NAME until it stops working; `roam switch auto` gives
    the choice back to the policy.
    """
    if of_server:
        networks = _ask(control, "server", "switch", {"path": name})["networks"]
        moves = networks["moves"]
        if name == "auto":
            click.echo("the policy chooses the network again")
        elif moves:
            last = moves[-1]
            click.echo(f"{last['type']} move {last['from']} -> {last['to']}: reached at "
                       f"{', '.join(last['addresses'])}; {last['sessions']} sessions told")
        return
    result = _ask(control, "client", "switch", {"path": name})
    last = result["handovers"][-1] if result.get("handovers") else None
    if name == "auto":
        click.echo("the policy chooses the path again")
    elif last:
        click.echo(f"{last['kind']} handover {last['origin']} -> {last['target']}: "
                   f"stall {last['stall_ms']:.0f} ms, {last['frames_resent']} frames resent")


@main.command(epilog=_example("demo"))
@click.option("--hold", default=3.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds of steady traffic between one handover and the next break.")
def demo(hold: float) -> None:
    """Show handovers on loopback, without privileges: a client with wifi and cell,
    a relay, a server, and an application streaming while wifi fails.

    Exits 0 only when every byte the application sent came back unchanged.
    """
    from roam.demo import run_demo

    sys.exit(asyncio.run(run_demo(hold)))


if __name__ == "__main__":
    main()


@main.command(epilog=_example("completion"))
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for roam (bash, zsh or fish)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:
        raise click.ClickException(f"no completion for {shell}")
    click.echo(cls(main, {}, "roam", "_ROAM_COMPLETE").source())
