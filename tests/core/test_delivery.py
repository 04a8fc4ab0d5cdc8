"""roam.core.delivery: readings of TCP's delivery count, dated so that a
black hole is found no later than without them."""

from __future__ import annotations

import math

from roam.core.delivery import Delivery


def test_nothing_is_known_before_the_first_reading() -> None:
    d = Delivery()
    assert not d.reports
    assert d.at == -math.inf
    assert d.due(since=1.0, stall_after=0.15, interval=0.03) is None


def test_growth_is_dated_at_the_reading_before_it() -> None:
    d = Delivery()
    d.reading(1.00, 10)
    assert d.at == -math.inf  # one reading shows no growth
    d.reading(1.03, 14)
    assert d.at == 1.00  # it grew after 1.00, perhaps just after
    d.reading(1.06, 14)
    assert d.at == 1.00  # no growth: nothing new
    d.reading(1.09, 15)
    assert d.at == 1.06


def test_nothing_in_flight_means_the_peers_host_took_it_all_now() -> None:
    d = Delivery()
    d.reading(2.0, None)
    assert d.at == 2.0
    d.reading(2.1, 7)  # in flight again: a count to compare the next with
    assert d.at == 2.0
    d.reading(2.2, 7)
    assert d.at == 2.0


def test_an_old_baseline_never_moves_the_date_back() -> None:
    d = Delivery()
    d.reading(1.0, 5)
    d.reading(1.5, None)
    d.reading(1.6, 5)
    d.reading(1.7, 9)
    assert d.at == 1.6
    d.reading(1.8, 12)
    assert d.at == 1.7


def test_a_first_reading_halfway_then_one_every_interval() -> None:
    d = Delivery()
    d.reading(0.0, 1)
    assert d.due(since=10.0, stall_after=0.2, interval=0.03) == 10.1
    d.reading(10.1, 1)
    assert math.isclose(d.due(since=10.0, stall_after=0.2, interval=0.03) or 0, 10.13)
