from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from roam.crypto import cpu
from roam.crypto.keys import generate_private_key, public_key
from roam.crypto.noise import (
    MAX_NONCE,
    CipherState,
    HandshakeState,
    NoiseUsageError,
    protocol_name,
)
from roam.errors import CryptoError, ProtocolError, RoamError

VECTORS_FILE = Path(__file__).parent.parent / "data" / "noise-25519.json"
VECTORS = [
    v for v in json.loads(VECTORS_FILE.read_text())["vectors"] if "psk" not in v["protocol_name"]
]


def _hex(vector: dict[str, Any], field: str) -> bytes | None:
    value = vector.get(field)
    return None if value is None else bytes.fromhex(value)


def _sides(vector: dict[str, Any]) -> tuple[HandshakeState, HandshakeState]:
    name = vector["protocol_name"]
    sides = []
    for prefix, initiator in (("init", True), ("resp", False)):
        sides.append(
            HandshakeState(
                name,
                initiator,
                prologue=_hex(vector, f"{prefix}_prologue") or b"",
                s=_hex(vector, f"{prefix}_static"),
                rs=_hex(vector, f"{prefix}_remote_static"),
                e=_hex(vector, f"{prefix}_ephemeral"),
            )
        )
    return sides[0], sides[1]


ONE_WAY_FILE = Path(__file__).parent.parent / "data" / "noise-x-25519.json"
ONE_WAY = json.loads(ONE_WAY_FILE.read_text())["vectors"]


def test_one_way_vector_file_has_every_cipher_and_hash() -> None:
    assert len(ONE_WAY) == 8
    assert {v["protocol_name"].split("_")[1] for v in ONE_WAY} == {"X"}


@pytest.mark.parametrize("vector", ONE_WAY, ids=[v["protocol_name"] for v in ONE_WAY])
def test_cacophony_one_way_vector(vector: dict[str, Any]) -> None:
    # One handshake message; every transport message after it goes from the
    # initiator too (split() gives each side its sending key first).
    init, resp = _sides(vector)
    messages = vector["messages"]
    first = messages[0]
    ciphertext = bytes.fromhex(first["ciphertext"])
    assert init.write_message(bytes.fromhex(first["payload"])) == ciphertext
    assert resp.read_message(ciphertext) == bytes.fromhex(first["payload"])
    assert init.complete
    assert resp.complete
    assert init.handshake_hash == resp.handshake_hash == bytes.fromhex(vector["handshake_hash"])
    assert resp.remote_static == public_key(bytes.fromhex(vector["init_static"]))
    send, receive = init.split()[0], resp.split()[1]
    for message in messages[1:]:
        payload, expected = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        assert send.encrypt_with_ad(b"", payload) == expected
        assert receive.decrypt_with_ad(b"", expected) == payload


def test_vector_file_has_every_supported_combination() -> None:
    # Guards against the parametrized test below silently running on nothing.
    assert len(VECTORS) == 32
    assert {v["protocol_name"].split("_")[1] for v in VECTORS} == {"NN", "NK", "XX", "IK"}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    init, resp = _sides(vector)
    ciphers: dict[int, tuple[CipherState, CipherState]] = {}
    # Senders alternate through the whole list, initiator first; once the
    # handshake completes the remaining messages are transport messages.
    for i, message in enumerate(vector["messages"]):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        if not sender.complete:
            assert sender.write_message(payload) == expected
            assert receiver.read_message(expected) == payload
        else:
            if not ciphers:
                ciphers = {id(init): init.split(), id(resp): resp.split()}
            assert ciphers[id(sender)][0].encrypt_with_ad(b"", payload) == expected
            assert ciphers[id(receiver)][1].decrypt_with_ad(b"", expected) == payload
    assert init.complete
    assert resp.complete
    assert ciphers, "vector has no transport messages"
    assert init.handshake_hash == bytes.fromhex(vector["handshake_hash"])
    assert resp.handshake_hash == init.handshake_hash
    if vector.get("resp_static"):
        assert init.remote_static == public_key(bytes.fromhex(vector["resp_static"]))
    if vector.get("init_static"):
        assert resp.remote_static == public_key(bytes.fromhex(vector["init_static"]))


# Helpers for the tests that do not use vectors


def _ik_pair(
    cipher: str = "ChaChaPoly", hash_: str = "BLAKE2s"
) -> tuple[HandshakeState, HandshakeState, bytes, bytes]:
    client_s, server_s = generate_private_key(), generate_private_key()
    name = protocol_name(cipher, hash_)
    init = HandshakeState(name, True, b"roam", s=client_s, rs=public_key(server_s))
    resp = HandshakeState(name, False, b"roam", s=server_s)
    return init, resp, client_s, server_s


