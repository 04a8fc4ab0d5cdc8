"""roam.core.paths: the path manager's decisions on a virtual clock: suspect
paths and their backoff, forgiveness, links that come back, address changes."""

from __future__ import annotations

import pytest

from roam.core.paths import SUSPECT_FIRST, SUSPECT_MAX, PathDecisions, Rebind
from roam.links.state import LinkState
from roam.policy.paths import parse_paths
from roam.policy.policy import Decision, NoUsablePath, Policy


def _link(name: str, up: bool = True, *addresses: str) -> LinkState:
    return LinkState(name, present=True, up=up, addresses=addresses or (f"198.18.{len(name)}.2",))


def _decisions(dwell: float = 2.0) -> PathDecisions:
    policy = Policy(parse_paths(["wifi:dev=wifi,priority=10", "cell:dev=cell,priority=20",
                                 "lan:dev=lan,priority=30,redundant=no"]), dwell=dwell)
    d = PathDecisions(policy)
    d.links_changed({"wifi": _link("wifi"), "cell": _link("cell"), "lan": _link("lan")}, None)
    return d


def test_a_failure_makes_a_path_suspect_doubling_up_to_a_minute() -> None:
    d = _decisions()
    seen = [d.failed("wifi", "silent for 2.0 s", now=100.0) for _ in range(8)]
    assert seen == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert seen[-1] == SUSPECT_MAX
    suspect = d.suspect("wifi", 100.0)
    assert suspect is not None
    assert (suspect.until, suspect.reason) == (160.0, "silent for 2.0 s")
    assert d.suspect("wifi", 160.0) is None  # it ran out


def test_a_suspect_path_does_not_work_for_the_policy_until_it_runs_out() -> None:
    d = _decisions()
    d.failed("wifi", "connect timed out", now=0.0)
    assert d.effective(1.0)["wifi"].up is False
    assert d.effective(SUSPECT_FIRST)["wifi"].up is True
    assert d.ranked(1.0, "wifi")[0] == "cell"
    assert d.backup(1.0, "cell") == "lan"  # wifi is suspect: not a backup now


def test_a_failure_the_link_explains_is_not_held_against_the_path() -> None:
    d = _decisions()
    d.links_changed({"wifi": _link("wifi", False), "cell": _link("cell"),
                     "lan": _link("lan")}, "wifi")
    assert d.failed("wifi", "transport lost", now=0.0) is None
    assert d.suspects == {}


def test_working_again_forgives_the_outage_down_to_the_first_step() -> None:
    d = _decisions()
    for _ in range(5):  # an outage every path shared
        d.failed("wifi", "connect timed out", now=10.0)
        d.failed("cell", "connect timed out", now=10.0)
    d.failed("lan", "connect timed out", now=0.0)  # run out by now
    d.worked("cell", now=11.0)
    assert "cell" not in d.suspects
    assert "lan" not in d.suspects
    wifi = d.suspects["wifi"]
    assert (wifi.backoff, wifi.until) == (SUSPECT_FIRST, 11.0 + SUSPECT_FIRST)


def test_a_link_that_comes_back_is_tried_afresh() -> None:
    d = _decisions()
    d.failed("wifi", "silent", now=0.0)
    down = {"wifi": _link("wifi", False), "cell": _link("cell"), "lan": _link("lan")}
    assert d.links_changed(down, "cell") is None
    assert "wifi" in d.suspects  # down does not clear it...
    d.links_changed({**down, "wifi": _link("wifi")}, "cell")
    assert "wifi" not in d.suspects  # ...coming back up does


def test_the_active_path_losing_its_address_asks_for_a_rebind() -> None:
    d = _decisions()
    links = {"wifi": _link("wifi", True, "198.18.1.2"), "cell": _link("cell"),
             "lan": _link("lan")}
    d.links_changed(links, "wifi")
    moved = {**links, "wifi": _link("wifi", True, "198.18.1.7")}
    assert d.links_changed(moved, "wifi") == Rebind("wifi", "wifi lost address 198.18.1.2")
    # Another path's address change, or an address added, moves nothing.
    assert d.links_changed({**moved, "cell": _link("cell", True, "198.18.9.9")}, "wifi") is None
    assert d.links_changed({**moved, "wifi": _link("wifi", True, "198.18.1.7", "198.18.1.8")},
                           "wifi") is None
    # No address at all is the link's state, not a move to make.
    assert d.links_changed({**moved, "wifi": LinkState("wifi", True, True, ())}, "wifi") is None


def test_backup_passes_over_excluded_paths() -> None:
    d = _decisions()
    d.failed("cell", "silent", now=0.0)
    assert d.backup(1.0, "wifi") == "lan"
    assert d.backup(1.0, "wifi", frozenset({"lan"})) is None


@pytest.mark.parametrize(("pinned", "expected"), [(None, "wifi"), ("cell", None)])
def test_decide_moves_to_the_preferred_path_unless_a_working_one_is_pinned(
        pinned: str | None, expected: str | None) -> None:
    d = _decisions(dwell=0.0)
    decision = d.decide(10.0, "cell", 0.0, pinned)
    if expected is None:
        assert decision is None
    else:
        assert isinstance(decision, Decision)
        assert decision.target == expected


def test_decide_stays_on_the_current_path_and_says_when_none_is_usable() -> None:
    d = _decisions(dwell=0.0)
    assert d.decide(10.0, "wifi", 0.0, None) is None
    for name in ("wifi", "cell", "lan"):
        d.failed(name, "silent", now=10.0)
    assert isinstance(d.decide(10.5, "wifi", 0.0, None), NoUsablePath)
    assert not d.pinned_works("cell", 10.5)
    assert d.pinned_works("cell", 10.0 + SUSPECT_FIRST)
