"""A mobile server's networks (roam.transport.mobility), in process with the
emulated link driver: which addresses it says, when it moves, what a move
changes, and what `roam switch --server` refuses."""

from __future__ import annotations

import asyncio

import pytest

from roam.connector.allow import AccessList
from roam.connector.connector import Connector
from roam.core.session import SessionConfig
from roam.crypto.keys import generate_private_key
from roam.errors import ConfigError
from roam.links.emulated import EmulatedDriver
from roam.policy.paths import parse_paths
from roam.policy.policy import Policy
from roam.transport.mobility import ServerNetworks
from roam.transport.server import Server, ServerConfig


def networks(changed: list[int]) -> tuple[ServerNetworks, EmulatedDriver]:
    server = Server(ServerConfig("127.0.0.1", 0, generate_private_key(), {},
                                 Connector(AccessList.parse([])), SessionConfig()))
    driver = EmulatedDriver({"net1": "127.0.0.2", "net2": "127.0.0.3"})
    policy = Policy(parse_paths(["net1:dev=127.0.0.2", "net2:dev=127.0.0.3,priority=200"]),
                    dwell=0.0)
    return ServerNetworks(policy, driver, 7000, server, lambda: changed.append(1)), driver


def test_the_chosen_networks_addresses_come_first_and_a_failure_moves_it() -> None:
    async def main() -> None:
        changed: list[int] = []
        net, driver = networks(changed)
        await net.start()
        try:
            assert net.current == "net1"
            assert net.addresses() == ["127.0.0.2:7000", "127.0.0.3:7000"]
            driver.set_up("net1", False)
            assert net.current == "net2"
            assert net.addresses() == ["127.0.0.3:7000"]
            last = net.history[-1]
            assert (last.kind, last.origin, last.target) == ("hard", "net1", "net2")
            assert last.sessions == 0
            # The first choice and the move each told the registrations.
            assert len(changed) >= 2
        finally:
            await net.close()

    asyncio.run(main())


def test_a_planned_move_pins_the_network_until_auto() -> None:
    async def main() -> None:
        net, _ = networks([])
        await net.start()
        try:
            assert net.switch("net2") == {"pinned": "net2", "current": "net2"}
            assert net.history[-1].kind == "soft"
            net._evaluate()  # the policy would prefer net1: pinned, it waits
            assert net.current == "net2"
            assert net.switch("auto") == {"pinned": None, "current": "net1"}
            assert net.status()["moves"][-1]["to"] == "net1"
        finally:
            await net.close()

    asyncio.run(main())


def test_switch_refuses_unknown_and_dead_networks() -> None:
    async def main() -> None:
        net, driver = networks([])
        await net.start()
        try:
            with pytest.raises(ValueError, match="no network 'wifi' \\(known: net1, net2\\)"):
                net.switch("wifi")
            driver.set_up("net2", False)
            with pytest.raises(ValueError, match="network net2 does not work now"):
                net.switch("net2")
            assert net.set_link("net2", "up")["up"] is True
            with pytest.raises(ConfigError, match="unknown link change"):
                net.set_link("net2", "sideways")
        finally:
            await net.close()

    asyncio.run(main())
