"""The bridge's errors, and how they are rendered as Matrix JSON.

Hierarchy::

    BridgeError
     ├── ConfigError            bad configuration; the CLI exits with code 11
     └── MatrixError            anything a client sees: errcode + HTTP status
          ├── MissingToken          401 M_MISSING_TOKEN
          ├── UnknownToken          401 M_UNKNOWN_TOKEN + soft_logout (logs the client out)
          ├── BadRequest            400 (M_INVALID_PARAM unless told otherwise)
          ├── Forbidden             403 M_FORBIDDEN
          ├── NotFound              404 M_UNRECOGNIZED
          ├── CannotBeDone          404 M_UNRECOGNIZED: not on this homeserver, through the gateway
          ├── IssuerUnavailable     503 M_UNKNOWN + Retry-After (never a 401)
          └── HomeserverUnavailable 502 / 504 M_UNKNOWN

Messages never contain a token, a secret or a request body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from aiohttp import web

log = logging.getLogger("bridge.errors")

_JSON = "application/json"


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration file is wrong at ``key`` (the first problem), and maybe at more
    keys (``more``: further (key, problem) pairs). ``lines()`` says each on a line."""

    def __init__(self, key: str, problem: str, *, more: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
        self.problems: list[tuple[str, str]] = [(key, problem), *more]

    def lines(self) -> list[str]:
        """One ``key: problem`` line per problem."""
        return [f"{key}: {problem}" for key, problem in self.problems]


class MatrixError(BridgeError):
    """An error answered to the client as ``{"errcode", "error"}``."""

    status: int = 500
    errcode: str = "M_UNKNOWN"
    # Why a token was refused, in the metrics' words (bridge.ops.metrics.VALIDATION_OUTCOMES).
    outcome: str = ""

    def __init__(
        self,
        message: str,
        *,
        errcode: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # More fields of the JSON body (``soft_logout``, ...).
        self.extra: Mapping[str, object] = extra or {}
        if errcode is not None:
            self.errcode = errcode
        if status is not None:
            self.status = status
        self.headers: Mapping[str, str] = headers or {}

    def to_response(self) -> web.Response:
        """Render as a Matrix JSON error response."""
        body = json.dumps({"errcode": self.errcode, "error": self.message, **self.extra})
        return web.Response(
            status=self.status, text=body, content_type=_JSON, headers=dict(self.headers)
        )


class MissingToken(MatrixError):
    status = 401
    errcode = "M_MISSING_TOKEN"


class UnknownToken(MatrixError):
    """The token is not (or no longer) valid. ``soft_logout`` (in the body, as the
    spec has it) is true for a token that merely expired: the client may refresh
    it and keep its device; false for a revoked, unknown or malformed one."""

    status = 401
    errcode = "M_UNKNOWN_TOKEN"

    def __init__(self, message: str, *, soft_logout: bool = False) -> None:
        super().__init__(message, extra={"soft_logout": soft_logout})
        self.soft_logout = soft_logout


class BadRequest(MatrixError):
    status = 400
    errcode = "M_INVALID_PARAM"


class Forbidden(MatrixError):
    status = 403
    errcode = "M_FORBIDDEN"


class NotFound(MatrixError):
    status = 404
    errcode = "M_UNRECOGNIZED"


class CannotBeDone(MatrixError):
    """Something the homeserver cannot be made to do through the appservice (MAS's
    provisioning API): answered as Synapse answers a request it has no handler for."""

    status = 404
    errcode = "M_UNRECOGNIZED"

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} cannot be done on this homeserver through the gateway")


class IssuerUnavailable(MatrixError):
    """The issuer could not answer; the token's validity is unknown, so never 401."""

    status = 503
    errcode = "M_UNKNOWN"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class HomeserverUnavailable(MatrixError):
    """The homeserver could not be reached (502) or did not answer in time (504)."""

    status = 502
    errcode = "M_UNKNOWN"


def error_response(request: web.Request, error: Exception) -> web.Response:
    """Any failure as Matrix JSON; never an HTML page or a stack trace.

    An ``HTTPException`` below 400 (a redirect) is raised again.
    """
    if isinstance(error, MatrixError):
        return error.to_response()
    if isinstance(error, ConfigError):
        # A setting that shows itself only at run time: a kept homeserver token that
        # no configured store.encryption_keys decrypts (an instance with other keys
        # wrote it). The admin's to fix, said in the log; the client is told the
        # service is unavailable, not that its token is bad (which would log it out).
        log.error("cannot serve %s %s: %s", request.method, request.path, error)
        return MatrixError(
            "The gateway cannot read its stored credentials; its administrator must fix "
            "its configuration",
            status=503,
        ).to_response()
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        errcode = {404: "M_UNRECOGNIZED", 405: "M_UNRECOGNIZED", 413: "M_TOO_LARGE"}.get(
            error.status, "M_UNKNOWN"
        )
        return MatrixError(error.reason, errcode=errcode, status=error.status).to_response()
    # The traceback goes to the log (it never holds a token: they are not put
    # into exception messages); the client gets a plain Matrix error.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=error)
    return MatrixError("Internal error").to_response()
