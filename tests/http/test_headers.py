"""bridge.http.headers.upstream_headers: what the homeserver receives of the client's headers."""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.http import headers as module
from bridge.http.headers import Network, upstream_headers

PEER = "192.0.2.7"
BRIDGE_AUTH = "Bearer as-token"
SPOOF = "6.6.6.6"


def networks(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def upstream(
    pairs: list[tuple[str, str]],
    *,
    peer: str | None = PEER,
    scheme: str = "http",
    trusted: tuple[Network, ...] = (),
    authorization: str | None = BRIDGE_AUTH,
) -> list[tuple[str, str]]:
    result = upstream_headers(
        CIMultiDictProxy(CIMultiDict(pairs)),
        peer=peer,
        scheme=scheme,
        trusted_proxies=trusted,
        authorization=authorization,
    )
    assert isinstance(result, CIMultiDict)
    return list(result.items())


def bridge_set(forwarded_for: str = PEER, proto: str = "http") -> list[tuple[str, str]]:
    """What the bridge adds, after the client's headers it keeps."""
    return [
        ("Authorization", BRIDGE_AUTH),
        ("X-Forwarded-For", forwarded_for),
        ("X-Forwarded-Proto", proto),
    ]


KEPT = [
    ("Accept", "application/json"),
    ("Content-Type", "application/json"),
    ("Content-Length", "2"),
    ("User-Agent", "Element X"),
    ("X-Custom", "one"),
    ("x-custom", "two"),
    ("Accept-Encoding", "gzip"),
    ("Origin", "https://app.element.io"),
]


def test_end_to_end_headers_are_kept_in_order() -> None:
    assert upstream(KEPT) == [*KEPT, *bridge_set()]


@pytest.mark.parametrize(
    "name",
    [
        # Hop-by-hop.
        pytest.param("Connection", id="connection"),
        pytest.param("Keep-Alive", id="keep-alive"),
        pytest.param("Proxy-Authenticate", id="proxy-authenticate"),
        pytest.param("Proxy-Authorization", id="proxy-authorization"),
        pytest.param("Proxy-Connection", id="proxy-connection"),
        pytest.param("TE", id="te"),
        pytest.param("Trailer", id="trailer"),
        pytest.param("Transfer-Encoding", id="transfer-encoding"),
        pytest.param("Upgrade", id="upgrade"),
        pytest.param("HTTP2-Settings", id="http2-settings"),
        # Set by the bridge.
        pytest.param("Host", id="host"),
        pytest.param("Expect", id="expect"),
        pytest.param("Authorization", id="authorization"),
        # Forwarding and identity, in every spelling.
        pytest.param("Forwarded", id="forwarded"),
        pytest.param("X-Forwarded-For", id="x-forwarded-for"),
        pytest.param("x-forwarded-for", id="x-forwarded-for-lower-case"),
        pytest.param("X-FORWARDED-FOR", id="x-forwarded-for-upper-case"),
        pytest.param("X_Forwarded_For", id="x-forwarded-for-underscores"),
        pytest.param("X.Forwarded.For", id="x-forwarded-for-dots"),
        pytest.param("x_forwarded.For", id="x-forwarded-for-mixed"),
        pytest.param("X~Forwarded+For", id="x-forwarded-for-other-token-characters"),
        pytest.param("X-Forwarded-Proto", id="x-forwarded-proto"),
        pytest.param("X-Forwarded-Host", id="x-forwarded-host"),
        pytest.param("X-Forwarded-Port", id="x-forwarded-port"),
        pytest.param("X-Forwarded-Prefix", id="x-forwarded-prefix"),
        pytest.param("X-Forwarded-Server", id="x-forwarded-server"),
        pytest.param("X-Forwarded-Ssl", id="x-forwarded-ssl"),
        pytest.param("X-Forwarded-Scheme", id="x-forwarded-scheme"),
        pytest.param("X-Forwarded-Protocol", id="x-forwarded-protocol"),
        pytest.param("X-Forwarded-Uri", id="x-forwarded-uri"),
        pytest.param("X-Forwarded-Client-Cert", id="x-forwarded-client-cert"),
        pytest.param("X-Real-IP", id="x-real-ip"),
        pytest.param("X_Real_Ip", id="x-real-ip-underscores"),
        pytest.param("X-Client-IP", id="x-client-ip"),
        pytest.param("Client-IP", id="client-ip"),
        pytest.param("X-Cluster-Client-IP", id="x-cluster-client-ip"),
        pytest.param("True-Client-IP", id="true-client-ip"),
        pytest.param("CF-Connecting-IP", id="cf-connecting-ip"),
        pytest.param("Fastly-Client-IP", id="fastly-client-ip"),
        pytest.param("X-Original-Forwarded-For", id="x-original-forwarded-for"),
        pytest.param("Front-End-Https", id="front-end-https"),
        pytest.param("X-Url-Scheme", id="x-url-scheme"),
        pytest.param("X-Original-URL", id="x-original-url"),
        pytest.param("X-Rewrite-URL", id="x-rewrite-url"),
        pytest.param("X-Original-URI", id="x-original-uri"),
        pytest.param("X-HTTP-Method-Override", id="x-http-method-override"),
        pytest.param("X-HTTP-Method", id="x-http-method"),
        pytest.param("X-Method-Override", id="x-method-override"),
        pytest.param("X-Remote-User", id="x-remote-user"),
        pytest.param("Remote-User", id="remote-user"),
        pytest.param("Remote_User", id="remote-user-underscore"),
        pytest.param("X-Forwarded-User", id="x-forwarded-user"),
        pytest.param("X-Forwarded-Email", id="x-forwarded-email"),
        pytest.param("X-Auth-Request-User", id="x-auth-request-user"),
        pytest.param("X-Auth-Request-Email", id="x-auth-request-email"),
        pytest.param("X-Auth-Request-Access-Token", id="x-auth-request-access-token"),
        pytest.param("X-Envoy-Original-Path", id="x-envoy"),
        pytest.param("X-Amzn-Oidc-Identity", id="x-amzn-oidc"),
        pytest.param("X-MS-Client-Principal-Name", id="x-ms-client-principal"),
        pytest.param("X-Goog-Authenticated-User-Email", id="x-goog-authenticated-user"),
        pytest.param("Cf-Access-Authenticated-User-Email", id="cf-access"),
        pytest.param("X-SSL-Client-S-DN", id="x-ssl-client"),
    ],
)
def test_dropped(name: str) -> None:
    assert upstream([("Accept", "*/*"), (name, SPOOF)]) == [("Accept", "*/*"), *bridge_set()]


def test_headers_named_in_connection_are_dropped() -> None:
    pairs = [
        ("Connection", "keep-alive, X-One"),
        ("connection", " x_two ,,X.Three"),
        ("X-One", SPOOF),
        ("X-Two", SPOOF),
        ("X-Three", SPOOF),
        ("X-Four", "kept"),
    ]
    assert upstream(pairs) == [("X-Four", "kept"), *bridge_set()]


def test_connection_naming_x_forwarded_for_leaves_the_bridges_own() -> None:
    pairs = [("Connection", "X-Forwarded-For, Authorization"), ("X-Forwarded-For", SPOOF)]
    assert upstream(pairs) == bridge_set()


def test_exactly_one_authorization_the_bridges() -> None:
    pairs = [("Authorization", "Bearer a"), ("authorization", "Bearer b")]
    assert upstream(pairs) == bridge_set()


def test_no_authorization_when_the_bridge_has_none() -> None:
    assert upstream([("Authorization", "Bearer a")], authorization=None) == bridge_set()[1:]


@pytest.mark.parametrize(
    ("pairs", "peer", "trusted", "forwarded_for"),
    [
        pytest.param([("X-Forwarded-For", SPOOF)], PEER, (), PEER, id="no-trusted-proxies"),
        pytest.param([("X-Forwarded-For", SPOOF)], PEER, networks("10.0.0.0/8"), PEER,
                     id="untrusted-peer"),
        pytest.param([("X-Forwarded-For", "203.0.113.9")], PEER, networks("192.0.2.0/24"),
                     f"203.0.113.9, {PEER}", id="trusted-peer"),
        pytest.param([("X-Forwarded-For", "203.0.113.9, 198.51.100.1"),
                      ("x-forwarded-for", " 198.51.100.2 ")], PEER, networks("192.0.2.7/32"),
                     f"203.0.113.9, 198.51.100.1, 198.51.100.2, {PEER}",
                     id="trusted-peer-several-headers"),
        pytest.param([("X_Forwarded_For", SPOOF)], PEER, networks("192.0.2.0/24"), PEER,
                     id="trusted-peer-other-spelling-dropped"),
        pytest.param([], PEER, networks("192.0.2.0/24"), PEER, id="trusted-peer-no-chain"),
        pytest.param([("X-Forwarded-For", "203.0.113.9"), ("Connection", "X-Forwarded-For")],
                     PEER, networks("192.0.2.0/24"), PEER,
                     id="trusted-peer-chain-named-hop-by-hop"),
        pytest.param([("X-Forwarded-For", "203.0.113.9")], "2001:db8::1",
                     networks("2001:db8::/32"), "203.0.113.9, 2001:db8::1", id="trusted-ipv6"),
        pytest.param([("X-Forwarded-For", "203.0.113.9")], "::ffff:192.0.2.7",
                     networks("192.0.2.0/24"), "203.0.113.9, ::ffff:192.0.2.7",
                     id="trusted-ipv4-mapped"),
        pytest.param([("X-Forwarded-For", SPOOF)], "2001:db8::1", networks("192.0.2.0/24"),
                     "2001:db8::1", id="untrusted-other-family"),
        pytest.param([("X-Forwarded-For", SPOOF)], "not-an-address", networks("0.0.0.0/0"),
                     "not-an-address", id="peer-not-an-address"),
    ],
)  # fmt: skip
def test_x_forwarded_for(
    pairs: list[tuple[str, str]], peer: str, trusted: tuple[Network, ...], forwarded_for: str
) -> None:
    assert upstream(pairs, peer=peer, trusted=trusted) == bridge_set(forwarded_for)


def test_no_peer_no_x_forwarded_for() -> None:
    assert upstream([("X-Forwarded-For", SPOOF)], peer=None) == [
        ("Authorization", BRIDGE_AUTH),
        ("X-Forwarded-Proto", "http"),
    ]


TRUSTED = networks("192.0.2.0/24")


@pytest.mark.parametrize(
    ("pairs", "trusted", "scheme", "proto"),
    [
        pytest.param([("X-Forwarded-Proto", "https")], (), "http", "http", id="untrusted"),
        pytest.param([("X-Forwarded-Proto", "http")], (), "https", "https",
                     id="untrusted-connection-scheme"),
        pytest.param([("X-Forwarded-Proto", "https")], TRUSTED, "http", "https", id="trusted"),
        pytest.param([("X-Forwarded-Proto", "HTTPS")], TRUSTED, "http", "https",
                     id="trusted-upper-case"),
        pytest.param([("X-Forwarded-Proto", "https, http")], TRUSTED, "http", "https",
                     id="trusted-first-value"),
        pytest.param([("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")], TRUSTED,
                     "http", "https", id="trusted-first-header"),
        pytest.param([("X-Forwarded-Proto", "gopher")], TRUSTED, "https", "https",
                     id="trusted-not-http"),
        pytest.param([], TRUSTED, "https", "https", id="trusted-none-sent"),
        pytest.param([("X_Forwarded_Proto", "https")], TRUSTED, "http", "http",
                     id="trusted-other-spelling-dropped"),
    ],
)  # fmt: skip
def test_x_forwarded_proto(
    pairs: list[tuple[str, str]], trusted: tuple[Network, ...], scheme: str, proto: str
) -> None:
    result = dict(upstream(pairs, trusted=trusted, scheme=scheme))
    assert result["X-Forwarded-Proto"] == proto


def test_peer_is_parsed_only_with_trusted_proxies_and_once() -> None:
    module._trusted.cache_clear()
    upstream([], peer="198.51.100.9")
    assert module._trusted.cache_info().currsize == 0
    for _ in range(3):
        upstream([], peer="198.51.100.9", trusted=TRUSTED)
    info = module._trusted.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_client_headers_are_not_changed() -> None:
    client = CIMultiDict([("X-Forwarded-For", SPOOF), ("Accept", "*/*")])
    upstream_headers(
        CIMultiDictProxy(client),
        peer=PEER,
        scheme="http",
        trusted_proxies=(),
        authorization=BRIDGE_AUTH,
    )
    assert list(client.items()) == [("X-Forwarded-For", SPOOF), ("Accept", "*/*")]
