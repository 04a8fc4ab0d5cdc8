"""Every state machine of roam's protocol, each as one transition table.

h11's `_state.py` and h2's stream table are the model: a state changes only
through `Table.next`, which looks the pair (state, input) up; a pair that is
not there is an error, a `ProtocolError` with its wire code when the input
came from the peer, a `LocalError` when it was this side's own call. The
tables are the specification: docs/protocol.md's state tables and diagrams
are generated from them (`python -m roam.core.states`), and a test walks
every (state, input) pair of each.

Inputs a state ignores map to that same state (listed, so that "ignored"
is a decision and not an omission).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from roam.errors import CloseCode, LocalError, ProtocolError


class State(Enum):
    """A state of a table."""

    # Members are singletons compared by identity: hash them so too. Enum's
    # own __hash__ is a Python call per dictionary lookup, and a table is
    # looked up for every DATA frame (a third of a 64-byte round trip's
    # extra cost in the core, measured with bench/hotspots.py).
    __hash__ = object.__hash__


class Input(Enum):
    """An input of a table; its value starts with "peer:" when it is a peer's frame."""

    __hash__ = object.__hash__  # as State's

    @property
    def from_peer(self) -> bool:
        return str(self.value).startswith("peer:")


StateT = TypeVar("StateT", bound=Enum)
InputT = TypeVar("InputT", bound=Input)


@dataclass(frozen=True)
class Table(Generic[StateT, InputT]):
    """One state machine: its states, its inputs, and what each pair leads to."""

    name: str
    states: type[StateT]
    inputs: type[InputT]
    transitions: Mapping[tuple[StateT, InputT], StateT]
    # What a peer input out of place is, for the error (the input's own
    # description otherwise).
    errors: Mapping[InputT, str]
    # The wire code of a peer input out of place.
    code: CloseCode = CloseCode.PROTOCOL_ERROR

    def get(self, state: StateT, event: InputT) -> StateT | None:
        """The state after `event` in `state`, or None where `next` raises: a
        lookup for the hot path, which builds no error text."""
        return self.transitions.get((state, event))

    def next(self, state: StateT, event: InputT, what: str = "") -> StateT:
        """The state after `event` in `state`, or the error the table says it is.
        `what` names the machine's instance in the error ("channel 3")."""
        after = self.transitions.get((state, event))
        if after is not None:
            return after
        subject = what or self.name
        if event.from_peer:
            raise ProtocolError(f"{self.errors.get(event, event.value)} ({subject} "
                                f"{state.value})", self.code)
        raise LocalError(f"{event.value}: not possible while the {subject} is {state.value}")

    def markdown(self) -> str:
        """The table as docs/protocol.md shows it: a row per state, a column per input."""
        inputs = list(self.inputs)
        rows = ["| state | " + " | ".join(i.name for i in inputs) + " |",
                "|---" * (len(inputs) + 1) + "|"]
        for state in self.states:
            cells = []
            for event in inputs:
                after = self.transitions.get((state, event))
                if after is None:
                    cells.append("protocol error" if event.from_peer else "error")
                else:
                    cells.append("-" if after is state else after.name)
            rows.append(f"| `{state.name}` | " + " | ".join(cells) + " |")
        legend = "\n".join(f"- `{i.name}`: {i.value}" for i in inputs)
        return "\n".join(rows) + "\n\n" + legend + "\n"

    def mermaid(self) -> str:
        """The table as a state diagram: every change of state, inputs grouped per arrow."""
        arrows: dict[tuple[StateT, StateT], list[str]] = {}
        for (state, event), after in self.transitions.items():
            if after is not state:
                arrows.setdefault((state, after), []).append(event.name)
        lines = ["```mermaid", "stateDiagram-v2"]
        for (state, after), names in arrows.items():
            lines.append(f"    {state.name} --> {after.name}: {', '.join(names)}")
        lines.append("```")
        return "\n".join(lines) + "\n"

    def document(self) -> str:
        """What docs/protocol.md holds between this table's markers."""
        return self.markdown() + "\n" + self.mermaid()


# ---- the session ------------------------------------------------------------


class SessionState(State):
    ATTACHED = "attached"
    # Soft handover (claim 5): the old transport is being emptied. Client:
    # HANDOVER_BEGIN sent, no new reliable frames until it resumes elsewhere.
    # Server: HANDOVER_READY sent as its last frame on the old transport.
    DRAINING = "draining"
    RESUMING = "resuming"
    DETACHED = "detached"
    CLOSED = "closed"


