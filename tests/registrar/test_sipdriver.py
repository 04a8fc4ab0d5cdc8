"""A unit's SIP registration against a real Kamailio (claim 19): challenged
then registered, refreshed, a move replaces the contact, another account
finds the unit, a wrong password is refused; over UDP and TCP, with MD5 and
SHA-256 digests. Kamailio runs on loopback, one per module and setting."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from roam.errors import TransportError
from roam.lab.kamailio import Kamailio, find_kamailio, free_port
from roam.registrar import sipdriver
from roam.registrar.sipdriver import SipRefused, SipRegistrarClient
from roam.registrar.sipmessage import Response, parse_response
from roam.registrar.sipregister import Account
from tests.conftest import require

ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
ALICE = Account("sip:alice@roam.test", "alice-pw")
BOB = Account("sip:bob@roam.test", "bob-pw")
CAROL = Account("sip:carol@roam.test", "carol-pw")
HERE = "sip:alice@198.18.1.2:7000;transport=tcp"
THERE = "sip:alice@198.18.2.9:7000;transport=tcp"
TRANSPORTS = ["udp", "tcp"]


def start(tmp: Path, **kwargs: object) -> Kamailio:
    require(find_kamailio() is not None,
            "kamailio is not installed (Debian package kamailio; scripts/setup-env installs "
            "it when run as root)")
    registrar = Kamailio(tmp, ACCOUNTS, port=free_port(), **kwargs)  # type: ignore[arg-type]
    registrar.start()
    return registrar


@pytest.fixture(scope="module")
def md5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    registrar = start(tmp_path_factory.mktemp("kamailio-md5"), min_expires=2)
    yield registrar
    registrar.stop()


@pytest.fixture(scope="module")
def sha256(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    # Nonces that go stale after a second: a refresh meets stale=true.
    registrar = start(tmp_path_factory.mktemp("kamailio-sha256"), algorithm="SHA-256",
                      min_expires=2, nonce_expire_s=1)
    yield registrar
    registrar.stop()


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[Response]:
    """Every response the driver reads, in order."""
    seen: list[Response] = []

    def recording(data: bytes) -> Response:
        response = parse_response(data)
        seen.append(response)
        return response

    monkeypatch.setattr(sipdriver, "parse_response", recording)
    return seen


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


def client(registrar: Kamailio, account: Account, transport: str,
           **kwargs: object) -> SipRegistrarClient:
    return SipRegistrarClient(account, registrar.address, transport=transport,
                              **kwargs)  # type: ignore[arg-type]


async def bindings_of(registrar: Kamailio, aor: str, transport: str = "tcp") -> list[str]:
    """What another unit (carol) finds for `aor`."""
    reader = client(registrar, CAROL, transport)
    try:
        found = await reader.lookup(aor)
    finally:
        reader.close()
    return [b.uri for b in found.bindings]


async def clear(registrar: Kamailio, account: Account) -> None:
    unit = client(registrar, account, "tcp")
    await unit.unregister(everything=True)
    unit.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_is_challenged_then_accepted(md5: Kamailio, answers: list[Response],
                                              transport: str) -> None:
    async def body() -> None:
        unit = client(md5, ALICE, transport, expires_s=120)
        registered = await unit.register(HERE)
        unit.close()
        assert [a.status for a in answers] == [401, 200]
        challenge = answers[0].challenges()[0]
        assert (challenge.realm, challenge.algorithm, challenge.qop) == ("roam.test", "MD5",
                                                                         ("auth",))
        assert registered.contact == HERE
        assert registered.expires_s == 120
        assert [b.uri for b in registered.bindings] == [HERE]
        assert await bindings_of(md5, ALICE.aor) == [HERE]
        await clear(md5, ALICE)
    run(body)


def test_a_refresh_reuses_the_nonce_and_renews_the_binding(md5: Kamailio,
                                                           answers: list[Response]) -> None:
    async def body() -> None:
        unit = client(md5, ALICE, "udp", expires_s=60)
        await unit.register(HERE)
        first = unit.registration.expires_at
        await asyncio.sleep(1.1)  # Kamailio counts expiry in whole seconds
        refreshed = await unit.register(HERE)
        unit.close()
        # The refresh answered the cached nonce: no second 401.
        assert [a.status for a in answers] == [401, 200, 200]
        assert answers[1].call_id == answers[2].call_id  # one Call-ID (RFC 3261 10.2)
        assert answers[2].cseq()[0] > answers[1].cseq()[0]
        assert refreshed.expires_s == 60
        later = unit.registration.expires_at
        assert first is not None
        assert later is not None
        assert later > first
        await clear(md5, ALICE)
    run(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_move_replaces_the_contact(md5: Kamailio, transport: str) -> None:
    async def body() -> None:
        unit = client(md5, ALICE, transport)
        await unit.register(HERE)
        moved = await unit.register(THERE)
        unit.close()
        assert [b.uri for b in moved.bindings] == [THERE]
        assert await bindings_of(md5, ALICE.aor, transport) == [THERE]
        await clear(md5, ALICE)
    run(body)


def test_a_restarted_unit_replaces_its_binding_by_its_instance(md5: Kamailio) -> None:
    # A unit that forgot its old contact (a restart: new Call-ID, nothing
    # to remove by name) still replaces it: Kamailio keys the binding by
    # +sip.instance, which stays with the AOR.
    async def body() -> None:
        before = client(md5, ALICE, "tcp")
        await before.register(HERE)
        before.close()
        after = client(md5, ALICE, "tcp")
        registered = await after.register(THERE)
        assert [b.uri for b in registered.bindings] == [THERE]
        # The control: another instance of the same AOR adds a binding, so
        # the replacement above is the instance's doing, not a one-contact rule.
        other = client(md5, ALICE, "tcp", instance="urn:uuid:00000000-0000-4000-8000-000000000001")
        both = await other.register(HERE)
        assert sorted(b.uri for b in both.bindings) == sorted([HERE, THERE])
        await other.unregister()
        assert await bindings_of(md5, ALICE.aor) == [THERE]
        after.close()
        other.close()
        await clear(md5, ALICE)
        assert await bindings_of(md5, ALICE.aor) == []
    run(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_another_account_finds_the_current_contact(md5: Kamailio, transport: str) -> None:
    async def body() -> None:
        alice = client(md5, ALICE, transport)
        bob = client(md5, BOB, transport)
        await alice.register(HERE)
        first = await bob.lookup(ALICE.aor)
        await alice.register(THERE)
        second = await bob.lookup(ALICE.aor)  # the same connection, the cached nonce
        nobody = await bob.lookup("sip:nobody@roam.test")
        alice.close()
        bob.close()
        assert [b.uri for b in first.bindings] == [HERE]
        assert [b.uri for b in second.bindings] == [THERE]
        assert second.bindings[0].sip_uri().address() == ("198.18.2.9", 7000)
        assert nobody.bindings == ()
        await clear(md5, ALICE)
    run(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_password_is_refused(md5: Kamailio, transport: str) -> None:
    async def body() -> None:
        for account in (Account("sip:bob@roam.test", "not-bobs"),
                        Account("sip:mallory@roam.test", "any")):
            unit = client(md5, account, transport)
            with pytest.raises(SipRefused, match="wrong password or unknown user") as refused:
                await unit.register("sip:x@192.0.2.1:7000")
            unit.close()
            assert refused.value.status == 401
            assert "refused: 401 Unauthorized" in str(refused.value)
    run(body)


def test_only_the_aors_own_account_changes_its_bindings(md5: Kamailio) -> None:
    async def body() -> None:
        intruder = client(md5, Account("sip:alice@roam.test", "bob-pw", "bob"), "tcp")
        with pytest.raises(SipRefused, match="403") as refused:
            await intruder.register("sip:evil@192.0.2.66:7000")
        intruder.close()
        assert refused.value.status == 403
        assert await bindings_of(md5, ALICE.aor) == []
    run(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sha256_digest(sha256: Kamailio, answers: list[Response], transport: str) -> None:
    async def body() -> None:
        unit = client(sha256, BOB, transport)
        await unit.register("sip:bob@198.18.5.5:7000")
        unit.close()
        challenges = answers[0].challenges()
        assert [c.algorithm for c in challenges] == ["SHA-256"]
        assert answers[-1].status == 200
        await clear(sha256, BOB)
    run(body)


def test_keep_registered_refreshes_past_expiry_and_follows_a_move(
        sha256: Kamailio, answers: list[Response]) -> None:
    # Asked for 1 s, raised to Kamailio's minimum of 2 s by its 423; then
    # refreshed every second with a nonce that goes stale every second.
    async def body() -> None:
        unit = client(sha256, ALICE, "udp", expires_s=1)
        task = asyncio.create_task(unit.keep_registered(HERE))
        await asyncio.sleep(2.6)  # past the 2 s a registration without refresh would live
        assert await bindings_of(sha256, ALICE.aor) == [HERE]
        unit.move(THERE)
        deadline = time.monotonic() + 3
        while await bindings_of(sha256, ALICE.aor) != [THERE]:
            assert time.monotonic() < deadline, "the move was not registered"
            await asyncio.sleep(0.05)
        task.cancel()
        unit.close()
        statuses = [a.status for a in answers]
        assert 423 in statuses
        assert any(c.stale for a in answers if a.status == 401 for c in a.challenges())
        assert statuses.count(200) >= 4  # registered, refreshed twice, moved (and lookups)
        await clear(sha256, ALICE)
    run(body)


def test_udp_retransmits_until_answered(md5: Kamailio) -> None:
    # A relay in front of Kamailio that loses the first request: Timer E
    # sends it again 0.5 s later, and the registration goes through.
    async def body() -> None:
        loop = asyncio.get_running_loop()
        forwarded: list[bytes] = []

        class Lossy(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                self.unit: tuple[str, int] | None = None

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if addr == md5.address:
                    if self.unit is not None:
                        self.transport.sendto(data, self.unit)  # type: ignore[attr-defined]
                    return
                self.unit = addr
                forwarded.append(data)
                if len(forwarded) > 1:
                    self.transport.sendto(data, md5.address)  # type: ignore[attr-defined]

        transport, _ = await loop.create_datagram_endpoint(Lossy, local_addr=("127.0.0.1", 0))
        relay = transport.get_extra_info("sockname")[:2]
        unit = SipRegistrarClient(ALICE, relay, transport="udp")
        started = time.monotonic()
        registered = await unit.register(HERE)
        took = time.monotonic() - started
        unit.close()
        transport.close()
        assert registered.contact == HERE
        assert forwarded[0] == forwarded[1]  # the same request, byte for byte
        assert 0.4 < took < 3
        await clear(md5, ALICE)
    run(body)


def test_no_answer_gives_up_after_the_timeout() -> None:
    async def body() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            unit = SipRegistrarClient(ALICE, silent.getsockname(), transport="udp",
                                      timeout_s=1.2)
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"127\.0\.0\.1:\d+ \(udp\): no answer "
                                                     r"within 1\.2 s"):
                await unit.register(HERE)
            assert 1.1 < time.monotonic() - started < 3
            silent.setblocking(False)
            requests = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    requests.append(silent.recv(65536))
            assert len(requests) == 2  # sent at 0 and again at T1 = 0.5 s
            unit.close()
    run(body)


def test_a_closed_port_is_a_transport_error() -> None:
    async def body() -> None:
        port = free_port()
        for transport in TRANSPORTS:
            unit = SipRegistrarClient(ALICE, ("127.0.0.1", port), transport=transport,
                                      timeout_s=2)
            with pytest.raises(TransportError, match=f"127.0.0.1:{port} \\({transport}\\)"):
                await unit.register(HERE)
            unit.close()
    run(body)


def test_a_restarted_registrar_is_reached_on_a_new_connection(tmp_path: Path) -> None:
    # In memory only (usrloc db_mode 0), a restart forgets every binding;
    # the unit's next registration opens a new connection and registers again.
    async def body() -> None:
        registrar = start(tmp_path / "first")
        try:
            unit = client(registrar, ALICE, "tcp")
            await unit.register(HERE)
            registrar.stop()
            again = Kamailio(tmp_path / "second", ACCOUNTS, port=registrar.port)
            again.start()
            try:
                registered = await unit.register(HERE)
                assert [b.uri for b in registered.bindings] == [HERE]
                unit.close()
            finally:
                again.stop()
        finally:
            registrar.stop()
    run(body)
