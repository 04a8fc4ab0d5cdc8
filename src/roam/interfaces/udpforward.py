"""UDP forwards: `--forward udp:LHOST:LPORT=RHOST:RPORT`.

Each application source address (host, port) that sends to LHOST:LPORT gets
a datagram channel of its own to RHOST:RPORT, so answers find their way back
to the socket that asked. A flow silent for `FLOW_IDLE` seconds is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from roam.core.frames import ChannelKind
from roam.errors import ConfigError
from roam.interfaces.forward import ForwardSpec
from roam.transport.datagrams import ClientDatagrams
from roam.transport.driver import SessionDriver

log = logging.getLogger("roam.forward")

# Like a NAT's UDP mapping: long enough for request/response protocols and
# their retries, short enough that abandoned flows do not pile up.
FLOW_IDLE = 60.0


class _Flow:
    """One application source address: the channel carrying its datagrams."""

    def __init__(self, forward: UdpForward, driver: SessionDriver, addr: Any) -> None:
        self.forward = forward
        self.driver = driver
        self.addr = addr
        self.last_used = asyncio.get_running_loop().time()
        self.cid: int | None = driver.session.open_channel(
            forward.spec.dest_host, forward.spec.dest_port, ChannelKind.DATAGRAM)
        driver.add_app(self)

    def deliver(self, data: bytes | memoryview) -> None:
        self.last_used = asyncio.get_running_loop().time()
        if self.forward.transport is not None:
            self.forward.transport.sendto(data, self.addr)

    def end(self) -> None:
        pass

    def finish(self) -> None:
        self.forward.flows.pop(self.addr, None)

    def abort(self) -> None:
        self.forward.flows.pop(self.addr, None)


class UdpForward(asyncio.DatagramProtocol):
    def __init__(self, spec: ForwardSpec, current: Callable[[], SessionDriver | None]) -> None:
        self.spec = spec
        self._current = current
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Any, _Flow] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(self.spec.listen_host, self.spec.listen_port))
        except OSError as exc:
            raise ConfigError(f"--forward 'udp:{self.spec}': cannot listen: "
                              f"{exc.strerror or exc}") from None
        self.transport = transport
        self._sweeper = loop.create_task(self._sweep(), name=f"udp-flows-{self.spec}")
        addr = self.transport.get_extra_info("sockname")
        log.info("forward udp %s:%d -> %s:%d", addr[0], addr[1], self.spec.dest_host,
                 self.spec.dest_port)
        return addr[0], addr[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        driver = self._current()
        if driver is None:
            return
        flow = self.flows.get(addr)
        if flow is None or flow.driver is not driver or flow.cid not in driver.apps:
            flow = _Flow(self, driver, addr)
            self.flows[addr] = flow
        flow.last_used = asyncio.get_running_loop().time()
        if flow.cid is not None and not driver.send_datagram(flow.cid, data):
            log.debug("udp forward %s: datagram of %d bytes dropped", self.spec, len(data))
        driver.flush()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for a datagram we sent to an application: that
        # application went away; its flow will idle out.
        log.debug("udp forward %s: %s", self.spec, exc)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(FLOW_IDLE / 4)
            now = asyncio.get_running_loop().time()
            for addr, flow in list(self.flows.items()):
                if now - flow.last_used >= FLOW_IDLE:
                    del self.flows[addr]
                    if flow.cid is not None:
                        flow.driver.apps.pop(flow.cid, None)
                        flow.driver.session.reset_channel(flow.cid)
                        flow.driver.schedule()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.transport is not None:
            self.transport.close()


class RedundantUdpForward(UdpForward):
    """`--forward udp:...,redundant`: every flow's channel sends each datagram on
    two paths. A flow's first datagram waits for OPEN_OK on the stream anyway,
    so marking the channel once that datagram is handed over is in time."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        super().datagram_received(data, addr)
        flow = self.flows.get(addr)
        if flow is not None and flow.cid is not None and isinstance(flow.driver.datagrams,
                                                                     ClientDatagrams):
            flow.driver.datagrams.mark_redundant(flow.cid)
