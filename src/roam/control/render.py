"""`roam status` for people: the JSON status as a few aligned tables."""

from __future__ import annotations

import time
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _transports(transports: list[dict[str, Any]]) -> str:
    """'0 active on wifi, 1 standby on cell': each transport and its role."""
    return ", ".join(f"{t['id']} {t['state']}" + (f" on {t['path']}" if t.get("path") else "")
                     for t in transports) or "-"


def _relay(status: dict[str, Any]) -> str:
    refused = status.get("refused") or {}
    uplinks = status.get("uplinks") or {}
    lines = [f"relay {status['identity']} listening {status['listening']}; "
             f"{status['active']} spliced now, {status['spliced']} so far; "
             f"{status['bytes_up']} bytes up, {status['bytes_down']} down",
             "refused: " + (", ".join(f"{n} {why}" for why, n in sorted(refused.items()))
                            or "none"),
             "uplinks: " + (", ".join(f"{n} of {who}" for who, n in sorted(uplinks.items()))
                            or "none")]
    fleet = status.get("fleet")
    if fleet:
        peers = fleet.get("peers") or {}
        claims = fleet.get("claims") or {}
        state = ("reachable" if fleet["reachable"]
                 else f"unreachable: {fleet.get('last_error', '')}")
        lines += [f"fleet {fleet['directory']} ({state}); dialled at {fleet['address']}",
                  "fleet peers: " + (", ".join(f"{who} at {p['address']}"
                                               for who, p in sorted(peers.items())) or "none"),
                  "fleet claims: " + (", ".join(f"{who} (epoch {e})"
                                                for who, e in sorted(claims.items()))
                                      or "none")]
    return "\n".join(lines)


def render_status(status: dict[str, Any]) -> str:
    if status.get("role") == "relay":
        return _relay(status)
    if status.get("role") == "registrar":
        refused = status.get("refused") or {}
        return (f"registrar {status['identity']} listening {status['listening']}; "
                f"{status['units']} unit(s) on record ({status['db']}); "
                f"{status['registrations']} registrations, {status['lookups']} lookups "
                f"({status['found']} found) so far; refused: "
                + (", ".join(f"{n} {why}" for why, n in sorted(refused.items())) or "none"))
    if "sessions" in status:
        return _server(status)
    if status.get("servers"):  # a client with several servers: a section each
        return "\n\n".join(f"server {s['server']} ({s['address']})\n{_client(s)}"
                             for s in status["servers"])
    return _client(status)


def _server(status: dict[str, Any]) -> str:
    out: list[str] = []
    out.append(f"listening {status['listening']}; {len(status['sessions'])} session(s)")
    refused = status.get("refused")
    if refused is not None:
        out.append("refused: " + (", ".join(f"{n} {why}" for why, n in sorted(refused.items()))
                                  or "none"))
    networks = status.get("networks")
    if networks:
        pinned = " (pinned by roam switch)" if networks.get("pinned") else ""
        out.append(f"network {_fmt(networks['current'])}{pinned}, reached at "
                   f"{', '.join(networks['addresses']) or 'no address'}")
        for m in networks.get("moves", [])[-3:]:
            out.append(f"  moved {_fmt(m['from'])} -> {m['to']} ({m['type']}, {m['reason']}): "
                       f"{m['sessions']} session(s) told")
    rows = [["session", "transport", "state", "channels", "rtt ms", "resumes", "switches",
             "transports"]]
    for s in status["sessions"]:
        rtt = f"{s['srtt'] * 1000:.1f}" if s.get("srtt") is not None else "-"
        rows.append([s["name"], _fmt(s["transport"]), s["state"], str(s["channels"]),
                     rtt, str(s["resumes"]), str(s.get("switches", 0)),
                     _transports(s.get("transports") or [])])
    return "\n".join(out + _table(rows))


def _client(status: dict[str, Any]) -> str:
    out: list[str] = []
    session = status.get("session") or {}
    out.append(f"session {session.get('state', 'none')}; active path "
               f"{_fmt(status.get('active_path'))}; {len(status.get('channels', []))} channel(s)")
    if status.get("transports"):
        out.append(f"transports: {_transports(status['transports'])}; "
                   f"{session.get('switches', 0)} switch(es)")
    elif status.get("standby"):
        out.append(f"standby transport parked on {status['standby']}")
    udp = status.get("udp")
    if udp:
        out.append(f"udp {udp['state']} (peer {_fmt(udp['peer'])}, rtt ms {_fmt(udp['rtt_ms'])}): "
                   f"{udp['datagrams_sent']} datagram(s) sent, {udp['datagrams_received']} "
                   f"received; on the stream {session.get('datagrams_sent', 0)} sent, "
                   f"{session.get('datagrams_received', 0)} received")
        redundant = udp.get("redundant")
        if redundant:
            second = (f", second path {redundant['second_path']} "
                      f"{_fmt(redundant.get('second_state'))}"
                      if redundant.get("second_path") else "")
            out.append(f"redundant datagrams: {redundant['mode']}{second}; "
                       f"{redundant['copies_sent']} copies sent, {redundant['duplicates']} "
                       f"duplicate(s) dropped")
    if status.get("paths"):
        rows = [["path", "route", "active", "usable", "up", "signal", "rtt ms", "sent",
                 "received", "why not usable"]]
        for p in status["paths"]:
            signal = _fmt(p["signal"]) if p.get("signal_known") else "n/a"
            route = "+".join(p.get("route") or []) or "direct"
            rows.append([p["name"], route, "*" if p["active"] else "", _fmt(p["usable"]),
                         _fmt(p["up"]), signal, _fmt(p["rtt_ms"]), str(p["bytes_sent"]),
                         str(p["bytes_received"]), _fmt(p["reason"])])
        out += ["", *_table(rows)]
    handovers = status.get("handovers") or []
    if handovers:
        rows = [["when", "kind", "from", "to", "stall ms", "resent", "reason"]]
        for h in handovers[-10:]:
            rows.append([time.strftime("%H:%M:%S", time.localtime(h["started"])), h["kind"],
                         _fmt(h["origin"]), h["target"], f"{h['stall_ms']:.0f}",
                         str(h["frames_resent"]), h["reason"]])
        out += ["", "handovers (latest last)", *_table(rows)]
    return "\n".join(out)
