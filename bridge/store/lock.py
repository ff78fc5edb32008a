"""Login locks: how long to wait for one, and the calls made while one is held.

``login_lock`` holds a database transaction (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL an advisory transaction lock) on a connection of its own. The
``device_token`` and ``save_device_token`` calls made inside the block must run
in that transaction, so the block's task carries the held connection in a
context variable, and the store routes its own calls through it. Tasks started
inside the block inherit it; their calls are serialised on the one connection.
Once the block ends, the connection is marked released and copies of the
context left in such tasks fall back to ordinary calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

C = TypeVar("C")

# Seconds to wait for a login lock (on SQLite, for any write) held elsewhere;
# longer than one homeserver login should ever take. Beyond it: TimeoutError.
LOCK_TIMEOUT = 30.0


@dataclass(eq=False)
class Held(Generic[C]):
    """A connection held by a ``login_lock`` block, and the lock serialising its use."""

    owner: LockRouting[C]
    connection: C
    guard: asyncio.Lock = field(default_factory=asyncio.Lock)
    active: bool = True


# Every store's held connection in the current context (a task may hold locks
# of two stores at once).
_HELD: ContextVar[tuple[Held[Any], ...]] = ContextVar("bridge.store.held", default=())


class LockRouting(Generic[C]):
    """One store's view of the context variable."""

    def current(self) -> Held[C] | None:
        """The connection this context holds in this store, if any."""
        for held in _HELD.get():
            if held.owner is self and held.active:
                return cast(Held[C], held)
        return None

    def refuse_nesting(self) -> None:
        """``login_lock`` is not re-entrant: waiting on our own lock would deadlock."""
        if self.current() is not None:
            raise RuntimeError("login_lock is not re-entrant (already held in this task)")

    @asynccontextmanager
    async def hold(self, connection: C) -> AsyncIterator[None]:
        """Route this store's calls in this context through ``connection``."""
        held = Held(self, connection)
        token = _HELD.set((*_HELD.get(), held))
        try:
            yield
        finally:
            held.active = False
            _HELD.reset(token)
