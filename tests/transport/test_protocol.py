"""The transport protocol's handshake reads and its switch to pushed records."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest

from roam.crypto.noise import CipherState
from roam.crypto.records import RecordFramer, RecordOpener, RecordSealer
from roam.errors import FramingError, TransportError
from roam.transport.protocol import Records, TransportProtocol


async def _pair() -> tuple[TransportProtocol, asyncio.StreamWriter, asyncio.Server]:
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, proto = await asyncio.get_running_loop().create_connection(
        TransportProtocol, "127.0.0.1", port)
    return proto, await accepted, server


def _records(*payloads: bytes) -> tuple[list[bytes], RecordOpener]:
    send, receive = CipherState("AESGCM", bytes(32)), CipherState("AESGCM", bytes(32))
    sealer = RecordSealer(send, 0.0)
    return [bytes(sealer.seal(p, 0.0)) for p in payloads], RecordOpener(receive)


def test_read_exactly_across_segments_then_push() -> None:
    r0, r1, r2 = (records := _records(b"first", b"second", b"third"))[0]
    opener = records[1]

    async def main() -> list[bytes]:
        proto, peer, server = await _pair()
        peer.write(b"abc")
        await asyncio.sleep(0.01)
        peer.write(b"de" + r0 + r1[:7])
        assert await proto.read_exactly(5, 5) == b"abcde"
        got: list[bytes] = []
        done = asyncio.Event()

        def sink(records: Records) -> None:
            # The views are only valid during the call: open them now.
            got.extend(opener.open(counter, ct) for counter, ct in records)
            done.set()

        proto.start_push(RecordFramer(), sink, lambda exc: None, lambda: None)
        assert got == [b"first"]  # what was read ahead goes first
        done.clear()
        peer.write(r1[7:] + r2[:3])
        await asyncio.wait_for(done.wait(), 5)
        done.clear()
        peer.write(r2[3:])
        await asyncio.wait_for(done.wait(), 5)
        proto.close()
        peer.close()
        server.close()
        return got

    assert asyncio.run(main()) == [b"first", b"second", b"third"]


def test_unfinished_records_of_two_transports_stay_apart() -> None:
    """Both read into the one shared scratch buffer; each keeps its own rest."""
    (a0, a1), opener_a = _records(b"a" * 5000, b"A" * 70_000)
    (b0, b1), opener_b = _records(b"b" * 3000, b"B" * 90_000)

    async def main() -> tuple[list[bytes], list[bytes]]:
        pa, peer_a, server_a = await _pair()
        pb, peer_b, server_b = await _pair()
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        pa.start_push(RecordFramer(), lambda rs: got_a.extend(opener_a.open(c, t) for c, t in rs),
                      lambda exc: None, lambda: None)
        pb.start_push(RecordFramer(), lambda rs: got_b.extend(opener_b.open(c, t) for c, t in rs),
                      lambda exc: None, lambda: None)
        for step in range(0, 100_000, 9_000):
            peer_a.write((a0 + a1)[step:step + 9_000])
            peer_b.write((b0 + b1)[step:step + 9_000])
            await asyncio.sleep(0.005)
        for _ in range(200):
            if len(got_a) == 2 and len(got_b) == 2:
                break
            await asyncio.sleep(0.01)
        for closing in (pa, pb, peer_a, peer_b, server_a, server_b):
            closing.close()
        return got_a, got_b

    got_a, got_b = asyncio.run(main())
    assert got_a == [b"a" * 5000, b"A" * 70_000]
    assert got_b == [b"b" * 3000, b"B" * 90_000]


def test_garbage_after_the_handshake_loses_the_transport_with_the_reason() -> None:
    async def main() -> list[Exception | None]:
        proto, peer, server = await _pair()
        lost: list[Exception | None] = []
        gone = asyncio.Event()

        def on_lost(exc: Exception | None) -> None:
            lost.append(exc)
            gone.set()

        proto.start_push(RecordFramer(), lambda rs: None, on_lost, lambda: None)
        peer.write(b"\xff" * 64)  # a record "length" of 4 GiB
        await asyncio.wait_for(gone.wait(), 5)
        peer.close()
        server.close()
        return lost

    (exc, *_) = asyncio.run(main())
    assert isinstance(exc, FramingError)
    assert "record length" in str(exc)


def test_read_exactly_times_out_with_a_clear_error() -> None:
    async def main() -> None:
        proto, peer, server = await _pair()
        with pytest.raises(TransportError, match=r"no answer from .* within 0\.2 s"):
            await proto.read_exactly(1, 0.2)
        proto.close()
        peer.close()
        server.close()

    asyncio.run(main())


def test_read_exactly_reports_a_closed_peer() -> None:
    async def main() -> None:
        proto, peer, server = await _pair()
        peer.write(b"ab")
        peer.close()
        with pytest.raises(TransportError, match="connection closed by"):
            await proto.read_exactly(3, 5)
        server.close()

    asyncio.run(main())


def test_garbage_read_ahead_of_the_push_loses_the_transport_too() -> None:
    async def main() -> list[Exception | None]:
        proto, peer, server = await _pair()
        peer.write(b"ab" + b"\xff" * 30)
        assert await proto.read_exactly(2, 5) == b"ab"
        lost: list[Exception | None] = []
        proto.start_push(RecordFramer(), lambda rs: None, lost.append, lambda: None)
        peer.close()
        server.close()
        return lost

    (exc, *_) = asyncio.run(main())
    assert isinstance(exc, FramingError)


def _ss_delivered(local: tuple[str, int]) -> int:
    """What `ss` (iproute2) says the socket at `local` delivered."""
    out = subprocess.run(["ss", "-tin", "src", f"{local[0]}:{local[1]}"], check=True,
                         capture_output=True, text=True).stdout
    found = re.search(r"\bdelivered:(\d+)", out)
    assert found, out
    return int(found.group(1))


@pytest.mark.skipif(shutil.which("ss") is None, reason="iproute2's ss is not installed")
def test_tcp_delivery_reads_the_kernels_count() -> None:
    # The offsets into struct tcp_info are checked against iproute2's own
    # reading of the same socket.
    async def main() -> tuple[tuple[int, int], int, tuple[int, int]]:
        proto, peer, server = await _pair()
        assert proto.transport is not None
        before = proto.tcp_delivery()
        for _ in range(20):
            proto.write(b"x" * 4096)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        after = proto.tcp_delivery()
        counted = _ss_delivered(proto.transport.get_extra_info("sockname"))
        proto.close()
        peer.close()
        server.close()
        return before, counted, after

    before, counted, after = asyncio.run(main())
    assert after[0] == 0  # loopback: everything acknowledged, nothing in flight
    assert after[1] == counted
    assert after[1] >= before[1] + 20


def test_tcp_delivery_without_a_socket_is_an_os_error() -> None:
    with pytest.raises(OSError, match="no socket"):
        TransportProtocol().tcp_delivery()
