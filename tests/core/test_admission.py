"""Openings: per-source limits under load, eviction at capacity, sources by /64."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roam.core.admission import Openings, source_of


def test_ipv4_is_its_own_source_and_ipv6_counts_by_64() -> None:
    assert source_of("198.18.0.7") == "198.18.0.7"
    assert source_of("2001:db8:1:2::5") == source_of("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::5") != source_of("2001:db8:1:2::5")
    assert source_of("::ffff:198.18.0.7") == "198.18.0.7"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("not an address") == "not an address"


def test_below_load_one_source_may_hold_any_number() -> None:
    table: Openings[int] = Openings(capacity=100, per_source=5, load=50)
    for key in range(40):
        assert table.admit(key, "a").admitted
    assert table.held_by("a") == 40


def test_under_load_a_source_over_its_limit_is_refused_and_others_are_not() -> None:
    table: Openings[int] = Openings(capacity=100, per_source=5, load=10)
    for key in range(10):
        assert table.admit(key, "flood").admitted
    refused = table.admit(10, "flood")
    assert not refused.admitted
    assert "10 openings from flood" in refused.reason
    assert 10 not in table
    assert table.admit(11, "honest").admitted
    assert refused.evict == ()


def test_at_capacity_the_oldest_of_the_heaviest_source_gives_way() -> None:
    table: Openings[int] = Openings(capacity=6, per_source=100, load=100)
    for key, source in enumerate(["a", "b", "b", "b", "c", "a"]):
        assert table.admit(key, source).admitted
    answer = table.admit(6, "d")
    assert answer.admitted
    assert answer.evict == (1,)  # b holds most; 1 is its oldest
    assert 1 not in table
    assert 6 in table
    assert len(table) == 6


def test_without_eviction_a_full_table_refuses() -> None:
    table: Openings[int] = Openings(capacity=2, per_source=2, evict=False)
    assert table.admit(0, "a").admitted
    assert table.admit(1, "b").admitted
    answer = table.admit(2, "c")
    assert not answer.admitted
    assert "2 openings in progress" in answer.reason


def test_release_forgets_and_is_idempotent() -> None:
    table: Openings[int] = Openings(capacity=4, per_source=4)
    table.admit(0, "a")
    table.release(0)
    table.release(0)
    assert len(table) == 0
    assert table.held_by("a") == 0


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=300))
def test_limits_hold_for_any_sequence(steps: list[tuple[bool, int]]) -> None:
    table: Openings[int] = Openings(capacity=20, per_source=6, load=10)
    live: set[int] = set()
    for key, (arrive, source) in enumerate(steps):
        if arrive:
            before = table.held_by(str(source))
            answer = table.admit(key, str(source))
            live -= set(answer.evict)
            if answer.admitted:
                live.add(key)
            else:
                assert before >= 6
        elif live:
            gone = min(live)
            table.release(gone)
            live.discard(gone)
        assert len(table) == len(live) <= 20
        assert all(k in table for k in live)
