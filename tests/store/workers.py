"""Code run in child processes (multiprocessing "spawn") by the store tests."""

from __future__ import annotations

import asyncio
import json
import os
from multiprocessing.synchronize import Barrier
from pathlib import Path

from bridge.config import StoreConfig
from bridge.store import open_store


def _record_login(logins: Path) -> None:
    with logins.open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")


async def _login_dance(
    config: StoreConfig, user_id: str, device_id: str, blocks: int, logins: Path, start: Barrier
) -> list[str]:
    store = await open_store(config)
    try:
        start.wait(timeout=60)

        async def one() -> str:
            async with store.login_lock(user_id, device_id):
                token = await store.device_token(user_id, device_id)
                if token is None:
                    _record_login(logins)
                    await asyncio.sleep(0.1)  # the homeserver's /login
                    token = f"token-of-{os.getpid()}"
                    await store.save_device_token(user_id, device_id, token)
                return token

        return await asyncio.gather(*(one() for _ in range(blocks)))
    finally:
        await store.close()


def login_dance(
    config: StoreConfig,
    user_id: str,
    device_id: str,
    blocks: int,
    logins: str,
    results: str,
    start: Barrier,
) -> None:
    """In a process of its own: ``blocks`` concurrent check-then-login-then-save blocks.

    Each login appends this process's ID to the file ``logins``; the tokens the
    blocks ended with go to the JSON file ``results``.
    """
    tokens = asyncio.run(_login_dance(config, user_id, device_id, blocks, Path(logins), start))
    Path(results).write_text(json.dumps(tokens), encoding="utf-8")
