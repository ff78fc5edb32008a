"""The one path every routing decision is taken on, computed from the raw request target.

Closed doors, public endpoints, the admin allow-list and the appservice-only
refusals are all decided on :func:`routing_path`, and what the homeserver
receives is the client's raw path itself (``request.rel_url.raw_path``, which
for an origin-form target is the target up to ``?``). The two must never
disagree about the path's structure, so the routing path is made the way
Synapse and Dendrite route: on the raw path split on ``/``, each segment
percent-decoded on its own. A ``%2F`` inside a segment is data, not a
separator (event IDs of room version 3, room aliases and state keys may contain
``/``), and stays ``%2F`` in the routing path; ``%`` itself stays ``%25``, so the
routing path is unambiguous, and it is aiohttp's ``URL.path_safe``, on which
aiohttp chooses the route (but for the trailing slash, below). So
``/account%2Fdeactivate`` is one segment for the bridge as for the homeserver
(not the closed door), and ``/account/%64eactivate`` is the closed door for the
bridge (conservatively: Synapse, matching the raw path, would not route it at
all).

Whatever a homeserver, or anything between the bridge and it, could read as a
different path is refused with Matrix JSON, before any route, token or
homeserver is involved: 400 ``M_UNRECOGNIZED`` for structure, 400
``M_INVALID_PARAM`` for characters.

- structure: a target that is not origin-form (absolute-form
  ``http://host/...``, authority-form, anything not starting with ``/``); a raw
  ``#`` (aiohttp would drop the fragment, a client library or proxy may not);
  a raw ``;`` in the path (path parameters, which some servers strip:
  ``/..;/``); an empty segment anywhere but at the end (``//``, which some
  servers fold); a segment that decodes, once or twice (``%252e``:
  %25-double-encoding), to ``.`` or ``..``, or holds such a part between
  decoded slashes (``a%2F..%2Fb``: a server that decodes ``%2F`` before
  resolving dot segments would climb out);
- characters: NUL and backslash, raw, percent-encoded (any case) or double
  encoded (a backslash is a separator to some servers); a ``%`` not followed by
  two hex digits; a segment that is not UTF-8 once decoded (``%ff``, the
  overlong ``%c0%ae``); anything outside printable ASCII in the raw target
  (aiohttp's C parser refuses those already; its Python parser may not).

The trailing slash is dropped for routing decisions, so every rule covers both
forms (conservative: the homeserver may route only one of them). A path under
``/_matrix/client/`` whose version prefix no homeserver serves is 404
``M_UNRECOGNIZED``, so a differently-routing homeserver cannot be reached around
a rule. Routes are case-sensitive, as the homeserver's: ``/_MATRIX/...`` matches
none of the bridge's routes and is aiohttp's 404, rendered as Matrix JSON by
:func:`bridge.errors.error_response`; nothing is forwarded.

The query is not the path: ``?filter=/../`` is forwarded untouched.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote, unquote_to_bytes

from bridge.errors import BadRequest, NotFound

# The client-server API version prefixes: api/v1 (still served by Synapse), r0,
# v1, v3, ..., unstable.
_VERSION = r"(?:api/v1|r0|v\d+|unstable)"
# Any client-server API prefix, unstable ones with an optional feature segment.
CLIENT = rf"/_matrix/client/(?:{_VERSION}|unstable/[^/]+)"
# Every path under /_matrix/client the bridge forwards starts like this.
_KNOWN_CLIENT = re.compile(rf"/_matrix/client/(?:versions|{_VERSION}(?:/.*)?)")

_DOT_SEGMENTS = frozenset({".", ".."})
# A "%" that does not start a percent-encoded octet.
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _structure(message: str) -> BadRequest:
    return BadRequest(message, errcode="M_UNRECOGNIZED")


def _character(message: str) -> BadRequest:
    return BadRequest(message, errcode="M_INVALID_PARAM")


def routing_path(target: str) -> str:
    """The routing path of the raw request target ``target`` (``request.raw_path``:
    path and query as the client sent them), or the refusal (see the module doc)."""
    if not target.startswith("/"):
        raise _structure("Only origin-form request targets are accepted")
    if "#" in target:
        raise _structure("Request targets have no fragment")
    return _routing(target.partition("?")[0])


@functools.lru_cache(maxsize=4096)
def _routing(path: str) -> str:
    """The routing path of a raw path (cached: clients repeat their paths; a refusal
    is an exception, never cached)."""
    if not (path.isascii() and path.isprintable()) or "\\" in path:
        raise _character("Invalid character in the path")
    if ";" in path:
        raise _structure("Path parameters are not accepted")
    if "%" in path and _BAD_PERCENT.search(path):
        raise _character("Invalid percent-encoding in the path")
    segments = path.split("/")
    last = len(segments) - 1
    routed: list[str] = []
    for index in range(1, len(segments)):
        segment = segments[index]
        if not segment:
            if index == last:
                break  # the trailing slash
            raise _structure("Path has empty segments")
        if "%" in segment:
            segment = _decoded(segment)
        elif segment in _DOT_SEGMENTS:
            raise _structure("Path has dot segments")
        routed.append(segment)
    routing = "/" + "/".join(routed)
    if routing.startswith("/_matrix/client/") and not _KNOWN_CLIENT.fullmatch(routing):
        raise NotFound("Unrecognized request")
    return routing


def _decoded(segment: str) -> str:
    """One raw segment as the routing path holds it: decoded, ``%`` and ``/`` re-encoded."""
    try:
        text = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError as e:
        raise _character("Path segment is not UTF-8") from e
    _check_decoded(text)
    if "%" in text:
        _check_decoded(unquote(text))  # what a server decoding twice would see
    return text.replace("%", "%25").replace("/", "%2F")


def _check_decoded(text: str) -> None:
    if "\x00" in text or "\\" in text:
        raise _character("Invalid character in the path")
    if text in _DOT_SEGMENTS or ("/" in text and not _DOT_SEGMENTS.isdisjoint(text.split("/"))):
        raise _structure("Path has dot segments")
