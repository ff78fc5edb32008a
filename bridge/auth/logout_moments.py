"""Logout moments: tokens issued at or before a user's or a device's logout are refused.

``/logout`` records a moment for the device, ``/logout/all`` one for the user,
back-channel logout one for each device of the ended session. A token whose
``iat`` is at or before the moment that covers it is refused (401
``M_UNKNOWN_TOKEN``), whatever the issuer or the token cache still says, so
a logout holds on the very next request, even where the issuer could not
revoke the token (a JWT access token, or another client's token).

``/logout`` with a device-less token (the API scope alone) ends that token
only: its moment names the token by digest, and refuses it whenever it was
issued, leaving the user's other device-less tokens alone. Its device is
:data:`TOKEN_MOMENT_DEVICE`, which no device ID can be: a bridge of an
older version sharing the store (a rolling upgrade) reads it as the logout
of a device nobody has, never as one of the whole user.

The check is on every authenticated request, so it is two dict lookups in
memory (:meth:`LogoutMoments.refuses`), never a store query. The moments are
written to the store and reach every instance from there
(:meth:`~bridge.store.Store.follow_logout_moments`: PostgreSQL ``LISTEN/NOTIFY``
at once, SQLite by looking every ``login.sync_interval``). A moment applied
here also drops the matching sessions from the token cache (``on_logout``).

``iat`` is in whole seconds: a moment refuses every token of its second,
including one issued in the same second after it (a new login right after
``/logout/all`` may have to wait for the next second). A token without
``iat`` cannot be placed, and is refused once any moment covers its user or
device. Issuer and bridge clocks must agree (NTP), as for ``exp``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from bridge.auth.identity import Identity
from bridge.runtime.clock import Clock
from bridge.store.records import LogoutMoment, digest

log = logging.getLogger("bridge.auth")

# Told of each moment applied: (user_id, device_id or None for every device).
OnLogout = Callable[[str, str | None], None]
# The device of a moment that names one device-less token (outside DEVICE_ID's set).
TOKEN_MOMENT_DEVICE = "<one device-less token>"  # noqa: S105 (a placeholder, no secret)


class LogoutMoments:
    """Per user and per (user, device): the latest logout moment, in memory.

    ``clock``: what dates a logout happening now (:meth:`now`)."""

    def __init__(self, clock: Clock, on_logout: OnLogout | None = None) -> None:
        self._clock = clock
        self._users: dict[str, int] = {}
        self._devices: dict[tuple[str, str], int] = {}
        # user → digests of its device-less tokens logged out → when.
        self._tokens: dict[str, dict[str, int]] = {}
        self._on_logout = on_logout
        self.seen = 0  # the highest store sequence number applied

    def now(self) -> int:
        """The moment of a logout happening now (whole seconds, as ``iat``)."""
        return int(self._clock.time())

    def __len__(self) -> int:
        return len(self._users) + len(self._devices) + sum(map(len, self._tokens.values()))

    def refuses(self, identity: Identity, token: str) -> bool:
        """Whether ``token`` (of ``identity``) was logged out: itself (device-less), or
        issued at or before a logout covering its user or device (:meth:`covers`)."""
        if not self._users and not self._devices and not self._tokens:
            return False
        if identity.device_id is None:
            ended = self._tokens.get(identity.user_id)
            if ended is not None and digest(token) in ended:
                return True
        return self.covers(identity)

    def covers(self, identity: Identity) -> bool:
        """Whether a logout of its user or device covers the identity's ``iat``."""
        user_moment = self._users.get(identity.user_id)
        device_moment = (
            self._devices.get((identity.user_id, identity.device_id))
            if identity.device_id is not None
            else None
        )
        if user_moment is None and device_moment is None:
            return False
        iat = identity.issued_at
        if iat is None:
            return True
        return (user_moment is not None and iat <= user_moment) or (
            device_moment is not None and iat <= device_moment
        )

    def apply(self, moments: Iterable[LogoutMoment]) -> None:
        """Take moments in (from this instance or another, any order, repeated)."""
        for moment in moments:
            self.seen = max(self.seen, moment.seq)
            user_id, device_id, not_before = moment.user_id, moment.device_id, moment.not_before
            if moment.token_hash is not None:
                # One token: refused by refuses(); nothing to drop from the cache.
                self._tokens.setdefault(user_id, {})[moment.token_hash] = not_before
                continue
            if device_id is None:
                if self._users.get(user_id, not_before - 1) >= not_before:
                    continue
                self._users[user_id] = not_before
            else:
                if self._devices.get((user_id, device_id), not_before - 1) >= not_before:
                    continue
                self._devices[(user_id, device_id)] = not_before
            if self._on_logout is not None:
                self._on_logout(user_id, device_id)

    def prune(self, before: int) -> None:
        """Forget moments older than ``before`` (no token issued then lives any more)."""
        self._users = {u: m for u, m in self._users.items() if m >= before}
        self._devices = {d: m for d, m in self._devices.items() if m >= before}
        tokens = {
            u: {t: m for t, m in ended.items() if m >= before} for u, ended in self._tokens.items()
        }
        self._tokens = {u: ended for u, ended in tokens.items() if ended}
