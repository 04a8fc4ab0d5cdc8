"""The transition tables: every (state, input) pair of each, and the docs kept from them."""

from __future__ import annotations

import itertools
import re
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from roam.core.states import (
    CHANNEL,
    HANDOVER,
    SESSION,
    TABLES,
    TRANSPORT,
    ChannelInput,
    ChannelState,
    Input,
    SessionInput,
    SessionState,
    Table,
    next_state,
)
from roam.errors import CloseCode, LocalError, ProtocolError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
AnyTable = Table[Any, Any]
PAIRS = [(table, state, event) for table in TABLES.values()
         for state, event in itertools.product(table.states, table.inputs)]


@pytest.mark.parametrize(("table", "state", "event"), PAIRS,
                         ids=[f"{t.name}-{s.name}-{e.name}" for t, s, e in PAIRS])
def test_every_pair_is_in_the_table_or_an_error_of_its_kind(table: AnyTable, state: Enum,
                                                             event: Input) -> None:
    after = table.transitions.get((state, event))
    if after is not None:
        assert table.next(state, event) is after
    elif event.from_peer:
        with pytest.raises(ProtocolError) as caught:
            table.next(state, event, "thing 7")
        assert caught.value.code is CloseCode.PROTOCOL_ERROR
        assert "thing 7" in str(caught.value)
        assert state.value in str(caught.value)
    else:
        with pytest.raises(LocalError):
            table.next(state, event)


def test_the_session_has_no_gap_for_local_inputs() -> None:
    # A local input the table lacks would be a crash waiting for a caller:
    # every local input of the session is decided in every state.
    local = [e for e in SessionInput if not e.from_peer]
    missing = [(s, e) for s in SessionState for e in local if (s, e) not in SESSION.transitions]
    assert missing == []


def test_a_channel_refuses_only_what_no_honest_caller_does() -> None:
    # The local inputs a channel table lacks are the ones the session never
    # makes: opening a number twice, accepting our own OPEN, a FIN twice.
    local = [e for e in ChannelInput if not e.from_peer]
    missing = {(s, e) for s in ChannelState for e in local
               if (s, e) not in CHANNEL.transitions}
    assert (ChannelState.OPEN, ChannelInput.SEND_FIN) not in missing
    assert (ChannelState.REQUESTED, ChannelInput.ACCEPT) not in missing
    assert (ChannelState.OPENING, ChannelInput.ACCEPT) in missing
    assert (ChannelState.HALF_CLOSED_LOCAL, ChannelInput.SEND_FIN) in missing


@pytest.mark.parametrize("table", list(TABLES.values()), ids=list(TABLES))
def test_closed_is_final_and_reachable_from_every_state(table: AnyTable) -> None:
    closed = table.states["GONE" if table is TRANSPORT else
                          "FAILED" if table is HANDOVER else "CLOSED"]
    for event in table.inputs:
        assert table.transitions.get((closed, event)) in (None, closed)
    # Every state but the unused number's (and a handover that is done)
    # reaches CLOSED in one step.
    for state in table.states:
        if state.name not in ("IDLE", "CLOSED", "GONE", "DONE", "FAILED"):
            assert closed in {after for (s, _), after in table.transitions.items()
                              if s is state}, state


@pytest.mark.parametrize(("table", "start"), [(SESSION, SessionState.DETACHED),
                                              (CHANNEL, ChannelState.IDLE)],
                         ids=["session", "channel"])
def test_every_state_is_reachable_from_the_start(table: AnyTable, start: Enum) -> None:
    seen = {start}
    frontier = [start]
    while frontier:
        state = frontier.pop()
        for (source, _), after in table.transitions.items():
            if source is state and after not in seen:
                seen.add(after)
                frontier.append(after)
    assert seen == set(table.states)


def test_next_state_is_the_session_table() -> None:
    assert next_state(SessionState.RESUMING, SessionInput.RESUME) is SessionState.ATTACHED
    with pytest.raises(ProtocolError, match="RESUME or RESUMED on a session with no transport"):
        next_state(SessionState.DETACHED, SessionInput.RESUME)


@pytest.mark.parametrize("name", list(TABLES))
def test_the_docs_show_the_tables_the_code_has(name: str) -> None:
    text = DOCS.read_text()
    found = re.search(rf"<!-- {name}-states:[^\n]*-->\n(.*?)<!-- /{name}-states -->", text,
                      re.DOTALL)
    assert found, f"docs/protocol.md lost its {name}-states markers"
    assert found.group(1) == TABLES[name].document(), (
        f"docs/protocol.md's {name} table differs from roam/core/states.py: run "
        "`python -m roam.core.states --write docs/protocol.md`")
