"""The relay's idle uplinks: a restarted server replaces its old ones at once."""

from __future__ import annotations

from roam.relay.uplinks import Uplinks

A, B = b"a" * 32, b"b" * 32
FIRST, RESTARTED = b"1" * 16, b"2" * 16


def test_uplinks_are_taken_newest_first_and_lost_ones_are_forgotten() -> None:
    u = Uplinks()
    assert u.offer(A, FIRST, 1) == []
    assert u.offer(A, FIRST, 2) == []
    assert u.offer(A, FIRST, 3) == []
    u.lost(3)
    u.lost(99)  # not an idle uplink: nothing to do
    assert u.idle() == {A: 2}
    assert u.take(A) == 2
    assert u.take(A) == 1
    assert u.take(A) is None
    assert u.take(B) is None
    assert u.idle() == {}


def test_a_new_instance_of_a_server_replaces_every_old_uplink_at_once() -> None:
    u = Uplinks()
    u.offer(A, FIRST, 1)
    u.offer(A, FIRST, 2)
    u.offer(B, FIRST, 3)
    assert sorted(u.offer(A, RESTARTED, 4)) == [1, 2]
    assert u.take(A) == 4
    assert u.take(B) == 3  # another identity is untouched


def test_more_spares_than_the_limit_close_the_oldest() -> None:
    u = Uplinks(max_per_identity=2)
    u.offer(A, FIRST, 1)
    u.offer(A, FIRST, 2)
    assert u.offer(A, FIRST, 3) == [1]
    assert u.idle() == {A: 2}


def test_held_names_each_instance_and_drop_closes_an_old_instances_uplinks() -> None:
    u = Uplinks()
    u.offer(A, FIRST, 1)
    u.offer(A, FIRST, 2)
    u.offer(B, FIRST, 3)
    assert u.held() == {A: FIRST, B: FIRST}
    assert u.drop(A, RESTARTED) == []  # not the instance held here
    assert sorted(u.drop(A, FIRST)) == [1, 2]
    assert u.held() == {B: FIRST}
    u.lost(1)  # its watcher ends later: nothing left to forget
    assert u.take(A) is None
    assert u.take(B) == 3
    assert u.held() == {}


def test_an_identity_stays_known_while_its_spares_are_all_taken() -> None:
    u = Uplinks()
    assert not u.known(A)
    u.offer(A, FIRST, 1)
    assert u.take(A) == 1
    assert u.known(A)
    assert u.held() == {}
    u.drop(A, FIRST)
    assert not u.known(A)
