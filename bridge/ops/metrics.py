"""Prometheus metrics: every family the bridge exports, defined here, with fixed label sets.

Labels only ever take values from the tuples below: never a path, a user, a
device or a token. Families follow Prometheus' conventions (``_total``
counters, ``_seconds`` histograms, base units).

The request path is hot, so the labelled children it touches are resolved
once (``.labels()`` is a dict lookup and a lock, plus string work) and kept in
plain dicts keyed by the label tuple; a request then costs one dict lookup and
an ``inc``/``observe`` per family (measured: ``bench/metrics.py``).

Several workers (``listen.workers``): the supervisor gives every worker one
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, decided
when prometheus-client is first imported in the worker), each worker writes
its values there, and ``/metrics`` on any worker serves the sum of all
(:func:`exposition`). Gauges say how they add up across workers
(``multiprocess_mode``).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Literal

import aiohttp
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from bridge import __version__

PREFIX: Final = "matrix_oidc_bridge_"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# -- the fixed label values -------------------------------------------------------------

# Where a request went (bridge.app names every route): the route group.
ROUTE_GROUPS: Final = (
    "client",  # the client-server API, forwarded
    "sync",  # its long polls (/sync, /events), forwarded: their latency is the timeout's
    "media",  # /_matrix/media, forwarded
    "admin",  # /_synapse/admin, allow-listed and forwarded
    "well_known",  # /.well-known/matrix/*
    "discovery",  # auth_metadata, auth_issuer
    "compat",  # legacy login, logout and refresh, to MAS
    "login",  # legacy login, SSO, logout, refresh, back-channel logout: the bridge's own
    "provisioning",  # MAS's /_synapse/mas/*
    "other",  # anything unrouted (404) or refused before routing
)
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
# The bridge's calls to the issuer, by what they are for.
ISSUER_CALLS: Final = ("discovery", "jwks", "introspection", "revocation", "token")
# ok: a usable answer; refused: 4xx (introspection: the bridge's credentials);
# error: 5xx or a malformed answer; unreachable: no connection; timeout
# (Metrics.issuer_call decides).
ISSUER_OUTCOMES: Final = ("ok", "refused", "error", "unreachable", "timeout")
# forward: a client's request; long_poll: one of its long polls (/sync, /events: they
# wait for their timeout); appservice: the bridge's own (provisioning, probes).
HOMESERVER_CALLS: Final = ("forward", "long_poll", "appservice")
# refused: no connection (refused, reset, DNS); timeout; 5xx: the homeserver's own error.
HOMESERVER_ERRORS: Final = ("refused", "timeout", "5xx")
# Why a token was judged as it was (a fresh validation, not a cache hit).
VALIDATION_OUTCOMES: Final = (
    "valid",
    "inactive",
    "expired",
    "not_yet_valid",
    "not_access_token",
    "wrong_issuer",
    "wrong_audience",
    "wrong_client",
    "missing_scope",
    "bad_device",
    "bad_localpart",
    "reserved_user",
    "foreign_namespace",
    "bad_signature",
    "issuer_unavailable",
)
CACHE_LOOKUPS: Final = ("hit", "negative_hit", "miss")
# Closed doors (bridge.routes.closed_doors), by rule.
CLOSED_DOOR_RULES: Final = (
    "account_deactivation",
    "password",
    "threepid",
    "delete_devices",
    "registration",
    "login_token",
    "logout",
    "appservice_login",
    "appservice_only",
    "admin_api",
    "cross_signing_reset",
)

# Seconds, for calls to the issuer; for requests (and homeserver calls) half a millisecond
# below, as the bridge's own answers take well under one, and up to a minute above.
_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_BUCKETS = (0.0005, *_CALL_BUCKETS, 30.0, 60.0)

# Every family's help text, by name (without PREFIX and the ``_total`` suffix):
# Metrics gives each its type and labels.
_HELP: Final = {
    "requests": "Requests answered, by route group, method and status class.",
    "request_duration_seconds": "Time from a request's arrival to its answer, by route group.",
    "requests_in_flight": "Requests being answered now.",
    "homeserver_request_duration_seconds": (
        "Time until the homeserver's answer headers, by kind of call."
    ),
    "homeserver_errors": "Homeserver calls that failed, by kind of call and of failure.",
    "issuer_requests": "Calls to the issuer, by kind and outcome.",
    "issuer_request_duration_seconds": "Duration of calls to the issuer, by kind.",
    "issuer_metadata_last_success_timestamp_seconds": (
        "When the issuer's discovery document was last fetched (Unix time)."
    ),
    "token_cache_lookups": "Token cache lookups: hit, negative_hit (a known-bad token), miss.",
    "token_cache_evictions": "Live sessions pushed out of the full token cache (not expiries).",
    "token_cache_entries": (
        "Entries in the token cache: positive (sessions) and negative (refused tokens)."
    ),
    "token_validations": "Tokens judged by the issuer (cache misses), by outcome.",
    "provisioning_requests": (
        "MAS's provisioning calls (/_synapse/mas/*), by endpoint and status class."
    ),
    "closed_door_refusals": "Requests refused at a closed door, by rule.",
    "build_info": "The bridge's version and its runtime's (always 1).",
}

_METHOD_LABEL = {method: method for method in METHODS}


def multiprocess_dir() -> str | None:
    """The multiprocess directory, when prometheus-client runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