class SessionInput(Input):
    """What moves a session. `peer` inputs are frames from the other side."""

    NEW_TRANSPORT = "the handshake's transport attached"
    RESUME_TRANSPORT = "a transport attached to resume on"
    OPENING_TRANSPORT = "a transport attached that will resume or join (its first frame says)"
    TRANSPORT_LOST = "the transport failed or went silent"
    BEGIN_HANDOVER = "this client begins a soft handover"
    HANDOVER_BEGIN = "peer: HANDOVER_BEGIN (to the server)"
    HANDOVER_READY = "peer: HANDOVER_READY (to the client)"
    RESUME = "peer: RESUME or RESUMED"
    JOIN = "peer: JOIN or JOINED"
    CLOSE = "this side closes"
    CLOSE_RECEIVED = "peer: CLOSE"
    DETACHED_TIMEOUT = "no transport for the linger time"


S, In = SessionState, SessionInput
_LIVE = (S.ATTACHED, S.DRAINING, S.RESUMING, S.DETACHED)

SESSION: Table[SessionState, SessionInput] = Table("session", SessionState, SessionInput, {
    # A new transport: the handshake's (ATTACHED at once) or a resume's
    # (RESUME and RESUMED first); a closed session stays closed.
    **{(s, In.NEW_TRANSPORT): S.ATTACHED for s in _LIVE},
    **{(s, In.RESUME_TRANSPORT): S.RESUMING for s in _LIVE},
    (S.CLOSED, In.NEW_TRANSPORT): S.CLOSED,
    (S.CLOSED, In.RESUME_TRANSPORT): S.CLOSED,
    # One more transport (docs/protocol.md 5.2): the session stays as it
    # is until the transport's first frame, RESUME or JOIN, says more.
    **{(s, In.OPENING_TRANSPORT): s for s in (S.ATTACHED, S.DRAINING, S.RESUMING, S.CLOSED)},
    (S.DETACHED, In.OPENING_TRANSPORT): S.RESUMING,
    **{(s, In.TRANSPORT_LOST): S.DETACHED for s in _LIVE},
    (S.CLOSED, In.TRANSPORT_LOST): S.CLOSED,
    # Claim 5: only an attached session begins or is asked to drain; a
    # client asked to hand over while not attached does a hard one instead.
    (S.ATTACHED, In.BEGIN_HANDOVER): S.DRAINING,
    **{(s, In.BEGIN_HANDOVER): s for s in (S.DRAINING, S.RESUMING, S.DETACHED, S.CLOSED)},
    (S.ATTACHED, In.HANDOVER_BEGIN): S.DRAINING,
    (S.DRAINING, In.HANDOVER_READY): S.DRAINING,
    # RESUME moves the session onto its transport, whatever carried it
    # before (each transport's own table says whether RESUME may come).
    **{(s, In.RESUME): S.ATTACHED for s in (S.ATTACHED, S.DRAINING, S.RESUMING)},
    # JOIN adds a standby; on a session that lost its other transports the
    # joined one carries it at once.
    **{(s, In.JOIN): s for s in (S.ATTACHED, S.DRAINING)},
    (S.RESUMING, In.JOIN): S.ATTACHED,
    # Closing: from anywhere, once.
    **{(s, In.CLOSE): S.CLOSED for s in _LIVE},
    (S.CLOSED, In.CLOSE): S.CLOSED,
    **{(s, In.CLOSE_RECEIVED): S.CLOSED for s in _LIVE},
    (S.DETACHED, In.DETACHED_TIMEOUT): S.CLOSED,
    **{(s, In.DETACHED_TIMEOUT): s for s in (S.ATTACHED, S.DRAINING, S.RESUMING, S.CLOSED)},
}, {
    # What an input not in the table is, for the peer's inputs: a frame out
    # of place breaks the protocol.
    In.HANDOVER_BEGIN: "HANDOVER_BEGIN outside an attached session",
    In.HANDOVER_READY: "HANDOVER_READY without a HANDOVER_BEGIN",
    In.RESUME: "RESUME or RESUMED on a session with no transport",
    In.JOIN: "JOIN or JOINED on a session with no transport",
    In.CLOSE_RECEIVED: "CLOSE on a closed session",
})


def next_state(state: SessionState, event: SessionInput) -> SessionState:
    """The session's state after `event` (SESSION.next)."""
    return SESSION.next(state, event)


# ---- channels ---------------------------------------------------------------


class ChannelState(State):
    """A channel's life, as h2's streams (RFC 9113 5.1) with OPEN answered.

    A channel exists from OPEN to its end; IDLE is a number not used yet, and
    CLOSED one used up (frames for it may still cross on the wire).
    """

    IDLE = "idle"
    OPENING = "opening"  # we sent OPEN; OPEN_OK or OPEN_FAIL is awaited
    REQUESTED = "requested"  # the peer sent OPEN; we accept or refuse
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # our FIN is sequenced
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # the peer's FIN arrived
    CLOSED = "closed"


