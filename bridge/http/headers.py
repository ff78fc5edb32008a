"""The request headers the homeserver receives: the client's, cleaned, in one pass.

:func:`upstream_headers` copies the client's headers except:

- hop-by-hop headers (RFC 9110 7.6.1: ``Connection``, ``Keep-Alive``,
  ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``,
  the ``Proxy-Authenticate``/``-Authorization`` pair, and ``HTTP2-Settings``,
  which RFC 9113 3.2.1 makes connection-specific) and every header the
  ``Connection`` header names;
- ``Host`` (the homeserver's own is set by the HTTP client), ``Expect`` (the
  bridge's server has answered it already) and ``Authorization`` (the bridge sets
  exactly one of its own: the credentials of the identity strategy);
- every header a homeserver, or a proxy or auth layer beside it, could read as
  the client's address, scheme, host, URL, method or identity: only the bridge
  may say those. The client's spelling does not matter: names are compared
  lower-cased with every separator a server may fold into ``-`` (``_`` and
  ``.``, which WSGI and CGI map to the same variable as ``-``, and the other
  token characters ``!#$%&'*+^`|~``, which Apache 2.2 did), so
  ``X_Forwarded_For`` and ``X.Forwarded.For`` are ``X-Forwarded-For``. The
  family (``_FORWARDING``, ``_FORWARDING_PREFIXES``): the standard ``Forwarded``
  and the de-facto ``X-Forwarded-*`` (``For``, ``Proto``, ``Host``, ``Port``,
  ``Prefix``, ``Server``, ``Ssl``, ``Scheme``, ``Protocol``, ``Uri``, ``Method``,
  ``User``, ``Email``, ``Groups``, ``Access-Token``, ``Client-Cert``: any of
  them, by prefix); the client-address headers of CDNs, load balancers and
  application servers (``X-Real-IP``, ``True-Client-IP``, ``CF-Connecting-IP``,
  ``Fastly-Client-IP``, ``X-Cluster-Client-IP``, ``Client-IP`` ...); the URL and
  method rewrites of IIS, Symfony, Zend and Laravel (``X-Original-URL``,
  ``X-Rewrite-URL``, ``X-HTTP-Method-Override`` ...); the scheme headers Gunicorn,
  IIS and ingress-nginx trust (``Front-End-Https``, ``X-Url-Scheme``,
  ``X-Scheme``); and the identity headers of authenticating proxies
  (``Remote-User`` and ``X-Remote-User`` of Apache and Authelia, oauth2-proxy's
  ``X-Auth-Request-*``, Envoy's ``X-Envoy-*`` and ``X-Forwarded-Client-Cert``,
  the client-certificate headers of nginx set-ups, AWS ALB's ``X-Amzn-Oidc-*``,
  Azure's ``X-MS-Client-Principal*``, Google IAP's ``X-Goog-Authenticated-User-*``
  and ``X-Goog-IAP-JWT-Assertion``, Cloudflare Access' ``Cf-Access-*``,
  Pomerium's ``X-Pomerium-*``).

and then sets:

- ``X-Forwarded-For``: the peer's address; when the peer is one of
  ``listen.trusted_proxies`` (a reverse proxy in front of the bridge), appended
  to the chain it sent (several ``X-Forwarded-For`` headers joined with ", ";
  read in that spelling only, and even when its ``Connection`` names it: it is
  addressed to the bridge); from anyone else the client's chain is dropped;
- ``X-Forwarded-Proto``: from a trusted peer the scheme it sent (its first
  value, if ``http`` or ``https``), else the scheme of the connection itself.

CR and LF in values, obsolete line folding, and ``Transfer-Encoding`` with
``Content-Length`` never get here: aiohttp's parser refuses them (400).

Per call: one pass over the client's headers against precomputed sets, each name
made canonical once (``functools.lru_cache``). The peer is parsed as an address
only when there are trusted proxies, once per peer (``functools.lru_cache``).
"""

from __future__ import annotations

import functools
import ipaddress

