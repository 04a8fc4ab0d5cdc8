"""Fuzz Noise handshakes: at every step, a forged message raises only
ProtocolError and leaves the reader able to take the genuine one."""

from __future__ import annotations

from hypothesis import example, given

from roam.crypto.keys import public_key
from roam.crypto.noise import CIPHERS, HASHES, MAX_MESSAGE, HandshakeState
from roam.errors import ProtocolError, RoamError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import apply_mutations
from tests.fuzz.provider import Provider, built

# Fixed keys: every input must replay the same way for Hypothesis to shrink
# and reproduce it, so nothing here comes from os.urandom.
INIT_S, RESP_S = bytes([1] * 32), bytes([2] * 32)
INIT_E, RESP_E = bytes([3] * 32), bytes([4] * 32)
# Low-order and non-canonical X25519 points (RFC 7748 section 6.1 asks for
# the all-zero shared secret they give to be refused).
P = 2**255 - 19
BAD_POINTS = [n.to_bytes(32, "little") for n in (0, 1, P - 1, P, P + 1, 2**255 - 1)] + [
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bc3ca50c24c5957aee2bf4aab42ef6f5e64bb94a0b4413e4ea6e1ae26f"),
]
PATTERNS = ("NN", "NK", "XX", "IK")
# roam's two suites first: they are what a peer can actually reach.
PROTOCOLS = ["Noise_IK_25519_AESGCM_SHA256", "Noise_IK_25519_ChaChaPoly_BLAKE2s"] + [
    f"Noise_{pattern}_25519_{cipher}_{hash_}"
    for pattern in PATTERNS for cipher in CIPHERS for hash_ in HASHES
]


def sides(name: str, prologue: bytes) -> tuple[HandshakeState, HandshakeState]:
    pattern = name.split("_")[1]
    init_s = INIT_S if pattern in ("XX", "IK") else None
    resp_s = RESP_S if pattern != "NN" else None
    rs = public_key(RESP_S) if pattern in ("NK", "IK") else None
    return (HandshakeState(name, True, prologue, s=init_s, rs=rs, e=INIT_E),
            HandshakeState(name, False, prologue, s=resp_s, e=RESP_E))


def forge(p: Provider, genuine: bytes) -> bytes:
    match p.below(6):
        case 0:
            return apply_mutations(genuine, p.blob(16))
        case 1:
            return genuine[:p.below(len(genuine) + 1)]
        case 2:
            return p.blob(200)
        case 3:
            # A bad point where the message starts with an ephemeral key.
            return p.choice(BAD_POINTS) + genuine[32:]
        case 4:
            return genuine + p.blob(40)
        case _:
            return genuine + bytes(MAX_MESSAGE + 1 - len(genuine) + p.below(3))


Case = tuple[str, bytes, list[bytes], int, bytes]


def build_case(p: Provider) -> Case:
    """(protocol, prologue, payloads, the step whose message is forged, the
    bytes the forgery is read from once the genuine message is known)."""
    name = p.choice(PROTOCOLS)
    steps = 3 if "_XX_" in name else 2
    return name, p.blob(16), [p.blob(40) for _ in range(steps)], p.below(steps), p.rest()


def run(case: Case) -> None:
    name, prologue, payloads, target, forgery = case
    init, resp = sides(name, prologue)
    writer, reader = init, resp
    forged_accepted = False
    for step, payload in enumerate(payloads):
        try:
            message = writer.write_message(payload)
        except RoamError:
            # Only after a forged message was accepted (an unauthenticated
            # ephemeral key can be a bad point, found when we use it).
            assert forged_accepted
            return
        if step == target:
            forged = forge(Provider(forgery), message)
            try:
                got = reader.read_message(forged)
            except ProtocolError:
                pass  # refused, and the reader must be as it was: go on
            else:
                forged_accepted = True
                if forged != message:
                    # Accepted, so nothing in it was authenticated (NN's
                    # first message); what follows may then fail, but only
                    # with ProtocolError.
                    try:
                        for rest in payloads[step + 1:]:
                            writer, reader = reader, writer
                            reader.read_message(writer.write_message(rest))
                    except ProtocolError:
                        pass
                    return
                assert got == payload
                writer, reader = reader, writer
                continue
        assert reader.read_message(message) == payload
        writer, reader = reader, writer
    assert init.complete
    assert resp.complete
    (i_send, i_recv), (r_send, r_recv) = init.split(), resp.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"up")) == b"up"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"down")) == b"down"


@fuzz_settings(0.5)
@given(built(build_case, max_size=300))
# The responder fed an all-zero ephemeral key in roam's own first message.
@example(("Noise_IK_25519_AESGCM_SHA256", b"", [b"", b""], 0, b"\x00\x03\x00\x00"))
def test_forged_handshake_messages_raise_only_protocol_error(case: Case) -> None:
    run(case)
