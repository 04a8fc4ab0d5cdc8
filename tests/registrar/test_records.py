"""The registrar's decisions on a virtual clock: stamps, expiry, who may see."""

from __future__ import annotations

from roam.crypto.keys import generate_private_key, public_key
from roam.registrar.messages import Code, Found, Refused, Register
from roam.registrar.records import ANY, WINDOW_S, Record, Registry

A, B, C = (public_key(generate_private_key()) for _ in range(3))
NOW = 1_800_000_000.0


def reg(stamp_s: float, *addresses: str, visible: frozenset[bytes] = frozenset(),
        expires: int = 600) -> Register:
    return Register(int(stamp_s * 1e9), expires, addresses or ("198.18.1.2:7000",), (),
                    visible)


def test_a_newer_registration_replaces_and_an_older_or_equal_one_is_refused() -> None:
    r = Registry()
    assert isinstance(r.register(A, reg(NOW, "198.18.1.2:1"), NOW), Record)
    assert isinstance(r.register(A, reg(NOW + 1, "198.18.1.3:1"), NOW + 1), Record)
    for stamp in (NOW + 1, NOW):
        refused = r.register(A, reg(stamp, "198.18.1.9:1"), NOW + 2)
        assert isinstance(refused, Refused)
        assert refused.code is Code.REPLAYED
    found = r.lookup(A, A, NOW + 2)
    assert isinstance(found, Found)
    assert found.addresses == ("198.18.1.3:1",)


def test_a_clock_far_off_is_refused_both_ways() -> None:
    r = Registry()
    for off in (-WINDOW_S - 1, WINDOW_S + 1):
        refused = r.register(A, reg(NOW + off), NOW)
        assert isinstance(refused, Refused)
        assert refused.code is Code.CLOCK


def test_lookups_by_the_units_own_list_and_by_policy_and_nobody_else() -> None:
    r = Registry({C: frozenset({A})})
    r.register(A, reg(NOW, visible=frozenset({B})), NOW)
    assert isinstance(r.lookup(B, A, NOW), Found)  # on A's own list
    assert isinstance(r.lookup(C, A, NOW), Found)  # the registrar's policy
    other = public_key(generate_private_key())
    hidden, absent = r.lookup(other, A, NOW), r.lookup(other, other, NOW)
    assert isinstance(hidden, Refused)
    assert isinstance(absent, Refused)
    assert hidden.code is absent.code is Code.NOT_FOUND
    anyone = Registry({ANY: frozenset({None})})
    anyone.register(A, reg(NOW), NOW)
    assert isinstance(anyone.lookup(other, A, NOW), Found)


def test_an_expired_record_is_not_found_but_its_stamp_still_refuses_a_replay() -> None:
    r = Registry()
    r.register(A, reg(NOW, expires=10), NOW)
    assert isinstance(r.lookup(A, A, NOW + 11), Refused)
    assert r.expire(NOW + 11) == []  # kept for its stamp within the window
    replay = r.register(A, reg(NOW, expires=10), NOW + 12)
    assert isinstance(replay, Refused)
    assert replay.code is Code.REPLAYED
    assert r.expire(NOW + 10 + WINDOW_S) == [A]


def test_at_most_max_records_units() -> None:
    r = Registry(max_records=2)
    r.register(A, reg(NOW), NOW)
    r.register(B, reg(NOW), NOW)
    full = r.register(C, reg(NOW), NOW)
    assert isinstance(full, Refused)
    assert full.code is Code.FULL
    assert isinstance(r.register(A, reg(NOW + 1), NOW + 1), Record)  # a known unit still may
