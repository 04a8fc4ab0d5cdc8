"""SOCKS5 server side (RFC 1928, RFC 1929 username/password), sans-IO.

`Socks5Server` is fed the bytes a SOCKS client sends and returns events:
`Send` (bytes owed to the client, in order) and, once, `Request` (what the
client asked for, plus any bytes it pipelined after the request). The driver
then answers with `encode_reply` and, on success, relays `Request.early_data`
and everything after it.

Every refusal, whether the input is malformed or merely not allowed, raises
`SocksError` (a `ProtocolError`); its `reply` holds the bytes the client is
still owed (possibly empty): the driver sends them, then closes.

`parse_udp_datagram` and `encode_udp_datagram` handle the header RFC 1928
section 7 puts in front of every datagram relayed for UDP ASSOCIATE.

A domain name (ATYP X'03') is checked as a DNS name (`roam.names`) as soon
as it has arrived; one that is not gets X'04' (host unreachable) and the
connection closes, as a name that does not resolve would.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import NamedTuple

from roam.errors import CloseCode, ConfigError, ProtocolError
from roam.names import Host, InvalidHost

VERSION = 5
AUTH_VERSION = 1  # RFC 1929 section 2: the sub-negotiation's own version
NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHOD = 0xFF
AUTH_SUCCESS = bytes([AUTH_VERSION, 0x00])
# RFC 1929 section 2: any STATUS other than 0 is a failure and the server closes.
AUTH_FAILURE = bytes([AUTH_VERSION, 0x01])
MAX_NAME = 255  # every length in RFC 1928/1929 is one octet

_PORT = struct.Struct("!H")


class Command(IntEnum):
    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


class AddressType(IntEnum):
    IPV4 = 1
    DOMAIN = 3
    IPV6 = 4


class Reply(IntEnum):
    """REP codes of RFC 1928 section 6."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


# The commands a driver carries; others (BIND) get COMMAND_NOT_SUPPORTED.
SUPPORTED_COMMANDS = frozenset({Command.CONNECT, Command.UDP_ASSOCIATE})


class SocksError(ProtocolError):
    """The SOCKS client sent garbage or was refused.

    `reply` is what the client is still owed (replies to earlier messages fed
    in the same call, then the error reply RFC 1928/1929 asks for, if any):
    send it, then close the connection.
    """

    def __init__(self, message: str, reply: bytes = b"",
                 code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message, code)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes  # to write to the SOCKS client


@dataclass(frozen=True, slots=True)
class Request:
    """The client's request; the handshake is over.

    For CONNECT and BIND, `host` is an address or a valid DNS name in normal
    form (`roam.names.Host`); a name that is neither was refused. For UDP
    ASSOCIATE it is the client's own address as sent, unchecked, since it
    names no destination. `early_data` is what the client sent after the
    request without waiting for the reply: it belongs to the application
    stream and must be relayed, not dropped."""

    command: Command
    host: str
    port: int
    early_data: bytes = b""

    @property
    def supported(self) -> bool:
        """False for BIND: answer `encode_reply(Reply.COMMAND_NOT_SUPPORTED)` and close."""
        return self.command in SUPPORTED_COMMANDS


Event = Send | Request


class UdpDatagram(NamedTuple):
    frag: int
    host: str
    port: int
    payload: bytes