from multidict import CIMultiDict, CIMultiDictProxy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)
# Never passed on as the client sent them; the bridge's own are set instead.
_SET_BY_THE_BRIDGE = frozenset({"host", "expect", "authorization"})
_FORWARDING = frozenset(
    {
        # The client's address, scheme and host, as proxies pass them on.
        "forwarded",
        "x-forwarded",
        "forwarded-for",
        "x-original-forwarded-for",
        "x-real-ip",
        "x-client-ip",
        "client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "cf-connecting-ipv6",
        "fastly-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-proxyuser-ip",
        "proxy-client-ip",
        "wl-proxy-client-ip",
        "x-host",
        "x-original-host",
        "front-end-https",
        "x-url-scheme",
        "x-scheme",
        # The URL or method the application should act on instead of the request's.
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        # Who the client is, as an authenticating proxy in front would say.
        "remote-user",
        "x-remote-user",
        "x-remote-group",
        "x-user",
        "x-authenticated-user",
        "x-authenticated-userid",
        "x-webauth-user",
        "x-client-cert",
        "ssl-client-cert",
        "x-goog-iap-jwt-assertion",
    }
)
_FORWARDING_PREFIXES = (
    "x-forwarded-",
    "x-auth-request-",
    "x-envoy-",
    "x-ssl-client-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "x-goog-authenticated-user-",
    "cf-access-",
    "x-pomerium-",
)
_DROPPED = HOP_BY_HOP | _SET_BY_THE_BRIDGE | _FORWARDING
# Token characters (RFC 9110 5.6.2) other than letters, digits and "-".
_SEPARATORS = str.maketrans(dict.fromkeys("!#$%&'*+.^_`|~", "-"))
_SCHEMES = frozenset({"http", "https"})


def _canonical(name: str) -> str:
    """A header name as any server reading it may: lower-case, separators as ``-``."""
    return name.lower().translate(_SEPARATORS)


@functools.lru_cache(maxsize=1024)
def _classified(name: str) -> tuple[str, bool]:
    """``name`` made canonical, and whether it is dropped whatever the ``Connection``
    header says (cached: ``str.translate`` is slow, and clients send few distinct names)."""
    canonical = _canonical(name)
    return canonical, canonical in _DROPPED or canonical.startswith(_FORWARDING_PREFIXES)


def connection_named(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """The names (canonical) that the ``Connection`` headers of ``headers`` list."""
    if "Connection" not in headers:
        return frozenset()
    return _named(",".join(headers.getall("Connection")))


@functools.lru_cache(maxsize=256)
def _named(value: str) -> frozenset[str]:
    """(cached: peers send the same ``Connection`` value again and again)"""
    return frozenset(_canonical(token.strip()) for token in value.split(","))


def upstream_headers(
    headers: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    trusted_proxies: tuple[Network, ...],
    authorization: str | None,
) -> CIMultiDict[str]:
    """The headers to send the homeserver for a request with the client's ``headers``
    (see the module doc). ``peer``: the connection's remote address
    (``request.remote``); ``scheme``: its scheme (``request.scheme``);
    ``authorization``: the bridge's own ``Authorization`` value, if any."""
    named = connection_named(headers)
    trusted = bool(trusted_proxies) and peer is not None and _trusted(peer, trusted_proxies)
    chain: list[str] = []
    proto: str | None = None
    upstream: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        canonical, dropped = _classified(name)
        if dropped or canonical in named:
            if trusted and canonical not in named:  # hop-by-hop for the proxy too
                # The trusted proxy's own, in their standard spelling only.
                lower = name.lower()
                if lower == "x-forwarded-for":
                    chain.extend(hop for hop in (v.strip() for v in value.split(",")) if hop)
                elif lower == "x-forwarded-proto" and proto is None:
                    proto = value.split(",", 1)[0].strip().lower()
            continue
        upstream.add(name, value)
    if authorization is not None:
        upstream["Authorization"] = authorization
    if peer:
        chain.append(peer)
    if chain:
        upstream["X-Forwarded-For"] = ", ".join(chain)
    upstream["X-Forwarded-Proto"] = proto if proto in _SCHEMES else scheme
    return upstream


@functools.lru_cache(maxsize=4096)
def _trusted(peer: str, trusted_proxies: tuple[Network, ...]) -> bool:
    """Whether ``peer`` is in one of ``trusted_proxies`` (an IPv4-mapped IPv6 address
    counts as its IPv4 address)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        addresses.append(address.ipv4_mapped)
    return any(a in network for a in addresses for network in trusted_proxies)