def _handshake(
    init: HandshakeState, resp: HandshakeState
) -> tuple[tuple[CipherState, CipherState], tuple[CipherState, CipherState]]:
    writer, reader = init, resp
    while not (init.complete and resp.complete):
        reader.read_message(writer.write_message(b""))
        writer, reader = reader, writer
    return init.split(), resp.split()


def test_protocol_name_helper() -> None:
    assert protocol_name("AESGCM", "SHA256") == "Noise_IK_25519_AESGCM_SHA256"


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
@pytest.mark.parametrize("hash_", ["SHA256", "SHA512", "BLAKE2s", "BLAKE2b"])
def test_ik_round_trip(cipher: str, hash_: str) -> None:
    init, resp, client_s, server_s = _ik_pair(cipher, hash_)
    assert resp.read_message(init.write_message(b"hello")) == b"hello"
    assert resp.remote_static == public_key(client_s)
    assert init.read_message(resp.write_message(b"welcome")) == b"welcome"
    assert init.remote_static == public_key(server_s)
    (i_send, i_recv), (r_send, r_recv) = init.split(), resp.split()
    assert r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", b"up")) == b"up"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"down")) == b"down"


def test_tampered_handshake_message_is_refused_and_state_kept() -> None:
    init, resp, _, _ = _ik_pair()
    message = init.write_message(b"payload")
    for i in (0, 40, len(message) - 1):
        tampered = bytearray(message)
        tampered[i] ^= 0x01
        with pytest.raises(CryptoError):
            resp.read_message(bytes(tampered))
    # A refused message leaves the responder able to take the genuine one.
    assert resp.read_message(message) == b"payload"


def test_tampered_transport_message_is_refused_without_advancing_nonce() -> None:
    (send, _), (_, recv) = _handshake(*_ik_pair()[:2])
    record = send.encrypt_with_ad(b"", b"data")
    with pytest.raises(CryptoError, match="decryption failed"):
        recv.decrypt_with_ad(b"", record[:-1] + bytes([record[-1] ^ 1]))
    with pytest.raises(CryptoError):
        recv.decrypt_with_ad(b"other ad", record)
    with pytest.raises(CryptoError, match="shorter than its tag"):
        recv.decrypt_with_ad(b"", record[:5])
    assert recv.n == 0
    assert recv.decrypt_with_ad(b"", record) == b"data"
    assert recv.n == 1


def test_wrong_pinned_server_key_fails_at_responder() -> None:
    name = protocol_name("AESGCM", "SHA256")
    server_s, impostor_s = generate_private_key(), generate_private_key()
    init = HandshakeState(name, True, s=generate_private_key(), rs=public_key(impostor_s))
    resp = HandshakeState(name, False, s=server_s)
    with pytest.raises(CryptoError):
        resp.read_message(init.write_message(b"hi"))


def test_prologue_mismatch_fails() -> None:
    name = protocol_name("ChaChaPoly", "SHA256")
    server_s = generate_private_key()
    init = HandshakeState(name, True, b"v1", s=generate_private_key(), rs=public_key(server_s))
    resp = HandshakeState(name, False, b"v2", s=server_s)
    with pytest.raises(CryptoError):
        resp.read_message(init.write_message(b""))


@pytest.mark.parametrize("point", [bytes(32), (1).to_bytes(32, "little")])
def test_low_order_ephemeral_is_refused(point: bytes) -> None:
    init, resp, _, _ = _ik_pair()
    message = init.write_message(b"")
    with pytest.raises(CryptoError, match="bad DH key"):
        resp.read_message(point + message[32:])


def test_low_order_ephemeral_refused_by_initiator() -> None:
    name = "Noise_NN_25519_ChaChaPoly_SHA256"
    init, resp = HandshakeState(name, True), HandshakeState(name, False)
    resp.read_message(init.write_message(b""))
    reply = resp.write_message(b"")
    with pytest.raises(CryptoError, match="bad DH key"):
        init.read_message(bytes(32) + reply[32:])


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
def test_rekey_matches_spec_and_is_deterministic(cipher: str) -> None:
    key = bytes(range(32))
    aead = AESGCM(key) if cipher == "AESGCM" else ChaCha20Poly1305(key)
    # The all-ones nonce reads the same in either byte order.
    expected_key = aead.encrypt(b"\x00" * 4 + b"\xff" * 8, bytes(32), b"")[:32]
    a, b = CipherState(cipher, key), CipherState(cipher, key)
    a.n = b.n = 7
    a.rekey()
    b.rekey()
    assert a.n == 7
    reference = CipherState(cipher, expected_key)
    reference.n = 7
    ct = a.encrypt_with_ad(b"ad", b"after rekey")
    assert ct == reference.encrypt_with_ad(b"ad", b"after rekey")
    assert b.decrypt_with_ad(b"ad", ct) == b"after rekey"
    assert ct != CipherState(cipher, key).encrypt_with_nonce(7, b"ad", b"after rekey")


