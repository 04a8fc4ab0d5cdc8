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
                                "2", "5.1", "3"]
