"""roam.registrar.sipsyntax: the error every malformed SIP input raises."""

from __future__ import annotations

from roam.errors import ProtocolError
from roam.registrar.sipsyntax import SipError


def test_sip_error_is_a_protocol_error() -> None:
    assert issubclass(SipError, ProtocolError)
