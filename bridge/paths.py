"""Path normalisation shared by every routing decision the bridge makes itself.

Decisions (closed doors, public endpoints, admin allow-list) are taken on the
percent-decoded path with repeated slashes folded and the trailing slash
dropped, so that ``/_matrix/client/v3//account/%64eactivate/`` cannot slip
past a rule that a differently-decoding homeserver would still route.
Dot segments are refused outright.
"""

from __future__ import annotations

import re

from bridge.errors import BadRequest, NotFound

# The client-server API version prefixes: api/v1 (still served by Synapse), r0,
# v1, v3, ..., unstable.
_VERSION = r"(?:api/v1|r0|v\d+|unstable)"
# Any client-server API prefix, unstable ones with an optional feature segment.
CLIENT = rf"/_matrix/client/(?:{_VERSION}|unstable/[^/]+)"
# Every path under /_matrix/client the bridge forwards starts like this.
_KNOWN_CLIENT = re.compile(rf"/_matrix/client/(?:versions|{_VERSION}(?:/.*)?)")

_SLASHES = re.compile(r"/{2,}")


def normalize(decoded_path: str) -> str:
    """Fold ``//`` and a trailing ``/``; refuse ``.`` and ``..`` segments and
    client-API paths under a version prefix no homeserver serves."""
    path = _SLASHES.sub("/", decoded_path)
    if len(path) > 1:
        path = path.rstrip("/")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise BadRequest("Path has dot segments", errcode="M_UNRECOGNIZED")
    if path.startswith("/_matrix/client/") and not _KNOWN_CLIENT.fullmatch(path):
        raise NotFound("Unrecognized request")
    return path
