"""The session's states and every transition between them, in one table.

h11's `_state.py` is the model: a state changes only through `next_state`,
which looks the pair (state, input) up in `SESSION`; a pair that is not
there is an error, a `ProtocolError` with its wire code when the input came
from the peer, a `LocalError` when it was this side's own call. The table
is the specification: docs/protocol.md's session table is generated from it
(`python -m roam.core.states`), and a test walks every (state, input) pair.

Inputs a state ignores map to that same state (listed, so that "ignored"
is a decision and not an omission).
"""

from __future__ import annotations

import sys
from enum import Enum

from roam.errors import CloseCode, LocalError, ProtocolError


class SessionState(Enum):
    ATTACHED = "attached"
    # Soft handover (claim 5): the old transport is being emptied. Client:
    # HANDOVER_BEGIN sent, no new reliable frames until it resumes elsewhere.
    # Server: HANDOVER_READY sent as its last frame on the old transport.
    DRAINING = "draining"
    RESUMING = "resuming"
    DETACHED = "detached"
    CLOSED = "closed"


class SessionInput(Enum):
    """What moves a session. `peer` inputs are frames from the other side."""

    NEW_TRANSPORT = "the handshake's transport attached"
    RESUME_TRANSPORT = "a transport attached to resume on"
    TRANSPORT_LOST = "the transport failed or went silent"
    BEGIN_HANDOVER = "this client begins a soft handover"
    HANDOVER_BEGIN = "peer: HANDOVER_BEGIN (to the server)"
    HANDOVER_READY = "peer: HANDOVER_READY (to the client)"
    RESUME = "peer: RESUME or RESUMED"
    CLOSE = "this side closes"
    CLOSE_RECEIVED = "peer: CLOSE"
    DETACHED_TIMEOUT = "no transport for the linger time"

    @property
    def from_peer(self) -> bool:
        return self.value.startswith("peer:")


S, In = SessionState, SessionInput
_LIVE = (S.ATTACHED, S.DRAINING, S.RESUMING, S.DETACHED)

SESSION: dict[tuple[SessionState, SessionInput], SessionState] = {
    # A new transport: the handshake's (ATTACHED at once) or a resume's
    # (RESUME and RESUMED first); a closed session stays closed.
    **{(s, In.NEW_TRANSPORT): S.ATTACHED for s in _LIVE},
    **{(s, In.RESUME_TRANSPORT): S.RESUMING for s in _LIVE},
    (S.CLOSED, In.NEW_TRANSPORT): S.CLOSED,
    (S.CLOSED, In.RESUME_TRANSPORT): S.CLOSED,
    **{(s, In.TRANSPORT_LOST): S.DETACHED for s in _LIVE},
    (S.CLOSED, In.TRANSPORT_LOST): S.CLOSED,
    # Claim 5: only an attached session begins or is asked to drain; a
    # client asked to hand over while not attached does a hard one instead.
    (S.ATTACHED, In.BEGIN_HANDOVER): S.DRAINING,
    **{(s, In.BEGIN_HANDOVER): s for s in (S.DRAINING, S.RESUMING, S.DETACHED, S.CLOSED)},
    (S.ATTACHED, In.HANDOVER_BEGIN): S.DRAINING,
    (S.DRAINING, In.HANDOVER_READY): S.DRAINING,
    (S.RESUMING, In.RESUME): S.ATTACHED,
    # Closing: from anywhere, once.
    **{(s, In.CLOSE): S.CLOSED for s in _LIVE},
    (S.CLOSED, In.CLOSE): S.CLOSED,
    **{(s, In.CLOSE_RECEIVED): S.CLOSED for s in _LIVE},
    (S.DETACHED, In.DETACHED_TIMEOUT): S.CLOSED,
    **{(s, In.DETACHED_TIMEOUT): s for s in (S.ATTACHED, S.DRAINING, S.RESUMING, S.CLOSED)},
}

# What an input not in the table is, for the peer's inputs: a frame out of
# place breaks the protocol.
_WHAT = {
    In.HANDOVER_BEGIN: "HANDOVER_BEGIN outside an attached session",
    In.HANDOVER_READY: "HANDOVER_READY without a HANDOVER_BEGIN",
    In.RESUME: "RESUME or RESUMED outside a resume",
    In.CLOSE_RECEIVED: "CLOSE on a closed session",
}


def next_state(state: SessionState, event: SessionInput) -> SessionState:
    """The state after `event` in `state`, or the error the table says it is."""
    after = SESSION.get((state, event))
    if after is not None:
        return after
    if event.from_peer:
        raise ProtocolError(f"{_WHAT.get(event, event.value)} (session {state.value})",
                            CloseCode.PROTOCOL_ERROR)
    raise LocalError(f"{event.value}: not possible while the session is {state.value}")


def markdown_table() -> str:
    """The table as docs/protocol.md shows it: a row per state, a column per input."""
    inputs = list(SessionInput)
    head = "| state | " + " | ".join(f"{i.name}" for i in inputs) + " |"
    rule = "|---" * (len(inputs) + 1) + "|"
    rows = [head, rule]
    for state in SessionState:
        cells = []
        for event in inputs:
            after = SESSION.get((state, event))
            if after is None:
                cells.append("protocol error" if event.from_peer else "error")
            elif after is state:
                cells.append("-")
            else:
                cells.append(after.name)
        rows.append(f"| `{state.name}` | " + " | ".join(cells) + " |")
    legend = "\n".join(f"- `{i.name}`: {i.value}" for i in inputs)
    return "\n".join(rows) + "\n\n" + legend + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
