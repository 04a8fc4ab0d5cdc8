"""The session's transition table: every (state, input) pair, and the docs kept from it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from roam.core.states import SESSION, SessionInput, SessionState, markdown_table, next_state
from roam.errors import CloseCode, LocalError, ProtocolError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@pytest.mark.parametrize(("state", "event"), list(itertools.product(SessionState, SessionInput)))
def test_every_pair_is_in_the_table_or_an_error_of_its_kind(state: SessionState,
                                                             event: SessionInput) -> None:
    after = SESSION.get((state, event))
    if after is not None:
        assert next_state(state, event) is after
    elif event.from_peer:
        with pytest.raises(ProtocolError) as caught:
            next_state(state, event)
        assert caught.value.code is CloseCode.PROTOCOL_ERROR
        assert state.value in str(caught.value)
    else:
        with pytest.raises(LocalError):
            next_state(state, event)


def test_only_the_peers_frames_may_be_out_of_place() -> None:
    # A local input the table lacks would be a crash waiting for a caller:
    # every local input is decided in every state.
    local = [e for e in SessionInput if not e.from_peer]
    missing = [(s, e) for s in SessionState for e in local if (s, e) not in SESSION]
    assert missing == []


def test_closed_is_final_and_every_state_can_reach_it() -> None:
    for event in SessionInput:
        after = SESSION.get((SessionState.CLOSED, event))
        assert after in (None, SessionState.CLOSED)
    for state in SessionState:
        assert next_state(state, SessionInput.CLOSE) is SessionState.CLOSED


def test_every_state_is_reachable_from_detached() -> None:
    # A new session starts DETACHED until its first transport attaches.
    seen = {SessionState.DETACHED}
    frontier = [SessionState.DETACHED]
    while frontier:
        state = frontier.pop()
        for (source, _), after in SESSION.items():
            if source is state and after not in seen:
                seen.add(after)
                frontier.append(after)
    assert seen == set(SessionState)


def test_the_docs_show_the_table_the_code_has() -> None:
    text = DOCS.read_text()
    found = re.search(r"<!-- session-states:[^\n]*-->\n(.*?)<!-- /session-states -->", text,
                      re.DOTALL)
    assert found, "docs/protocol.md lost its session-states markers"
    assert found.group(1) == markdown_table(), (
        "docs/protocol.md's session table differs from roam/core/states.py: paste the "
        "output of `python -m roam.core.states` between the markers")