def test_rekey_on_both_sides_of_a_session() -> None:
    (send, _), (_, recv) = _handshake(*_ik_pair("AESGCM", "SHA512")[:2])
    old = send.encrypt_with_ad(b"", b"x")
    assert recv.decrypt_with_ad(b"", old) == b"x"
    send.rekey()
    recv.rekey()
    new = send.encrypt_with_ad(b"", b"x")
    assert recv.decrypt_with_ad(b"", new) == b"x"
    assert send.n == recv.n == 2


def test_explicit_nonce_forms_do_not_touch_n() -> None:
    key = bytes(32)
    cs = CipherState("ChaChaPoly", key)
    counter = CipherState("ChaChaPoly", key)
    counter.n = 5
    record = cs.encrypt_with_nonce(5, b"hdr", b"body")
    assert record == counter.encrypt_with_ad(b"hdr", b"body")
    assert cs.decrypt_with_nonce(5, b"hdr", record) == b"body"
    with pytest.raises(CryptoError):
        cs.decrypt_with_nonce(6, b"hdr", record)
    assert cs.n == 0


def test_copy_is_independent() -> None:
    original = CipherState("AESGCM", bytes(32))
    original.n = 3
    clone = original.copy()
    assert clone.n == 3
    clone.rekey()
    clone.n = 9
    assert original.n == 3
    record = original.encrypt_with_nonce(0, b"", b"x")
    assert CipherState("AESGCM", bytes(32)).decrypt_with_nonce(0, b"", record) == b"x"
    with pytest.raises(CryptoError):
        clone.decrypt_with_nonce(0, b"", record)


def test_max_nonce_is_refused_for_data() -> None:
    cs = CipherState("AESGCM", bytes(32))
    with pytest.raises(NoiseUsageError):
        cs.encrypt_with_nonce(MAX_NONCE, b"", b"x")
    with pytest.raises(CryptoError):
        cs.decrypt_with_nonce(MAX_NONCE, b"", bytes(20))
    cs.n = MAX_NONCE - 1
    cs.encrypt_with_ad(b"", b"last")
    with pytest.raises(NoiseUsageError):
        cs.encrypt_with_ad(b"", b"one too many")


def test_cipher_state_without_key() -> None:
    cs = CipherState("ChaChaPoly", None)
    assert not cs.has_key()
    assert cs.encrypt_with_ad(b"", b"clear") == b"clear"
    with pytest.raises(NoiseUsageError):
        cs.encrypt_with_nonce(0, b"", b"x")
    with pytest.raises(NoiseUsageError):
        cs.rekey()


def test_out_of_turn_and_after_completion() -> None:
    init, resp, _, _ = _ik_pair()
    with pytest.raises(NoiseUsageError, match="not our turn"):
        init.read_message(b"x" * 100)
    with pytest.raises(NoiseUsageError, match="not our turn"):
        resp.write_message(b"")
    with pytest.raises(NoiseUsageError):
        init.split()
    with pytest.raises(NoiseUsageError):
        _ = init.handshake_hash
    _handshake(init, resp)
    with pytest.raises(NoiseUsageError, match="complete"):
        init.write_message(b"")
    with pytest.raises(NoiseUsageError, match="already"):
        init.split()


def test_oversized_messages() -> None:
    init, resp, _, _ = _ik_pair()
    with pytest.raises(NoiseUsageError):
        init.write_message(bytes(65535))
    message = init.write_message(b"fits")  # a refused write leaves the state usable
    with pytest.raises(ProtocolError, match="exceeds"):
        resp.read_message(bytes(65536))
    assert resp.read_message(message) == b"fits"


@pytest.mark.parametrize(
    "name",
    [
        "Noise_XXpsk3_25519_ChaChaPoly_SHA256",
        "Noise_N_25519_ChaChaPoly_SHA256",
        "Noise_KK_25519_ChaChaPoly_SHA256",
        "Noise_IK_448_ChaChaPoly_SHA256",
        "Noise_IK_25519_AESGCMSIV_SHA256",
        "Noise_IK_25519_ChaChaPoly_MD5",
        "Noise_IK_25519_ChaChaPoly",
        "Noise_IK_25519_ChaChaPoly_SHA256_extra",
        "noise_IK_25519_ChaChaPoly_SHA256",
        "",
    ],
)
def test_unsupported_protocol_names(name: str) -> None:
    with pytest.raises(ValueError, match=r"Noise|unsupported"):
        HandshakeState(name, True, s=generate_private_key(), rs=bytes(32))


