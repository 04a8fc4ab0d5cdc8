"""`roam status` for people: what each part of the JSON status turns into."""

from __future__ import annotations

from roam.control.render import render_status


def _client_status() -> dict[str, object]:
    return {
        "active_path": "wifi", "standby": "cell", "channels": [1, 3],
        "session": {"state": "attached", "datagrams_sent": 1, "datagrams_received": 0},
        "udp": {"state": "up", "peer": "198.19.0.2:7000", "rtt_ms": 5.1,
                "datagrams_sent": 12, "datagrams_received": 11},
        "paths": [{"name": "wifi", "active": True, "usable": True, "up": True, "signal": None,
                   "signal_known": False, "rtt_ms": 5.1, "bytes_sent": 10,
                   "bytes_received": 20, "reason": None}],
        "handovers": [{"started": 0.0, "kind": "hard", "origin": "wifi", "target": "cell",
                       "stall_ms": 68.4, "frames_resent": 12, "reason": "wifi is down"}],
    }


def test_client_status_names_path_standby_udp_and_handovers() -> None:
    text = render_status(_client_status())
    lines = text.splitlines()
    assert lines[0] == "session attached; active path wifi; 2 channel(s)"
    assert "standby transport parked on cell" in lines
    assert ("udp up (peer 198.19.0.2:7000, rtt ms 5.1): 12 datagram(s) sent, 11 received; "
            "on the stream 1 sent, 0 received") in lines
    assert any(line.startswith("wifi") and "*" in line and "n/a" in line for line in lines)
    assert any("hard" in line and "68" in line and "wifi is down" in line for line in lines)


def test_a_client_without_paths_udp_or_handovers() -> None:
    text = render_status({"session": None, "channels": []})
    assert text == "session none; active path -; 0 channel(s)"


def test_server_status_lists_sessions() -> None:
    text = render_status({"listening": "0.0.0.0:7000", "sessions": [
        {"name": "session ab12 (alice)", "transport": "198.18.1.2:4000", "state": "attached",
         "channels": 2, "srtt": 0.0051, "resumes": 3}]})
    lines = text.splitlines()
    assert lines[0] == "listening 0.0.0.0:7000; 1 session(s)"
    assert lines[2].split() == ["session", "ab12", "(alice)", "198.18.1.2:4000", "attached",
                                "2", "5.1", "3", "0", "-"]


def test_server_status_shows_each_sessions_transports_and_switches() -> None:
    text = render_status({"listening": "0.0.0.0:7000", "sessions": [
        {"name": "s", "transport": "198.18.1.2:4000", "state": "attached", "channels": 1,
         "srtt": None, "resumes": 0, "switches": 2,
         "transports": [{"id": 0, "state": "standby", "peer": "198.18.1.2:4000"},
                        {"id": 3, "state": "active", "peer": "198.18.2.2:5000"}]}]})
    row = text.splitlines()[2]
    assert row.endswith(" 0 standby, 3 active")
    assert row.split()[-5] == "2"  # switches


def test_client_status_shows_transports_by_path_and_redundant_datagrams() -> None:
    status = _client_status()
    status["transports"] = [{"id": 0, "state": "active", "path": "wifi", "peer": "x"},
                            {"id": 1, "state": "standby", "path": "cell", "peer": "y"}]
    status["session"] = {"state": "attached", "switches": 1}
    status["udp"] = {"state": "up", "peer": "p", "rtt_ms": 1, "datagrams_sent": 0,
                     "datagrams_received": 0,
                     "redundant": {"mode": "two paths", "second_path": "cell",
                                   "second_state": "up", "copies_sent": 40, "duplicates": 38}}
    lines = render_status(status).splitlines()
    assert "transports: 0 active on wifi, 1 standby on cell; 1 switch(es)" in lines
    assert not any(line.startswith("standby transport") for line in lines)
    assert ("redundant datagrams: two paths, second path cell up; 40 copies sent, "
            "38 duplicate(s) dropped") in lines


def test_a_relay_shows_its_splices_refusals_and_uplinks() -> None:
    text = render_status({"role": "relay", "identity": "AbCdEfGh", "listening": "0.0.0.0:4434",
                          "spliced": 7, "active": 2, "bytes_up": 1000, "bytes_down": 2000,
                          "refused": {"NOT_ADMITTED": 3}, "uplinks": {"SrvKey12": 4}})
    assert "relay AbCdEfGh listening 0.0.0.0:4434; 2 spliced now, 7 so far" in text
    assert "refused: 3 NOT_ADMITTED" in text
    assert "uplinks: 4 of SrvKey12" in text
    quiet = render_status({"role": "relay", "identity": "x", "listening": "y", "spliced": 0,
                           "active": 0, "bytes_up": 0, "bytes_down": 0, "refused": {},
                           "uplinks": {}})
    assert "refused: none" in quiet
    assert "uplinks: none" in quiet
    assert "fleet" not in quiet