# How a gauge's values from several workers add up (prometheus-client's multiprocess_mode).
AddsUp = Literal["livesum", "livemin", "max"]


class _Families:
    """Makes the families of one registry: named with PREFIX, described by _HELP."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def counter(self, name: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, _HELP[name], labels, registry=self._registry)

    def gauge(self, name: str, *labels: str, adds_up: AddsUp) -> Gauge:
        return Gauge(
            PREFIX + name, _HELP[name], labels, registry=self._registry, multiprocess_mode=adds_up
        )

    def histogram(
        self, name: str, *labels: str, buckets: tuple[float, ...] = _REQUEST_BUCKETS
    ) -> Histogram:
        return Histogram(
            PREFIX + name, _HELP[name], labels, buckets=buckets, registry=self._registry
        )


class Metrics:
    """The bridge's metric families, registered in ``registry`` (one per application)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        family = _Families(self.registry)
        self.requests = family.counter("requests", "route", "method", "status")
        self.request_duration = family.histogram("request_duration_seconds", "route")
        self.in_flight = family.gauge("requests_in_flight", adds_up="livesum")
        self.homeserver_duration = family.histogram("homeserver_request_duration_seconds", "call")
        self.homeserver_errors = family.counter("homeserver_errors", "call", "kind")
        self.issuer_requests = family.counter("issuer_requests", "call", "outcome")
        self.issuer_duration = family.histogram(
            "issuer_request_duration_seconds", "call", buckets=_CALL_BUCKETS
        )
        self.issuer_metadata_loaded = family.gauge(
            "issuer_metadata_last_success_timestamp_seconds", adds_up="livemin"
        )
        self.token_cache_lookups = family.counter("token_cache_lookups", "result")
        self.token_cache_evictions = family.counter("token_cache_evictions")
        self.token_cache_entries = family.gauge("token_cache_entries", "cache", adds_up="livesum")
        self.token_validations = family.counter("token_validations", "outcome")
        self.provisioning_requests = family.counter("provisioning_requests", "endpoint", "status")
        self.closed_door_refusals = family.counter("closed_door_refusals", "rule")
        self.build_info = family.gauge("build_info", "version", "python", "aiohttp", adds_up="max")
        self.build_info.labels(__version__, platform.python_version(), aiohttp.__version__).set(1)

        # Children resolved once: the request path only looks them up.
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._request_duration = {g: self.request_duration.labels(g) for g in ROUTE_GROUPS}
        self.homeserver_call_duration = {
            c: self.homeserver_duration.labels(c) for c in HOMESERVER_CALLS
        }
        self.homeserver_error = {
            (c, k): self.homeserver_errors.labels(c, k)
            for c in HOMESERVER_CALLS
            for k in HOMESERVER_ERRORS
        }
        self.issuer_request = {
            (c, o): self.issuer_requests.labels(c, o) for c in ISSUER_CALLS for o in ISSUER_OUTCOMES
        }
        self.issuer_call_duration = {c: self.issuer_duration.labels(c) for c in ISSUER_CALLS}
        self.cache_lookup = {r: self.token_cache_lookups.labels(r) for r in CACHE_LOOKUPS}
        self.validation = {o: self.token_validations.labels(o) for o in VALIDATION_OUTCOMES}
        self.closed_door = {
            rule: self.closed_door_refusals.labels(rule) for rule in CLOSED_DOOR_RULES
        }
        self._provisioning: dict[tuple[str, int], Counter] = {}
        self._samplers: list[Callable[[], None]] = [self._sample_in_flight]
        # Requests being answered, counted by the request path as a plain int (a
        # gauge's inc and dec take a lock each) and sampled into ``in_flight``.
        self.answering = 0

    def _sample_in_flight(self) -> None:
        self.in_flight.set(self.answering)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request (the hot path: two lookups, an ``inc``, an ``observe``)."""
        key = (route, _METHOD_LABEL.get(method, "other"), status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, key[1], _status_class(status))
        child.inc()
        self._request_duration[route].observe(seconds)

    def provisioning_done(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        child = self._provisioning.get(key)
        if child is None:
            child = self._provisioning[key] = self.provisioning_requests.labels(
                endpoint, _status_class(status)
            )
        child.inc()

    def add_sampler(self, sample: Callable[[], None]) -> None:
        """``sample`` sets gauges from live state; run before each exposition and
        periodically (:meth:`sample`), so other workers' scrapes see fresh values."""
        self._samplers.append(sample)

    def sample(self) -> None:
        for sample in self._samplers:
            sample()

    def issuer_metadata_fetched(self) -> None:
        self.issuer_metadata_loaded.set(time.time())

    @contextmanager
    def issuer_call(self, call: str) -> Iterator[IssuerCall]:
        """Count and time the call to the issuer made in the block (``call``: one of
        ISSUER_CALLS), which sets the answer's HTTP status on what it is given.

        The outcome: ok when the block ends normally; when it raises, by the exception
        or its ``__cause__``: timeout, unreachable (no connection); else refused for an
        answer other than 200 below 500 (no redirect is followed), error for anything
        else (5xx, a malformed answer). A cancelled call is not counted.
        """
        answer = IssuerCall()
        outcome = ""
        started = time.perf_counter()
        try:
            yield answer
            outcome = "ok"
        except Exception as e:
            outcome = _issuer_failure(e.__cause__ or e, answer.status)
            raise
        finally:
            if outcome:
                self.issuer_request[call, outcome].inc()
                self.issuer_call_duration[call].observe(time.perf_counter() - started)


class IssuerCall:
    """A call to the issuer being counted (:meth:`Metrics.issuer_call`)."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        # The answer's HTTP status (0: none yet).
        self.status = 0


def _issuer_failure(error: BaseException, status: int) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, aiohttp.ClientConnectionError):
        return "unreachable"
    return "refused" if status < 500 and status not in (0, 200) else "error"


def _status_class(status: int) -> str:
    index = status // 100 - 1
    return STATUS_CLASSES[index] if 0 <= index < len(STATUS_CLASSES) else "5xx"


def exposition(metrics: Metrics) -> tuple[bytes, str]:
    """The text exposition (body, content type): this process's metrics, or with several
    workers the sum of every worker's from the multiprocess directory."""
    metrics.sample()
    if multiprocess_dir() is None:
        return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def stalest_issuer_fetch() -> float | None:
    """With several workers: when the worker whose discovery document is oldest last
    fetched it (Unix time; 0: one never has), from the multiprocess directory. None
    in a single process."""
    if multiprocess_dir() is None:
        return None
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    value = registry.get_sample_value(PREFIX + "issuer_metadata_last_success_timestamp_seconds")
    return 0.0 if value is None else value


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (in flight, cache sizes) from the sum."""
    if multiprocess_dir() is not None:
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
