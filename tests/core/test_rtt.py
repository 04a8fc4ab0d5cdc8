"""The RTT estimator against RFC 6298."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core import rtt
from roam.core.rtt import INITIAL_RTO, MAX_RTO, MIN_RTO, RttEstimator

ALPHA = 1 / 8
BETA = 1 / 4
K = 4
G = rtt._G


class Rfc6298:
    """RFC 6298 section 2, written out directly, with roam's RTO bounds."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, r: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2  # (2.2)
        else:
            # (2.3): RTTVAR is updated with the SRTT from before this sample.
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - r)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * r

    @property
    def rto(self) -> float:
        if self.srtt is None:
            return 1.0  # (2.1)
        return min(MAX_RTO, max(MIN_RTO, self.srtt + max(G, K * self.rttvar)))


def estimator(*samples: float) -> RttEstimator:
    est = RttEstimator()
    for s in samples:
        est.sample(s)
    return est


def test_constants() -> None:
    assert INITIAL_RTO == 1.0
    assert MIN_RTO == 0.2
    assert MAX_RTO == 60.0
    assert 0 < G < MIN_RTO


def test_before_any_sample() -> None:
    est = RttEstimator()
    assert est.rto == 1.0
    assert est.srtt is None
    assert est.rttvar == 0.0
    assert est.latest is None
    assert est.min_rtt is None


@pytest.mark.parametrize("r", [0.01, 0.1, 0.25, 1.0, 3.0])
def test_first_sample(r: float) -> None:
    est = estimator(r)
    assert est.srtt == r
    assert est.rttvar == r / 2
    # RTO = SRTT + max(G, K * RTTVAR) = 3R, within the bounds.
    assert est.rto == pytest.approx(min(MAX_RTO, max(MIN_RTO, 3 * r)))
    assert est.latest == r
    assert est.min_rtt == r


def test_second_sample_uses_the_old_srtt_for_rttvar() -> None:
    est = estimator(0.5, 0.3)
    # RTTVAR = 3/4 * 0.25 + 1/4 * |0.5 - 0.3|; SRTT = 7/8 * 0.5 + 1/8 * 0.3
    assert est.rttvar == pytest.approx(0.2375)
    assert est.srtt == pytest.approx(0.475)
    assert est.rto == pytest.approx(0.475 + 4 * 0.2375)


def test_worked_sequence() -> None:
    est = estimator(0.1, 0.2, 0.1)
    # After 0.1: srtt 0.1, rttvar 0.05.
    # After 0.2: rttvar 0.0375 + 0.025 = 0.0625, srtt 0.0875 + 0.025 = 0.1125.
    # After 0.1: rttvar 0.046875 + 0.003125 = 0.05, srtt 0.0984375 + 0.0125 = 0.1109375.
    assert est.rttvar == pytest.approx(0.05)
    assert est.srtt == pytest.approx(0.1109375)
    assert est.rto == pytest.approx(0.1109375 + 0.2)


def test_steady_samples_converge() -> None:
    est = estimator(*[0.5] * 200)
    assert est.srtt == pytest.approx(0.5)
    assert est.rttvar == pytest.approx(0.0, abs=1e-12)
    # With no variance left, the clock granularity G is what is added.
    assert est.rto == pytest.approx(0.5 + G)


def test_rto_floor() -> None:
    assert estimator(0.0).rto == MIN_RTO
    assert estimator(0.001).rto == MIN_RTO
    assert estimator(*[0.01] * 50).rto == MIN_RTO
    assert estimator(MIN_RTO / 3 - 0.001).rto == MIN_RTO


def test_rto_just_above_the_floor() -> None:
    assert estimator(0.1).rto == pytest.approx(0.3)


def test_rto_ceiling() -> None:
    assert estimator(MAX_RTO / 3 + 1).rto == MAX_RTO
    assert estimator(100.0).rto == MAX_RTO
    assert estimator(1000.0, 1000.0, 1000.0).rto == MAX_RTO
    assert estimator(19.0).rto == pytest.approx(57.0)


def test_rto_recovers_after_a_spike() -> None:
    est = estimator(0.05, 0.05, 0.05)
    before = est.rto
    est.sample(5.0)
    assert est.rto > before
    for _ in range(100):
        est.sample(0.05)
    assert est.rto == pytest.approx(before, abs=0.01)


def test_negative_sample_counts_as_zero() -> None:
    est = estimator(-1.0)
    assert est.srtt == 0.0
    assert est.rttvar == 0.0
    assert est.latest == 0.0
    assert est.min_rtt == 0.0
    assert est.rto == MIN_RTO


def test_min_rtt_and_latest() -> None:
    est = RttEstimator()
    for r, lowest in [(0.3, 0.3), (0.5, 0.3), (0.2, 0.2), (0.9, 0.2), (0.2, 0.2), (0.15, 0.15)]:
        est.sample(r)
        assert est.latest == r
        assert est.min_rtt == lowest


samples = st.lists(
    st.floats(min_value=-1.0, max_value=200.0, allow_nan=False), min_size=1, max_size=50
)


@settings(max_examples=200, deadline=None)
@given(samples)
def test_matches_rfc6298(values: list[float]) -> None:
    est = RttEstimator()
    model = Rfc6298()
    assert est.rto == model.rto
    for r in values:
        est.sample(r)
        model.sample(max(r, 0.0))
        assert est.srtt == pytest.approx(model.srtt)
        assert est.rttvar == pytest.approx(model.rttvar)
        assert est.rto == pytest.approx(model.rto)
        assert MIN_RTO <= est.rto <= MAX_RTO
    assert est.latest == max(values[-1], 0.0)
    assert est.min_rtt == max(min(values), 0.0)


def test_a_new_path_forgets_the_least_rtt_only() -> None:
    est = RttEstimator()
    for r in (0.02, 0.0004, 0.03):
        est.sample(r)
    srtt, rto = est.srtt, est.rto
    est.new_path()
    assert est.min_rtt is None
    assert (est.srtt, est.rto) == (srtt, rto)
    est.sample(0.05)
    assert est.min_rtt == 0.05