class ChannelInput(Input):
    OPEN = "this side opens the channel"
    OPEN_RECEIVED = "peer: OPEN"
    ACCEPT = "this side accepts the peer's OPEN (OPEN_OK)"
    REFUSE = "this side refuses the peer's OPEN (OPEN_FAIL)"
    OPEN_OK = "peer: OPEN_OK"
    OPEN_FAIL = "peer: OPEN_FAIL"
    DATA = "peer: DATA"
    DGRAM = "peer: DGRAM"
    WINDOW = "peer: WINDOW"
    SEND_FIN = "this side's FIN is sequenced (after its data)"
    FIN = "peer: FIN"
    RESET = "this side resets the channel"
    RESET_RECEIVED = "peer: RESET"


C, CI = ChannelState, ChannelInput
_FLOWING = (C.OPEN, C.HALF_CLOSED_LOCAL, C.HALF_CLOSED_REMOTE)

CHANNEL: Table[ChannelState, ChannelInput] = Table("channel", ChannelState, ChannelInput, {
    (C.IDLE, CI.OPEN): C.OPENING,
    (C.IDLE, CI.OPEN_RECEIVED): C.REQUESTED,
    (C.OPENING, CI.OPEN_OK): C.OPEN,
    (C.OPENING, CI.OPEN_FAIL): C.CLOSED,
    (C.REQUESTED, CI.ACCEPT): C.OPEN,
    (C.REQUESTED, CI.REFUSE): C.CLOSED,
    # Data and credit flow both ways until each side's FIN. A datagram
    # channel carries DGRAM instead of DATA; a DGRAM that took UDP may
    # overtake the FIN sent after it on the stream, so it is taken after.
    **{(s, CI.DATA): s for s in (C.OPEN, C.HALF_CLOSED_LOCAL)},
    **{(s, CI.DGRAM): s for s in _FLOWING},
    **{(s, CI.WINDOW): s for s in _FLOWING},
    (C.OPEN, CI.SEND_FIN): C.HALF_CLOSED_LOCAL,
    (C.HALF_CLOSED_REMOTE, CI.SEND_FIN): C.CLOSED,
    (C.OPEN, CI.FIN): C.HALF_CLOSED_REMOTE,
    (C.HALF_CLOSED_LOCAL, CI.FIN): C.CLOSED,
    # Either side may reset a channel at any time after it was opened.
    **{(s, CI.RESET): C.CLOSED for s in (C.OPENING, C.REQUESTED, *_FLOWING)},
    **{(s, CI.RESET_RECEIVED): C.CLOSED for s in (C.OPENING, C.REQUESTED, *_FLOWING)},
    # A closed channel's number is used up: the peer's frames for it crossed
    # our RESET or OPEN_FAIL on the wire and are dropped; this side's calls
    # for it come from applications that have not heard yet, and do nothing.
    **{(C.CLOSED, i): C.CLOSED for i in ChannelInput
       if i not in (CI.OPEN, CI.OPEN_RECEIVED)},
}, {
    CI.OPEN_RECEIVED: "OPEN for a channel number in use",
    CI.OPEN_OK: "OPEN_OK for a channel that was not awaiting one",
    CI.OPEN_FAIL: "OPEN_FAIL for a channel that was not awaiting one",
    CI.DATA: "DATA on a channel not open for it",
    CI.DGRAM: "DGRAM on a channel not open for it",
    CI.WINDOW: "WINDOW on a channel not open",
    CI.FIN: "FIN on a channel not open for it",
    CI.RESET_RECEIVED: "RESET for a channel never opened",
})

# ---- a session's transports (handover) -----------------------------------------


class TransportState(State):
    """One transport of a session with several (docs/protocol.md 5.2)."""

    OPENING = "opening"  # attached; its first frame (RESUME or JOIN, and the answer) awaited
    ACTIVE = "active"  # carries this side's new reliable frames
    STANDBY = "standby"  # attached and alive (PING, ACK), carries no new reliable frame
    GONE = "gone"  # lost, closed or superseded by a RESUME elsewhere


class TransportInput(Input):
    NEW = "this side made it the handshake's transport"
    RESUMED = "peer: RESUME or RESUMED, its first frame"
    JOINED = "peer: JOIN or JOINED, its first frame"
    SWITCH = "this side sends its new reliable frames here (SWITCH)"
    SWITCH_RECEIVED = "peer: SWITCH"
    SUPERSEDED = "another transport became this side's active one"
    FRAME = "peer: any other frame"
    LOST = "failed, went silent, or replaced by a resume"


T, TI = TransportState, TransportInput

