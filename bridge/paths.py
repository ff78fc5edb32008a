"""Path normalisation shared by every routing decision the bridge makes itself.

Decisions (closed doors, public endpoints, admin allow-list) are taken on the
percent-decoded path with repeated slashes folded and the trailing slash
dropped, so that ``/_matrix/client/v3//account/%64eactivate/`` cannot slip
past a rule that a differently-decoding homeserver would still route.
Dot segments are refused outright.
"""

from __future__ import annotations

import re

from bridge.errors import BadRequest

# Any client-server API version prefix: r0, v1, v3, ..., unstable[/<feature>].
CLIENT = r"/_matrix/client/(?:r0|v\d+|unstable(?:/[^/]+)?)"

_SLASHES = re.compile(r"/{2,}")


def normalize(decoded_path: str) -> str:
    """Fold ``//`` and a trailing ``/``; refuse ``.`` and ``..`` segments."""
    path = _SLASHES.sub("/", decoded_path)
    if len(path) > 1:
        path = path.rstrip("/")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise BadRequest("Path has dot segments", errcode="M_UNRECOGNIZED")
    return path
