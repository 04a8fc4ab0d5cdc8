"""Which address the connector dials for a requested destination."""

from __future__ import annotations

import asyncio

from roam.connector.allow import AccessList
from roam.connector.connector import Connector


def _resolve(rules: list[str], host: str, port: int) -> str | None:
    connector = Connector(AccessList.parse(rules))
    return asyncio.run(connector._resolve_allowed(host, port))


def test_name_rule_admits_the_name_and_dials_its_address() -> None:
    assert _resolve(["localhost:80"], "localhost", 80) in {"127.0.0.1", "::1"}


def test_network_rule_checks_the_resolved_address() -> None:
    assert _resolve(["127.0.0.0/8:*"], "localhost", 22) == "127.0.0.1"
    assert _resolve(["10.0.0.0/8:*"], "localhost", 22) is None


def test_wrong_port_is_refused() -> None:
    assert _resolve(["127.0.0.1:80"], "127.0.0.1", 81) is None


def test_name_no_rule_could_admit_is_not_looked_up() -> None:
    # .invalid never resolves (RFC 6761): a lookup would raise, so None means none was made.
    assert _resolve(["intranet.example:80"], "secret.invalid", 80) is None
    assert _resolve([], "secret.invalid", 80) is None