def test_a_relay_of_a_fleet_shows_its_directory_peers_and_claims() -> None:
    base = {"role": "relay", "identity": "x", "listening": "y", "spliced": 0, "active": 0,
            "bytes_up": 0, "bytes_down": 0, "refused": {}, "uplinks": {}}
    fleet = {"directory": "redis://:***@10.0.0.5:6379/0", "reachable": True,
             "address": "198.18.3.2:4434", "peers": {"PeerKey1": {"address": "198.18.4.2:4434",
                                                                 "expires_in_s": 5.1}},
             "claims": {"SrvKey12": 7}, "suspects": [], "bad_records": 0}
    text = render_status({**base, "fleet": fleet})
    assert "fleet redis://:***@10.0.0.5:6379/0 (reachable); dialled at 198.18.3.2:4434" in text
    assert "fleet peers: PeerKey1 at 198.18.4.2:4434" in text
    assert "fleet claims: SrvKey12 (epoch 7)" in text
    away = render_status({**base, "fleet": {**fleet, "reachable": False, "peers": {},
                                            "claims": {}, "last_error": "Connection refused"}})
    assert "(unreachable: Connection refused)" in away
    assert "fleet peers: none" in away


def test_each_path_shows_its_route_direct_or_through_relays() -> None:
    status = _client_status()
    paths = status["paths"]
    assert isinstance(paths, list)
    paths.append({**paths[0], "name": "cell", "active": False, "route": ["r1", "r2", "r3"]})
    lines = render_status(status).splitlines()
    assert any(line.split()[:3] == ["path", "route", "active"] for line in lines)
    assert any(line.split()[:2] == ["wifi", "direct"] for line in lines)
    assert any(line.split()[:2] == ["cell", "r1+r2+r3"] for line in lines)


def test_a_client_with_several_servers_shows_a_section_each() -> None:
    office = {**_client_status(), "server": "office", "address": "198.19.0.2:7000"}
    lab = {"server": "lab", "address": "198.19.0.3:7000", "session": None, "channels": []}
    text = render_status({**office, "servers": [office, lab]})
    first, second = text.split("\n\n", 1)[0], text.split("\n\nserver lab", 1)[1]
    assert first.splitlines()[:2] == ["server office (198.19.0.2:7000)",
                                      "session attached; active path wifi; 2 channel(s)"]
    assert second.splitlines() == [" (198.19.0.3:7000)", "session none; active path -; "
                                   "0 channel(s)"]


def test_a_registrar_shows_its_units_and_refusals() -> None:
    text = render_status({"role": "registrar", "identity": "AbCd1234",
                          "listening": "127.0.0.1:4440", "units": 3, "db": "reg.db",
                          "registrations": 7, "lookups": 9, "found": 8,
                          "refused": {"REPLAYED": 1}, "connections": 0})
    assert text == ("registrar AbCd1234 listening 127.0.0.1:4440; 3 unit(s) on record "
                    "(reg.db); 7 registrations, 9 lookups (8 found) so far; refused: 1 REPLAYED")


def test_a_mobile_servers_status_shows_its_network_and_moves() -> None:
    text = render_status({"listening": "0.0.0.0:7000", "sessions": [], "networks": {
        "current": "net2", "pinned": "net2", "addresses": ["198.19.64.2:7000"],
        "networks": [], "moves": [
            {"type": "initial", "from": None, "to": "net1", "reason": "best", "sessions": 0,
             "addresses": [], "at": 0},
            {"type": "soft", "from": "net1", "to": "net2", "reason": "asked for",
             "sessions": 3, "addresses": [], "at": 1}]}})
    lines = text.splitlines()
    assert lines[1] == "network net2 (pinned by roam switch), reached at 198.19.64.2:7000"
    assert lines[2] == "  moved - -> net1 (initial, best): 0 session(s) told"
    assert lines[3] == "  moved net1 -> net2 (soft, asked for): 3 session(s) told"


def test_server_status_shows_its_refusals_by_reason() -> None:
    text = render_status({"listening": "0.0.0.0:7000", "sessions": [],
                          "refused": {"NOT_AUTHORIZED": 2, "BUSY": 1}})
    assert text.splitlines()[1] == "refused: 1 BUSY, 2 NOT_AUTHORIZED"
    quiet = render_status({"listening": "0.0.0.0:7000", "sessions": [], "refused": {}})
    assert quiet.splitlines()[1] == "refused: none"
