"""The issuer's discovery document: fetched at start, refreshed in the background.

The document is served to clients as the homeserver's ``auth_metadata``, so it
is kept both parsed (for the bridge's own use) and serialised once per fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.config import IssuerConfig
from bridge.errors import IssuerUnavailable
from bridge.issuer.http import IssuerHTTP

log = logging.getLogger("bridge.issuer")

# How soon to try again while the issuer has never answered.
_RETRY_UNLOADED = 5.0


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery §4: the issuer, without a trailing slash, + the well-known path."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


class DiscoveryFailed(IssuerUnavailable):
    """The document was not kept; ``answered``: the HTTP status, if an answer came."""

    def __init__(self, message: str, answered: int | None = None) -> None:
        super().__init__(message)
        self.answered = answered


def _failed(error: Exception, status: int) -> DiscoveryFailed:
    return DiscoveryFailed(f"Discovery failed: {type(error).__name__}", status or None)


class IssuerMismatch(DiscoveryFailed):
    """The document names another issuer (``named``)."""

    def __init__(self, named: object, configured: str) -> None:
        super().__init__(f"Discovery document names issuer {named!r}, configured {configured!r}")
        self.named = named


@dataclass(frozen=True)
class Metadata:
    """One validated discovery document."""

    document: Mapping[str, Any]
    serialized: bytes

    def endpoint(self, name: str) -> str | None:
        value = self.document.get(name)
        return value if isinstance(value, str) and value else None


class IssuerMetadata:
    """Holds the current :class:`Metadata`, or ``None`` until the issuer first answers."""

    def __init__(self, http: IssuerHTTP, config: IssuerConfig) -> None:
        self._http = http
        self._config = config
        self.current: Metadata | None = None
        # http.clock.monotonic() of the last successful fetch.
        self.fetched_at: float | None = None

    def age(self) -> float | None:
        """Seconds since the document was last fetched (None: never)."""
        return None if self.fetched_at is None else self._http.clock.monotonic() - self.fetched_at

    def max_age(self) -> float:
        """How old the document may be and still count as fresh: two refresh intervals
        (one failed refresh is tolerated; two in a row make the bridge not ready)."""
        return 2 * self._config.metadata_refresh_interval + 5

    def fresh(self) -> bool:
        """Loaded, and refreshed within :meth:`max_age`."""
        age = self.age()
        return age is not None and age <= self.max_age()

    def require(self) -> Metadata:
        """The metadata, or :class:`IssuerUnavailable` if it was never loaded."""
        if self.current is None:
            raise IssuerUnavailable("The authentication service's metadata is not loaded yet")
        return self.current

    def account_url(self) -> str | None:
        """Where users manage their account: configured, else MAS's ``account_management_uri``."""
        if self._config.account_management_url:
            return self._config.account_management_url
        return self.current.endpoint("account_management_uri") if self.current else None

    async def fetch(self) -> Metadata:
        """Fetch and validate the discovery document; keep it if valid."""
        url = discovery_url(self._config.issuer)
        # Not bounded by the in-flight limit: a flood of made-up tokens that fills it
        # must not keep the document from being refreshed.
        async with self._http.call("discovery", url, unreachable=_failed, bounded=False) as answer:
            if answer.status != 200:
                raise DiscoveryFailed(f"Discovery answered HTTP {answer.status}", answer.status)
            document = await answer.response.json(content_type=None)
            if not isinstance(document, dict):
                raise DiscoveryFailed("Discovery document is not a JSON object", answer.status)
        if document.get("issuer") != self._config.issuer:
            # A mismatch means a misconfiguration or a mix-up attack (RFC 8414 §3.3):
            # what was trusted before is not any more. Tokens validated already keep
            # working from the cache; new ones get 503 until the document is right.
            if self.current is not None:
                log.error("the issuer's discovery document now names another issuer")
            self.current = None
            raise IssuerMismatch(document.get("issuer"), self._config.issuer)
        metadata = Metadata(document, json.dumps(document).encode())
        self.current = metadata
        self.fetched_at = self._http.clock.monotonic()
        log.debug("issuer metadata fetched from %s", url)
        self._http.metrics.issuer_metadata_fetched()
        return metadata

    async def refresh_forever(self) -> None:
        """Background task: keep the document fresh; retry sooner while none is loaded."""
        while True:
            delay = self._config.metadata_refresh_interval if self.current else _RETRY_UNLOADED
            await asyncio.sleep(delay)
            try:
                await self.fetch()
            except IssuerUnavailable as e:
                log.warning("issuer metadata refresh failed: %s", e.message)
