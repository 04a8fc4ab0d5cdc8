"""Reverse forwards: `roam client --reverse RHOST:RPORT=LHOST:LPORT`.

The client asks the server (a LISTEN channel) to listen on RHOST:RPORT,
where the server's `--allow-listen` permits; for each connection there the
server opens a stream channel named RHOST:RPORT, and the client connects it
to LHOST:LPORT on the mobile unit. So a program beside the server reaches a
service on the mobile unit, and the connection survives handovers like any
other. The client opens only what a reverse forward names: any other OPEN
from the server is refused.
"""

from __future__ import annotations

import asyncio
import logging

from roam.core.events import ChannelOpenRequested
from roam.core.frames import ChannelKind
from roam.errors import CloseCode
from roam.interfaces.forward import ForwardSpec
from roam.names import Host, InvalidHost
from roam.tasks import Tasks
from roam.transport.driver import AppConnection, SessionDriver
from roam.transport.ratelog import RateLimitedLog

log = logging.getLogger("roam.reverse")

# A local service that takes longer than this to accept is not there.
CONNECT_TIMEOUT = 10.0


class _ListenChannel:
    """The client's end of one LISTEN channel: it only reports the server's answer."""

    def __init__(self, spec: ForwardSpec, cid: int) -> None:
        self.spec = spec
        self.cid: int | None = cid

    def opened(self) -> None:
        log.info("reverse forward: the server listens on %s:%d for %s:%d",
                 self.spec.listen_host, self.spec.listen_port, self.spec.dest_host,
                 self.spec.dest_port)

    def open_failed(self, code: CloseCode, reason: str) -> None:
        log.error("reverse forward %s refused by the server: %s", self.spec, reason)

    def deliver(self, data: bytes | memoryview) -> None:
        pass

    def end(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        log.warning("reverse forward %s: the server closed its listener", self.spec)


class ReverseForwards:
    """All of a client's reverse forwards, set up again on every new session."""

    def __init__(self, specs: list[ForwardSpec]) -> None:
        self.specs = specs
        self._by_remote = {(s.listen_host, s.listen_port): s for s in specs}
        self._tasks = Tasks("reverse forwards")
        # The server may open as often as it likes: one line a second at most.
        self._log_refused = RateLimitedLog(log)

    def attach(self, driver: SessionDriver) -> None:
        """A new session: accept the server's OPENs for our forwards, ask it to listen."""
        driver.on_open_request = lambda e: self._request(driver, e)
        for spec in self.specs:
            cid = driver.session.open_channel(spec.listen_host, spec.listen_port,
                                              ChannelKind.LISTEN)
            driver.add_app(_ListenChannel(spec, cid))
        driver.schedule()

    def _request(self, driver: SessionDriver, e: ChannelOpenRequested) -> None:
        try:
            # The server names the listen address we asked for, in the normal
            # form our spec holds; anything else matches no forward.
            host = Host.parse(e.host)
        except InvalidHost as exc:
            self._refuse(driver, e, CloseCode.UNREACHABLE, str(exc))
            return
        spec = self._by_remote.get((str(host), e.port))
        if spec is None or e.kind is not ChannelKind.STREAM:
            self._refuse(driver, e, CloseCode.NOT_ALLOWED,
                         f"no reverse forward for {host}:{e.port} on the client")
            return
        self._tasks.spawn(self._connect(driver, e, spec), name=f"reverse-{e.channel}")

    def _refuse(self, driver: SessionDriver, e: ChannelOpenRequested, code: CloseCode,
                reason: str) -> None:
        self._log_refused(f"refused the server's OPEN of channel {e.channel}: {reason}")
        driver.session.refuse_channel(e.channel, code, reason)
        driver.schedule()

    async def _connect(self, driver: SessionDriver, e: ChannelOpenRequested,
                       spec: ForwardSpec) -> None:
        app = AppConnection(driver, e.channel)
        where = f"{spec.dest_host}:{spec.dest_port}"
        try:
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: app, spec.dest_host, spec.dest_port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            reason = f"{where}: {getattr(exc, 'strerror', None) or exc or 'timed out'}"
            log.warning("reverse forward %s: %s", spec, reason)
            driver.session.refuse_channel(e.channel, CloseCode.CONNECT_FAILED, reason)
            driver.schedule()
            return
        driver.accept(e.channel, app)
