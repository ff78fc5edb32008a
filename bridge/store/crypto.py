"""Encryption at rest of the stored homeserver tokens.

Fernet (AES-128-CBC + HMAC-SHA256) through :class:`~cryptography.fernet.MultiFernet`:
the first configured key encrypts, every key decrypts, and ``rotate`` re-encrypts
with the first. The plaintext binds a token to its (user, device), so a row
copied onto another device's row by someone who can write the database (but
holds no key) is refused instead of handing one user another's token.

A *canary*, a known plaintext encrypted when the store is created, tells at
start-up whether the configured keys can read the store at all.
Nothing here ever puts a token or a key into an exception message or a log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bridge.errors import ConfigError

_CANARY = b"matrix-oidc-bridge store canary"
# Version of the plaintext layout, first in every sealed token.
_LAYOUT = "1"


def wrong_key() -> ConfigError:
    """The start-up error for a store the configured keys cannot decrypt."""
    return ConfigError("store.encryption_keys", "cannot decrypt the store: wrong key?")


class Misbound(Exception):
    """A stored token decrypts, but was sealed for another (user, device)."""


class TokenCipher:
    """Seals and unseals homeserver tokens with the configured Fernet keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("store.encryption_keys", "is required to open the store")
        try:
            fernets = [Fernet(key) for key in keys]
        except ValueError:
            # Not chained: the cause would describe the key itself.
            raise ConfigError(
                "store.encryption_keys", "must be Fernet keys (32 bytes, urlsafe base64)"
            ) from None
        self._fernet = MultiFernet(fernets)

    @staticmethod
    def _bound(user_id: str, device_id: str) -> bytes:
        return f"{_LAYOUT}\0{user_id}\0{device_id}\0".encode()

    def seal(self, user_id: str, device_id: str, token: str) -> str:
        """The ciphertext (ASCII) of ``token``, bound to ``user_id`` and ``device_id``."""
        plaintext = self._bound(user_id, device_id) + token.encode()
        return self._fernet.encrypt(plaintext).decode("ascii")

    def unseal(self, user_id: str, device_id: str, ciphertext: str) -> str:
        """The token sealed in ``ciphertext``.

        Raises :class:`~bridge.errors.ConfigError` when no key decrypts it, and
        :class:`Misbound` when it was sealed for another (user, device).
        """
        plaintext = self._decrypt(ciphertext)
        bound = self._bound(user_id, device_id)
        if not plaintext.startswith(bound):
            raise Misbound
        return plaintext[len(bound) :].decode()

    def rotate(self, ciphertext: str) -> str:
        """``ciphertext`` re-encrypted with the first key (same plaintext)."""
        try:
            return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise wrong_key() from None

    def seal_canary(self) -> str:
        """A fresh canary, encrypted with the first key."""
        return self._fernet.encrypt(_CANARY).decode("ascii")

    def check_canary(self, ciphertext: str) -> None:
        """Raise the wrong-key :class:`~bridge.errors.ConfigError` unless the canary reads."""
        if self._decrypt(ciphertext) != _CANARY:
            raise wrong_key()

    def verify_store(self, canary: str | None, sample: tuple[str, str, str] | None) -> str | None:
        """Check at open that the keys read this store; return a canary to write if it has none.

        ``sample`` is any one stored (user_id, device_id, ciphertext): a store
        from before the canary existed is checked with it instead.
        """
        if canary is not None:
            self.check_canary(canary)
            return None
        if sample is not None:
            with contextlib.suppress(Misbound):  # it decrypted: the keys are right
                self.unseal(*sample)
        return self.seal_canary()

    def _decrypt(self, ciphertext: str) -> bytes:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii"))
        except (InvalidToken, UnicodeError):
            raise wrong_key() from None
