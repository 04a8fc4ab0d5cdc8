"""What a unit registers: advertised addresses, its listen address, or its interfaces'."""

from __future__ import annotations

import ipaddress

from roam.registrar.addresses import interface_addresses, reachable_at


def test_advertised_addresses_win_and_a_specific_listen_address_is_itself() -> None:
    assert reachable_at(("0.0.0.0", 7000), ["203.0.113.5:443"])() == ["203.0.113.5:443"]
    assert reachable_at(("198.18.1.2", 7000), [])() == ["198.18.1.2:7000"]
    assert reachable_at(("::1", 7000), [])() == ["[::1]:7000"]
    assert reachable_at(None, [])() == []  # uplinks only


def test_listening_on_all_registers_every_global_interface_address_on_that_port() -> None:
    found = reachable_at(("0.0.0.0", 7000), [])()
    assert len(found) == len(interface_addresses())
    for text in found:
        host, _, port = text.rpartition(":")
        address = ipaddress.ip_address(host.strip("[]"))
        assert port == "7000"
        assert not address.is_loopback
        assert not address.is_link_local


def test_interface_addresses_are_read_inside_a_running_uvloop() -> None:
    # A daemon reads them from its loop; pyroute2's synchronous API would
    # start a loop of its own there.
    import asyncio

    import uvloop

    from roam.registrar.addresses import interface_addresses

    async def inside() -> list[str]:
        return interface_addresses()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(inside()) == interface_addresses()