TRANSPORT: Table[TransportState, TransportInput] = Table("transport", TransportState,
                                                         TransportInput, {
    (T.OPENING, TI.NEW): T.ACTIVE,
    (T.OPENING, TI.RESUMED): T.ACTIVE,
    (T.OPENING, TI.JOINED): T.STANDBY,
    # Only a transport proven by its first frame may carry data.
    **{(s, TI.SWITCH): T.ACTIVE for s in (T.ACTIVE, T.STANDBY)},
    **{(s, TI.SWITCH_RECEIVED): T.ACTIVE for s in (T.ACTIVE, T.STANDBY)},
    **{(s, TI.SUPERSEDED): T.STANDBY for s in (T.ACTIVE, T.STANDBY)},
    (T.OPENING, TI.SUPERSEDED): T.OPENING,
    **{(s, TI.FRAME): s for s in (T.ACTIVE, T.STANDBY)},
    **{(s, TI.LOST): T.GONE for s in TransportState},
    # What a transport let go of brings is never read: nothing changes.
    **{(T.GONE, i): T.GONE for i in TransportInput if i is not TI.NEW},
}, {
    TI.RESUMED: "RESUME or RESUMED on a transport that is not new",
    TI.JOINED: "JOIN or JOINED on a transport that is not new",
    TI.SWITCH_RECEIVED: "SWITCH on a transport that has not resumed or joined",
    TI.FRAME: "a frame before RESUME, RESUMED, JOIN or JOINED on a new transport",
})



class HandoverState(State):
    """One handover the client runs (roam.core.handover, docs/protocol.md 5)."""

    PLANNED = "planned"  # asked for; nothing done yet
    CONNECTING = "connecting"  # a new transport opens on the target path
    DRAINING = "draining"  # soft: HANDOVER_BEGIN went on the old transport; READY awaited
    RESUMING = "resuming"  # RESUME went on the new (or parked) transport; RESUMED awaited
    DONE = "done"  # the session is on the target path
    FAILED = "failed"  # the target could not carry it


class HandoverInput(Input):
    SWITCH = "the target has a joined standby and the session is attached: SWITCH to it"
    CONNECT = "a new transport is needed on the target"
    PARKED = "a hard move to the target's parked standby: no connect"
    DRAIN = "the new transport is open and the old one works: HANDOVER_BEGIN on the old"
    RESUME = "the new transport is open, the move is hard: RESUME on it"
    READY = "HANDOVER_READY came on the old transport"
    OLD_LOST = "the old transport was lost, or READY did not come in time"
    RESUMED = "RESUMED came on the new transport"
    FAILED = "the target could not carry the session (connect, refusal, timeout)"


H, HI = HandoverState, HandoverInput

HANDOVER: Table[HandoverState, HandoverInput] = Table("handover", HandoverState,
                                                      HandoverInput, {
    (H.PLANNED, HI.SWITCH): H.DONE,
    (H.PLANNED, HI.CONNECT): H.CONNECTING,
    (H.PLANNED, HI.PARKED): H.RESUMING,
    (H.CONNECTING, HI.DRAIN): H.DRAINING,
    (H.CONNECTING, HI.RESUME): H.RESUMING,
    # A soft handover whose old path dies while it drains turns hard.
    (H.CONNECTING, HI.OLD_LOST): H.CONNECTING,
    (H.DRAINING, HI.READY): H.RESUMING,
    (H.DRAINING, HI.OLD_LOST): H.RESUMING,
    # A READY after the move turned hard, or the old one lost after it left:
    # nothing changes.
    (H.RESUMING, HI.READY): H.RESUMING,
    (H.RESUMING, HI.OLD_LOST): H.RESUMING,
    (H.RESUMING, HI.RESUMED): H.DONE,
    **{(s, HI.FAILED): H.FAILED for s in (H.PLANNED, H.CONNECTING, H.DRAINING, H.RESUMING)},
}, {})

TABLES: dict[str, Table[SessionState, SessionInput] | Table[ChannelState, ChannelInput]
             | Table[TransportState, TransportInput]
             | Table[HandoverState, HandoverInput]] = {
    "session": SESSION, "channel": CHANNEL, "transport": TRANSPORT, "handover": HANDOVER}


def document(name: str) -> str:
    return TABLES[name].document()


def write_docs(text: str) -> str:
    """`text` (docs/protocol.md) with every table between its markers made anew."""
    for name, table in TABLES.items():
        start = f"<!-- {name}-states: generated by `python -m roam.core.states`; do not edit -->\n"
        end = f"<!-- /{name}-states -->"
        if start not in text or end not in text:
            raise LocalError(f"no {name}-states markers in the document")
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + start + table.document() + end + after
    return text


if __name__ == "__main__":
    # python -m roam.core.states [--write docs/protocol.md]
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        with open(sys.argv[2], encoding="utf-8") as f:
            old = f.read()
        new = write_docs(old)
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            f.write(new)
    else:
        for name in TABLES:
            sys.stdout.write(f"{name}:\n{document(name)}\n")
