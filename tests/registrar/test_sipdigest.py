"""roam.registrar.sipdigest: challenges as read, and digest answers against
the RFCs' worked examples."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from roam.errors import ConfigError
from roam.registrar.sipdigest import (
    Challenge,
    authorization,
    choose_challenge,
    digest_response,
    parse_challenge,
)


def test_rfc_7616_challenges_are_read() -> None:
    # RFC 7616 section 3.9.1: the two challenges of its example.
    sha = parse_challenge('Digest realm="http-auth@example.org", qop="auth, auth-int", '
                          'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",'
                          ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    md5 = parse_challenge('Digest realm="http-auth@example.org", qop="auth, auth-int", '
                          'algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                          'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    assert sha is not None
    assert md5 is not None
    assert sha.qop == ("auth", "auth-int")
    assert sha.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert choose_challenge([md5, sha]) is sha
    assert parse_challenge('Basic realm="x"') is None
    stale = parse_challenge('digest REALM="a\\"b", nonce=abc, stale=TRUE')
    assert stale == Challenge('a"b', "abc", "MD5", (), None, True)


# --- Digest against the RFCs' examples -------------------------------------------------


def test_rfc_2617_section_3_5_example() -> None:
    assert digest_response(
        algorithm="MD5", username="Mufasa", password="Circle Of Life",
        realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET", uri="/dir/index.html", qop="auth", nc=1, cnonce="0a4f113b",
    ) == "6629fae49393a05397450978507c4ef1"


RFC_7616: dict[str, Any] = {"username": "Mufasa", "password": "Circle of Life",
            "realm": "http-auth@example.org",
            "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "method": "GET", "uri": "/dir/index.html", "qop": "auth", "nc": 1,
            "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"}


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc_7616_section_3_9_1_example(algorithm: str, expected: str) -> None:
    assert digest_response(algorithm=algorithm, **RFC_7616) == expected


def test_rfc_7616_authorization_header() -> None:
    challenge = Challenge("http-auth@example.org", RFC_7616["nonce"], "SHA-256",
                          ("auth", "auth-int"), "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
    value = authorization(challenge, username="Mufasa", password="Circle of Life",
                          method="GET", uri="/dir/index.html", nc=1,
                          cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert value.startswith('Digest username="Mufasa", realm="http-auth@example.org", ')
    for part in ['uri="/dir/index.html"', "algorithm=SHA-256", "nc=00000001", "qop=auth",
                 'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"',
                 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
                 'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"']:
        assert part in value


def test_digest_without_qop_and_sess() -> None:
    # RFC 2069's form, which RFC 2617 section 3.2.2.1 keeps: H(HA1:nonce:HA2).
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:r").hexdigest()
    assert digest_response(algorithm="MD5", username="u", password="p", realm="r", nonce="n",
                           method="REGISTER", uri="sip:r") == \
        hashlib.md5(f"{ha1}:n:{ha2}".encode()).hexdigest()
    # -sess (RFC 7616 section 3.4.2): HA1 again over nonce and cnonce.
    sess_ha1 = hashlib.sha256(
        f"{hashlib.sha256(b'u:r:p').hexdigest()}:n:c".encode()).hexdigest()
    sha_ha2 = hashlib.sha256(b"REGISTER:sip:r").hexdigest()
    assert digest_response(algorithm="SHA-256-sess", username="u", password="p", realm="r",
                           nonce="n", method="REGISTER", uri="sip:r", qop="auth", nc=2,
                           cnonce="c") == \
        hashlib.sha256(f"{sess_ha1}:n:00000002:c:auth:{sha_ha2}".encode()).hexdigest()
    with pytest.raises(ConfigError, match="not one of"):
        digest_response(algorithm="SHA-1", username="u", password="p", realm="r", nonce="n",
                        method="REGISTER", uri="sip:r")