def test_keys_must_fit_the_pattern() -> None:
    s = generate_private_key()
    with pytest.raises(ValueError, match="requires remote static"):
        HandshakeState(protocol_name("AESGCM", "SHA256"), True, s=s)
    with pytest.raises(ValueError, match="takes no remote static"):
        HandshakeState("Noise_XX_25519_AESGCM_SHA256", True, s=s, rs=public_key(s))
    with pytest.raises(ValueError, match="takes no local static"):
        HandshakeState("Noise_NN_25519_AESGCM_SHA256", True, s=s)
    with pytest.raises(ValueError, match="32"):
        HandshakeState("Noise_XX_25519_AESGCM_SHA256", True, s=s[:31])


def _reader_at(position: str) -> tuple[HandshakeState, bytes]:
    """A handshake state waiting to read, and the genuine message it expects."""
    if position == "IK responder":
        init, resp, _, _ = _ik_pair()
        return resp, init.write_message(b"payload")
    if position == "IK initiator":
        init, resp, _, _ = _ik_pair()
        resp.read_message(init.write_message(b""))
        return init, resp.write_message(b"payload")
    name = "Noise_XX_25519_AESGCM_BLAKE2b"
    init = HandshakeState(name, True, s=generate_private_key())
    resp = HandshakeState(name, False, s=generate_private_key())
    resp.read_message(init.write_message(b""))
    if position == "XX initiator":
        return init, resp.write_message(b"payload")
    init.read_message(resp.write_message(b""))
    return resp, init.write_message(b"payload")


POSITIONS = ["IK responder", "IK initiator", "XX initiator", "XX responder"]


@pytest.mark.parametrize("position", POSITIONS)
def test_every_truncation_is_refused(position: str) -> None:
    reader, message = _reader_at(position)
    for length in range(len(message)):
        with pytest.raises(RoamError):
            reader.read_message(message[:length])
    assert reader.read_message(message) == b"payload"


@given(
    position=st.sampled_from(POSITIONS),
    garbage=st.binary(max_size=400),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4),
    cut=st.integers(min_value=0, max_value=500),
)
def test_garbage_raises_only_roam_errors(
    position: str, garbage: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    reader, message = _reader_at(position)
    mutated = bytearray(message[:cut])
    for index, mask in flips:
        if mutated:
            mutated[index % len(mutated)] ^= mask
    for attempt in (garbage, bytes(mutated)):
        if attempt == message:
            continue
        # Every byte of these messages is authenticated, so nothing else may pass.
        with pytest.raises(RoamError):
            reader.read_message(attempt)
    assert reader.read_message(message) == b"payload"


@given(data=st.binary(max_size=200), nonce=st.integers(min_value=0, max_value=2**64))
def test_transport_garbage_raises_crypto_error(data: bytes, nonce: int) -> None:
    cs = CipherState("AESGCM", bytes(range(32)))
    with pytest.raises(CryptoError):
        cs.decrypt_with_nonce(nonce, b"", data)


def test_parse_cpuinfo() -> None:
    assert cpu.parse_cpuinfo_aes("processor\t: 0\nflags\t\t: fpu sse2 aes avx\n")
    assert cpu.parse_cpuinfo_aes("Features\t: fp asimd aes pmull sha1\n")
    assert not cpu.parse_cpuinfo_aes("flags\t\t: fpu sse2 avx vaes-like\n")
    assert not cpu.parse_cpuinfo_aes("model name\t: aes\n")
    assert cpu.default_cipher() in ("AESGCM", "ChaChaPoly")


def test_datagram_keys_pair_up_and_differ_from_the_stream_keys() -> None:
    init, resp, _, _ = _ik_pair()
    with pytest.raises(NoiseUsageError):
        init.datagram_keys()
    (i_send, _), _ = _handshake(init, resp)
    (d_send, _), (_, r_drecv) = init.datagram_keys(), resp.datagram_keys()
    sealed = d_send.encrypt_with_nonce(7, b"", b"datagram")
    assert r_drecv.decrypt_with_nonce(7, b"", sealed) == b"datagram"
    assert i_send.encrypt_with_nonce(7, b"", b"datagram") != sealed
