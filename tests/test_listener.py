"""A daemon's listening socket."""

from __future__ import annotations

import pytest

from roam.listener import listening_socket


def test_port_zero_picks_a_port_and_a_taken_address_is_named() -> None:
    first = listening_socket("127.0.0.1", 0)
    try:
        host, port = first.getsockname()
        assert (host, first.getblocking()) == ("127.0.0.1", False)
        assert port > 0
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)
    finally:
        first.close()
