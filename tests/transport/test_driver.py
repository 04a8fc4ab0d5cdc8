"""The session driver with real sockets: limits said in the log, CLOSE written before letting go."""

from __future__ import annotations

import asyncio
import logging

import pytest

from .stack import Stack


def test_channels_beyond_the_limit_are_logged_on_both_sides(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stack = await Stack(session={"max_channels": 4}).start()
        try:
            conns = [await asyncio.open_connection("127.0.0.1", stack.forward_port)
                     for _ in range(6)]
            # Two are refused: their application sees the connection end.
            ended = 0
            for reader, writer in conns:
                writer.write(b"x")
                try:
                    got = await asyncio.wait_for(reader.read(1), 10)
                except ConnectionError:
                    got = b""
                ended += got == b""
                writer.close()
            assert ended == 2
        finally:
            await stack.close()

    caplog.set_level(logging.WARNING, logger="roam")
    asyncio.run(main())
    assert "refused the peer's channel" in caplog.text
    assert "the peer refused channel" in caplog.text
    assert "4 at most" in caplog.text


def test_close_is_written_before_the_transport_is_let_go() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            driver = stack.client.driver
            assert driver is not None
            stack.client.stopped.set()  # else the client makes a new session at once
            sent = await driver.close_and_wait(5.0)
            assert sent
            assert driver.done.is_set()
            async with asyncio.timeout(10):
                while stack.server.sessions:  # noqa: ASYNC110 (no event for it)
                    await asyncio.sleep(0.01)
        finally:
            await stack.close()

    asyncio.run(main())
