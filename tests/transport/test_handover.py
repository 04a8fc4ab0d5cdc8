"""Client.handover between two loopback paths (source 127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import asyncio

import pytest

from roam.errors import TransportError
from roam.transport.client import Attachment, HandoverRecord

from .stack import Stack

A = Attachment("a", source="127.0.0.1")
B = Attachment("b", source="127.0.0.2")


async def _start() -> tuple[Stack, list[HandoverRecord]]:
    stack = await Stack().start()
    records: list[HandoverRecord] = []
    stack.client.on_handover = records.append
    await stack.client.handover(A, soft=False, reason="start on a")
    return stack, records


def test_soft_handover_moves_the_session_and_resends_nothing() -> None:
    async def main() -> list[HandoverRecord]:
        stack, records = await _start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            transfer = asyncio.create_task(stack.echo_check(8_000_000, conn=conn))
            await asyncio.sleep(0.05)  # data in flight both ways
            await stack.client.handover(B, soft=True, reason="b is preferred")
            await transfer
            await stack.client.handover(A, soft=True, reason="back to a")
            await stack.echo_check(1_000_000, conn=conn)
            assert [c.source for c in stack.proxy.conns[-3:]] == ["127.0.0.1", "127.0.0.2",
                                                                  "127.0.0.1"]
            conn[1].close()
            return records
        finally:
            await stack.close()

    records = asyncio.run(main())
    soft = records[1:]
    assert [(r.kind, r.origin, r.target) for r in soft] == [("soft", "a", "b"), ("soft", "b", "a")]
    assert all(r.frames_resent == 0 for r in soft)
    assert soft[0].reason == "b is preferred"


def test_soft_handover_whose_old_path_goes_silent_completes_hard() -> None:
    async def main() -> list[HandoverRecord]:
        stack, records = await _start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(200_000, conn=conn)
            transfer = asyncio.create_task(stack.echo_check(4_000_000, conn=conn))
            await asyncio.sleep(0.05)
            stack.proxy.conns[-1].silent = True  # the old path black-holes mid-way
            await stack.client.handover(B, soft=True, reason="a is fading")
            await transfer
            conn[1].close()
            return records
        finally:
            await stack.close()

    records = asyncio.run(main())
    last = records[-1]
    assert (last.kind, last.origin, last.target) == ("hard", "a", "b")


def test_handover_to_an_unreachable_path_leaves_the_session_where_it_was() -> None:
    async def main() -> None:
        stack, _ = await _start()
        try:
            nowhere = Attachment("nowhere", source="192.0.2.1")  # not on this machine
            with pytest.raises(TransportError, match="via nowhere"):
                await stack.client.handover(nowhere, soft=True, reason="try it")
            assert stack.client.attachment == A
            await stack.echo_check(100_000)
        finally:
            await stack.close()

    asyncio.run(main())