def _encode_address(host: str, port: int) -> bytes:
    """ATYP | DST.ADDR | DST.PORT as in RFC 1928 sections 4, 6 and 7."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    try:
        ip = ipaddress.ip_address(host)
        atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
        return bytes([atyp]) + ip.packed + _PORT.pack(port)
    except ValueError:
        pass  # not an address literal: a name
    name = host.encode("utf-8")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"domain name of {len(name)} bytes; SOCKS5 carries 1 to 255")
    return bytes([AddressType.DOMAIN, len(name)]) + name + _PORT.pack(port)


def encode_reply(rep: Reply, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
    """The reply of RFC 1928 section 6 (failures carry 0.0.0.0:0). ValueError if out of range."""
    return bytes([VERSION, Reply(rep), 0x00]) + _encode_address(bind_host, bind_port)


def _parse_address(buf: bytes | bytearray | memoryview, offset: int,
                   with_reply: bool, destination: bool = True) -> tuple[str, int, int] | None:
    """(host, port, end) of the address at `offset`, or None if it is incomplete.

    Checks each field as soon as its bytes are there, so the outcome does not
    depend on how the input was split. A `destination` name must be a host
    (`roam.names.Host`) and comes back in normal form; any other name is
    returned as sent.
    """
    def fail(message: str, rep: Reply, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> SocksError:
        return SocksError(message, encode_reply(rep) if with_reply else b"", code)

    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    if atyp == AddressType.IPV4:
        start, size = offset + 1, 4
    elif atyp == AddressType.IPV6:
        start, size = offset + 1, 16
    elif atyp == AddressType.DOMAIN:
        if len(buf) <= offset + 1:
            return None
        start, size = offset + 2, buf[offset + 1]
        if size == 0:
            raise fail("domain name of 0 bytes", Reply.GENERAL_FAILURE)
    else:
        # RFC 1928 section 6: answer X'08' before closing.
        raise fail(f"unknown address type {atyp:#04x}", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
    end = start + size + _PORT.size
    if len(buf) < end:
        return None
    raw = bytes(buf[start:start + size])
    if atyp == AddressType.DOMAIN:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise fail("domain name is not UTF-8", Reply.GENERAL_FAILURE) from None
        host = text
        if destination:
            try:
                # Validated here, at the edge: what goes on is a name in
                # normal form (or an address literal), never raw client bytes.
                host = str(Host.parse(text))
            except InvalidHost as exc:
                # A name that cannot exist cannot be resolved: X'04', as for an unknown one.
                raise fail(str(exc), Reply.HOST_UNREACHABLE, CloseCode.UNREACHABLE) from None
    else:
        host = str(ipaddress.ip_address(raw))
    (port,) = _PORT.unpack_from(buf, start + size)
    return host, port, end


class _State(Enum):
    GREETING = "greeting"
    AUTH = "username/password"
    REQUEST = "request"
    DONE = "done"
    FAILED = "failed"


class Socks5Server:
    """One client connection's handshake. With `credentials` (username,
    password) the client must use RFC 1929; without, it must offer no-auth."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self._credentials: tuple[bytes, bytes] | None = None
        if credentials is not None:
            user, password = (c.encode("utf-8") for c in credentials)
            if not (1 <= len(user) <= MAX_NAME and 1 <= len(password) <= MAX_NAME):
                # RFC 1929 section 2: UNAME and PASSWD are 1 to 255 octets.
                raise ConfigError("SOCKS username and password must be 1 to 255 bytes each")
            self._credentials = (user, password)
        self._state = _State.GREETING
        self._buffer = bytearray()

    @property
    def done(self) -> bool:
        """True once the `Request` was returned."""
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[Event]:
        """Take bytes from the client; return what to send and, at the end, the Request.

        Raises only `SocksError` for client input. Feeding again after the
        Request or after a SocksError is a driver bug (RuntimeError).
        """
        if self._state in (_State.DONE, _State.FAILED):
            raise RuntimeError(f"SOCKS handshake is {self._state.value}; nothing more to feed")
        self._buffer += data
        events: list[Event] = []
        steps = {_State.GREETING: self._greeting, _State.AUTH: self._auth,
                 _State.REQUEST: self._request}
        try:
            while (event := steps[self._state]()) is not None:
                events.append(event)
                if isinstance(event, Request):
                    break
        except SocksError as exc:
            self._state = _State.FAILED
            self._buffer.clear()
            # Replies produced earlier in this call were never returned: a
            # pipelining client still needs them to make sense of the error.
            owed = b"".join(e.data for e in events if isinstance(e, Send))
            exc.reply = owed + exc.reply
            raise
        return events

    def _greeting(self) -> Event | None:
        # RFC 1928 section 3: VER | NMETHODS | METHODS.
        buf = self._buffer
        if not buf:
            return None
        if buf[0] == 4:
            raise SocksError("SOCKS version 4 is not supported: roam speaks SOCKS5")
        if buf[0] != VERSION:
            raise SocksError(f"not a SOCKS5 greeting: version byte {buf[0]:#04x}")
        if len(buf) < 2:
            return None
        count = buf[1]
        if count == 0:
            raise SocksError("greeting lists no authentication methods",
                             bytes([VERSION, NO_ACCEPTABLE_METHOD]))
        if len(buf) < 2 + count:
            return None
        methods = bytes(buf[2:2 + count])
        del buf[:2 + count]
        wanted = NO_AUTH if self._credentials is None else USERNAME_PASSWORD
        if wanted not in methods:
            # Section 3: X'FF' says none is acceptable; the client then closes.
            offered = ", ".join(f"{m:#04x}" for m in methods)
            raise SocksError(
                f"no acceptable authentication method: client offers {offered}, "
                f"roam requires {wanted:#04x}",
                bytes([VERSION, NO_ACCEPTABLE_METHOD]), CloseCode.NOT_ALLOWED)
        self._state = _State.REQUEST if self._credentials is None else _State.AUTH
        return Send(bytes([VERSION, wanted]))

    def _auth(self) -> Event | None:
        # RFC 1929 section 2: VER | ULEN | UNAME | PLEN | PASSWD.
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != AUTH_VERSION:
            raise SocksError(f"username/password version {buf[0]}; RFC 1929 defines only 1",
                             AUTH_FAILURE)
        if len(buf) < 2 or len(buf) < 3 + buf[1]:
            return None
        ulen, plen = buf[1], buf[2 + buf[1]]
        if len(buf) < 3 + ulen + plen:
            return None
        user, password = bytes(buf[2:2 + ulen]), bytes(buf[3 + ulen:3 + ulen + plen])
        del buf[:3 + ulen + plen]
        if self._credentials is None:
            # Only reachable by offering method 0x02 to a server without
            # credentials, which _greeting never selects.
            raise SocksError("username/password sent, but this server asks for none",
                             AUTH_FAILURE)
        want_user, want_password = self._credentials
        # Constant-time, and both compared, so timing says nothing about which was wrong.
        ok = hmac.compare_digest(user, want_user) & hmac.compare_digest(password, want_password)
        if not ok:
            name = user.decode("utf-8", "replace")
            raise SocksError(f"username/password authentication failed for user {name!r}",
                             AUTH_FAILURE, CloseCode.NOT_ALLOWED)
        self._state = _State.REQUEST
        return Send(AUTH_SUCCESS)

    def _request(self) -> Event | None:
        # RFC 1928 section 4: VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT.
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != VERSION:
            raise SocksError(f"request has SOCKS version {buf[0]}; expected 5",
                             encode_reply(Reply.GENERAL_FAILURE))
        if len(buf) < 2:
            return None
        try:
            command = Command(buf[1])
        except ValueError:
            # Section 6: X'07' before closing.
            raise SocksError(f"unknown command {buf[1]:#04x}",
                             encode_reply(Reply.COMMAND_NOT_SUPPORTED)) from None
        if len(buf) < 3:
            return None
        if buf[2] != 0:
            raise SocksError(f"reserved byte of the request is {buf[2]:#04x}; must be 0x00",
                             encode_reply(Reply.GENERAL_FAILURE))
        # UDP ASSOCIATE names no destination: its address is the one the
        # client will send from, or zeros (RFC 1928 section 7; PySocks sends
        # the name "0"), and roam takes the source of the TCP connection instead.
        parsed = _parse_address(buf, 3, with_reply=True,
                                destination=command is not Command.UDP_ASSOCIATE)
        if parsed is None:
            return None
        host, port, end = parsed
        early = bytes(buf[end:])
        buf.clear()
        self._state = _State.DONE
        return Request(command, host, port, early)


def parse_udp_datagram(data: bytes | bytearray | memoryview) -> UdpDatagram:
    """Split a relayed datagram (RFC 1928 section 7): RSV | FRAG | address | DATA.

    Fragments are refused: section 7 makes reassembly optional and we skip it.
    """
    if len(data) < 4:
        raise SocksError(f"UDP datagram of {len(data)} bytes is shorter than a SOCKS header")
    if data[0] or data[1]:
        raise SocksError("reserved bytes of the UDP header are not zero")
    frag = data[2]
    if frag != 0:
        raise SocksError(f"fragmented UDP datagram (FRAG {frag:#04x}): "
                         "fragmentation is not supported")
    parsed = _parse_address(data, 3, with_reply=False)
    if parsed is None:
        raise SocksError(f"UDP datagram of {len(data)} bytes ends inside its SOCKS header")
    host, port, end = parsed
    return UdpDatagram(frag, host, port, bytes(data[end:]))


def encode_udp_datagram(host: str, port: int, payload: bytes) -> bytes:
    """RSV=0, FRAG=0, the address, then `payload`. ValueError if out of range."""
    return b"\x00\x00\x00" + _encode_address(host, port) + payload
