"""SIGHUP: read the config file again and apply what can change while serving.

What changes at run time: ``logging`` (level, format, user IDs in the access
log), ``well_known`` (the extras and federation delegation), ``token_cache``
(sizes and lifetimes; live sessions are kept), and the allow-lists
``homeserver.admin_api_allowlist``, ``issuer.audiences`` and
``issuer.client_ids`` (:data:`RELOADABLE`, each with how it is applied).
Anything else that differs is logged, key by key
(never its value), as ignored until the next restart. A file with errors
changes nothing (each error is logged). Either way the issuer's discovery
document is fetched again.

Requests in flight are not disturbed: the new settings apply to the
requests that come after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.auth.jwt_access import JwtVerifier
from bridge.auth.verifier import IntrospectionVerifier, JwtThenIntrospection
from bridge.config import BridgeConfig, LoggingConfig, load_config
from bridge.errors import ConfigError, IssuerUnavailable
from bridge.runtime.systemd import Notifier
from bridge.state import AUTHENTICATOR, CONFIG, ISSUER_METADATA, LIVE

log = logging.getLogger("bridge.runtime.reload")


def _flat(document: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(document, dict) and not prefix.endswith("client_extra."):
        for key, value in document.items():
            yield from _flat(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), document


def changed_keys(old: BridgeConfig, new: BridgeConfig) -> list[str]:
    """The dotted keys whose values differ (secrets compared, never shown)."""
    before, after = dict(_flat(old.model_dump())), dict(_flat(new.model_dump()))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _reloadable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RELOADABLE)


def running_config(old: BridgeConfig, new: BridgeConfig) -> BridgeConfig:
    """``old`` with what a reload applies taken from ``new``."""
    for key in RELOADABLE:
        section, _, setting = key.partition(".")
        value = getattr(new, section)
        if setting:
            value = getattr(old, section).model_copy(update={setting: getattr(value, setting)})
        old = old.model_copy(update={section: value})
    return old


class Reloader:
    """Reloads ``app``'s settings from ``path``; ``configure_logging`` applies
    the logging section."""

    def __init__(
        self,
        app: web.Application,
        path: Path,
        notifier: Notifier,
        configure_logging: Callable[[LoggingConfig], None],
    ) -> None:
        self._app = app
        self._path = path
        self._notifier = notifier
        self._configure_logging = configure_logging
        self._running = app[CONFIG]
        self._task: asyncio.Task[None] | None = None

    def schedule(self) -> None:
        """The SIGHUP handler: one reload at a time (a SIGHUP during one is merged)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> None:
        self._notifier.reloading()
        try:
            log.info("reloading the configuration from %s", self._path)
            try:
                new = load_config(self._path)
            except ConfigError as e:
                for line in e.lines():
                    log.error("reload: config error: %s (nothing changed)", line)
            else:
                self.apply(new)
            metadata = self._app.get(ISSUER_METADATA)
            if metadata is not None:
                try:
                    await metadata.fetch()
                except IssuerUnavailable as e:
                    log.warning("reload: the issuer's metadata was not refreshed: %s", e.message)
        finally:
            self._notifier.ready()

    def apply(self, new: BridgeConfig) -> None:
        """Apply what can change now; log what cannot."""
        changed = changed_keys(self._running, new)
        for key in changed:
            if not _reloadable(key):
                log.warning("reload: %s changed; ignored until the next restart", key)
        applied = [key for key in changed if _reloadable(key)]
        # Said before the logging changes: at a higher level it would not be seen.
        log.info("reload: applying %s", ", ".join(applied) if applied else "nothing new")
        for how in dict.fromkeys(RELOADABLE.values()):  # each once, in the table's order
            how(self, new)
        self._running = running_config(self._running, new)

    # -- how each reloadable key is applied ------------------------------------------------

    def _logging(self, new: BridgeConfig) -> None:
        self._configure_logging(new.logging)

    def _well_known(self, new: BridgeConfig) -> None:
        self._app[LIVE].well_known = new.well_known

    def _token_cache(self, new: BridgeConfig) -> None:
        if (authenticator := self._app.get(AUTHENTICATOR)) is not None:
            authenticator.reconfigure(new.token_cache)

    def _admin_api_allowlist(self, new: BridgeConfig) -> None:
        self._app[LIVE].admin_api_allowlist = new.homeserver.admin_api_allowlist

    def _allow_lists(self, new: BridgeConfig) -> None:
        """``issuer.audiences`` and ``issuer.client_ids``, in every verifier's rules."""
        authenticator = self._app.get(AUTHENTICATOR)
        if authenticator is None:
            return
        top = authenticator.verifier
        verifiers = [top.jwt, top.introspection] if isinstance(top, JwtThenIntrospection) else [top]
        for verifier in verifiers:
            if isinstance(verifier, IntrospectionVerifier | JwtVerifier):
                verifier.rules = dataclasses.replace(
                    verifier.rules,
                    audiences=frozenset(new.issuer.audiences),
                    client_ids=frozenset(new.issuer.client_ids),
                )
        old = self._running.issuer
        if (old.audiences, old.client_ids) != (new.issuer.audiences, new.issuer.client_ids):
            # Every session was judged by the old allow-lists: judged again.
            authenticator.cache.clear()


# What a reload applies: each dotted key (a section, or one setting), and how; every
# other key is logged as ignored until the next restart.
RELOADABLE: dict[str, Callable[[Reloader, BridgeConfig], None]] = {
    "logging": Reloader._logging,
    "well_known": Reloader._well_known,
    "token_cache": Reloader._token_cache,
    "homeserver.admin_api_allowlist": Reloader._admin_api_allowlist,
    "issuer.audiences": Reloader._allow_lists,
    "issuer.client_ids": Reloader._allow_lists,
}
