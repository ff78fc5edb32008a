"""The store, on SQLite and on a real PostgreSQL (the ``store`` fixture runs each test on both)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.store import Store
from bridge.store.crypto import TokenCipher
from bridge.store.schema import SCHEMA_VERSION
from tests.store import workers
from tests.store.harness import KEY_A, KEY_B, StoreUnderTest

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
DEVICE = "ALICEDEVICE1"
TOKEN = "syt_YWxpY2U_clearTextHomeserverToken_0a1b2c"

# The schema as version 1 shipped it, written out by hand.
V1_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
    "INSERT INTO schema_version (version, applied_at) VALUES (1, 1700000000)",
    "CREATE TABLE device_tokens ("
    " user_id TEXT NOT NULL, device_id TEXT NOT NULL, token_ciphertext TEXT NOT NULL,"
    " created_at BIGINT NOT NULL, PRIMARY KEY (user_id, device_id))",
)


async def create_v1_store(store: StoreUnderTest, key: str = KEY_A) -> None:
    """A version-1 store holding tokens of Alice and Bob, sealed with ``key``."""
    for sql in V1_SCHEMA:
        await store.execute(sql)
    cipher = TokenCipher([key])
    for user_id, token in ((ALICE, TOKEN), (BOB, "token-bob")):
        await store.execute(
            "INSERT INTO device_tokens (user_id, device_id, token_ciphertext, created_at)"
            " VALUES (?, ?, ?, 1700000000)",
            user_id,
            DEVICE,
            cipher.seal(user_id, DEVICE, token),
        )


async def test_round_trip(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.save_device_token(ALICE, DEVICE, TOKEN)
    assert await s.device_token(ALICE, DEVICE) == TOKEN
    await s.close()
    reopened = await store.open()
    assert await reopened.device_token(ALICE, DEVICE) == TOKEN


async def test_missing_device_is_none(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.save_device_token(ALICE, DEVICE, TOKEN)
    assert await s.device_token(ALICE, "OTHERDEVICE") is None
    assert await s.device_token(BOB, DEVICE) is None


async def test_delete_device(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.save_device_token(ALICE, DEVICE, TOKEN)
    await s.save_device_token(ALICE, "SECONDDEVICE", "token-2")
    await s.delete_device(ALICE, DEVICE)
    assert await s.device_token(ALICE, DEVICE) is None
    assert await s.device_token(ALICE, "SECONDDEVICE") == "token-2"
    await s.delete_device(ALICE, DEVICE)  # unknown by now: nothing happens


async def test_devices_of(store: StoreUnderTest) -> None:
    s = await store.open()
    for device in ("ZDEVICE", "ADEVICE", "MDEVICE"):
        await s.save_device_token(ALICE, device, f"token-{device}")
    await s.save_device_token(BOB, "BOBDEVICE", "token-bob")
    assert await s.devices_of(ALICE) == ["ADEVICE", "MDEVICE", "ZDEVICE"]
    assert await s.devices_of(BOB) == ["BOBDEVICE"]
    assert await s.devices_of("@carol:example.org") == []


async def test_save_replaces_the_previous_token(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.save_device_token(ALICE, DEVICE, "first")
    await s.save_device_token(ALICE, DEVICE, "second")
    assert await s.device_token(ALICE, DEVICE) == "second"
    assert await store.fetch("SELECT COUNT(*) FROM device_tokens") == [(1,)]


async def test_no_token_or_key_in_clear_at_rest(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.save_device_token(ALICE, DEVICE, TOKEN)
    await s.save_device_token(BOB, DEVICE, TOKEN + "-bob")
    raw = await store.at_rest()
    assert ALICE.encode() in raw  # the dump does hold the live rows (WAL included)
    assert b"clearTextHomeserverToken" not in raw
    assert KEY_A.encode() not in raw


async def test_wrong_key_is_a_config_error_at_open(store: StoreUnderTest) -> None:
    s = await store.open(KEY_A)
    await s.save_device_token(ALICE, DEVICE, TOKEN)
    await s.close()
    with pytest.raises(ConfigError) as info:
        await store.open(KEY_B)
    assert info.value.key == "store.encryption_keys"
    assert info.value.problem == "cannot decrypt the store: wrong key?"
    assert KEY_A not in str(info.value)
    assert KEY_B not in str(info.value)


async def test_wrong_key_on_an_empty_store(store: StoreUnderTest) -> None:
    await (await store.open(KEY_A)).close()
    with pytest.raises(ConfigError, match="wrong key"):
        await store.open(KEY_B)


async def test_key_rotation(store: StoreUnderTest) -> None:
    s = await store.open(KEY_A)
    assert await s.rotate_key() == 0  # nothing to do yet
    await s.save_device_token(ALICE, DEVICE, TOKEN)
    await s.save_device_token(ALICE, "SECONDDEVICE", "token-2")
    await s.save_device_token(BOB, DEVICE, "token-bob")
    await s.close()

    both = await store.open(KEY_B, KEY_A)
    assert await both.device_token(ALICE, DEVICE) == TOKEN  # old key still reads
    assert await both.rotate_key() == 3
    await both.close()

    new_only = await store.open(KEY_B)
    assert await new_only.device_token(ALICE, DEVICE) == TOKEN
    assert await new_only.device_token(ALICE, "SECONDDEVICE") == "token-2"
    assert await new_only.device_token(BOB, DEVICE) == "token-bob"
    with pytest.raises(ConfigError, match="wrong key"):
        await store.open(KEY_A)


async def test_a_token_no_key_decrypts_is_an_error_not_a_miss(store: StoreUnderTest) -> None:
    s = await store.open(KEY_A)
    foreign = TokenCipher([KEY_B]).seal(ALICE, DEVICE, TOKEN)
    await store.execute(
        "INSERT INTO device_tokens (user_id, device_id, token_ciphertext, created_at)"
        " VALUES (?, ?, ?, 0)",
        ALICE,
        DEVICE,
        foreign,
    )
    with pytest.raises(ConfigError, match="wrong key") as info:
        await s.device_token(ALICE, DEVICE)
    assert TOKEN not in str(info.value)


async def test_a_token_moved_to_another_device_is_not_served(
    store: StoreUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    s = await store.open()
    await s.save_device_token(ALICE, DEVICE, TOKEN)
    await s.save_device_token(BOB, "BOBDEVICE", "token-bob")
    # Someone with write access to the database, but no key, swaps the rows.
    await store.execute(
        "UPDATE device_tokens SET token_ciphertext = (SELECT token_ciphertext"
        " FROM device_tokens WHERE user_id = ?) WHERE user_id = ?",
        ALICE,
        BOB,
    )
    with caplog.at_level(logging.WARNING, logger="bridge.store"):
        assert await s.device_token(BOB, "BOBDEVICE") is None
    assert "sealed for another device" in caplog.text
    assert TOKEN not in caplog.text


async def test_v1_schema_is_upgraded_in_place(store: StoreUnderTest) -> None:
    await create_v1_store(store)
    s = await store.open()
    assert await s.device_token(ALICE, DEVICE) == TOKEN
    assert await s.devices_of(BOB) == [DEVICE]
    versions = await store.fetch("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert await store.fetch(
        "SELECT created_at, updated_at FROM device_tokens ORDER BY user_id"
    ) == [(1700000000, 1700000000), (1700000000, 1700000000)]
    assert await store.fetch("SELECT name FROM store_meta") == [("encryption_canary",)]
    # The upgraded store is a normal one: writes work, and the canary now guards it.
    await s.save_device_token(ALICE, DEVICE, "renewed")
    await s.close()
    assert await (await store.open()).device_token(ALICE, DEVICE) == "renewed"
    with pytest.raises(ConfigError, match="wrong key"):
        await store.open(KEY_B)


async def test_v1_schema_with_another_key_is_refused_and_left_as_it_was(
    store: StoreUnderTest,
) -> None:
    await create_v1_store(store, key=KEY_B)
    with pytest.raises(ConfigError, match="wrong key"):
        await store.open(KEY_A)
    # The migration ran in the failed transaction: rolled back with it.
    assert await store.fetch("SELECT version FROM schema_version") == [(1,)]
    s = await store.open(KEY_B)
    assert await s.device_token(ALICE, DEVICE) == TOKEN


async def test_a_newer_schema_is_refused(store: StoreUnderTest) -> None:
    await (await store.open()).close()
    await store.execute("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")
    with pytest.raises(ConfigError, match="schema version 99") as info:
        await store.open()
    assert info.value.key == "store"


async def test_instances_starting_together_migrate_once(store: StoreUnderTest) -> None:
    first, second = await asyncio.gather(store.open(), store.open())
    await first.save_device_token(ALICE, DEVICE, TOKEN)
    assert await second.device_token(ALICE, DEVICE) == TOKEN
    versions = await store.fetch("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert await store.fetch("SELECT COUNT(*) FROM store_meta") == [(1,)]


async def _login_dance(s: Store, logins: list[str], *, locked: bool = True) -> str:
    """The caller's pattern: check, log in if needed, save; counting the logins."""

    async def dance() -> str:
        token = await s.device_token(ALICE, DEVICE)
        if token is None:
            logins.append("login")
            await asyncio.sleep(0.05)  # the homeserver's /login
            token = f"token-{len(logins)}"
            await s.save_device_token(ALICE, DEVICE, token)
        return token

    if not locked:
        return await dance()
    async with s.login_lock(ALICE, DEVICE):
        return await dance()


async def test_login_lock_lets_one_instance_log_in(store: StoreUnderTest) -> None:
    instances = [await store.open(), await store.open()]
    logins: list[str] = []
    tokens = await asyncio.gather(*(_login_dance(instances[i % 2], logins) for i in range(20)))
    assert logins == ["login"]
    assert set(tokens) == {"token-1"}
    assert await instances[0].device_token(ALICE, DEVICE) == "token-1"


async def test_without_the_lock_the_dance_races(store: StoreUnderTest) -> None:
    """The control for the test above: the race it guards against is real."""
    instances = [await store.open(), await store.open()]
    logins: list[str] = []
    await asyncio.gather(*(_login_dance(instances[i % 2], logins, locked=False) for i in range(20)))
    assert len(logins) > 1


async def test_login_lock_across_processes(store: StoreUnderTest, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    logins = tmp_path / "logins"
    logins.touch()
    processes = [
        context.Process(
            target=workers.login_dance,
            args=(
                store.config(),
                ALICE,
                DEVICE,
                10,
                str(logins),
                str(tmp_path / f"results-{n}.json"),
                start,
            ),
        )
        for n in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        await asyncio.to_thread(process.join, 60)
    assert [p.exitcode for p in processes] == [0, 0]
    login_pids = logins.read_text().split()
    assert len(login_pids) == 1
    expected = f"token-of-{login_pids[0]}"
    for n in range(2):
        assert json.loads((tmp_path / f"results-{n}.json").read_text()) == [expected] * 10
    assert await (await store.open()).device_token(ALICE, DEVICE) == expected


async def test_calls_inside_the_lock_run_in_its_transaction(store: StoreUnderTest) -> None:
    holder, other = await store.open(), await store.open()
    async with holder.login_lock(ALICE, DEVICE):
        await holder.save_device_token(ALICE, DEVICE, TOKEN)
        assert await holder.device_token(ALICE, DEVICE) == TOKEN
        assert await holder.devices_of(ALICE) == [DEVICE]
        assert await other.device_token(ALICE, DEVICE) is None  # not committed yet
    assert await other.device_token(ALICE, DEVICE) == TOKEN


async def test_tasks_started_inside_the_lock_share_its_transaction(
    store: StoreUnderTest,
) -> None:
    holder, other = await store.open(), await store.open()
    devices = [f"DEVICE{n:02}" for n in range(10)]
    async with holder.login_lock(ALICE, DEVICE):
        await asyncio.gather(*(holder.save_device_token(ALICE, d, TOKEN) for d in devices))
        assert await other.devices_of(ALICE) == []
    assert await other.devices_of(ALICE) == devices


async def test_a_failing_block_rolls_back(store: StoreUnderTest) -> None:
    s = await store.open()

    class LoginFailedError(Exception):
        pass

    async def failing_block() -> None:
        async with s.login_lock(ALICE, DEVICE):
            await s.save_device_token(ALICE, DEVICE, TOKEN)
            raise LoginFailedError

    with pytest.raises(LoginFailedError):
        await failing_block()
    assert await s.device_token(ALICE, DEVICE) is None
    async with s.login_lock(ALICE, DEVICE):  # and the lock was released
        await s.save_device_token(ALICE, DEVICE, TOKEN)
    assert await s.device_token(ALICE, DEVICE) == TOKEN


async def test_login_lock_is_not_reentrant(store: StoreUnderTest) -> None:
    s = await store.open()
    async with s.login_lock(ALICE, DEVICE):
        with pytest.raises(RuntimeError, match="not re-entrant"):
            async with s.login_lock(ALICE, DEVICE):
                pass


async def test_waiting_too_long_for_the_lock_is_a_timeout(
    store: StoreUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"bridge.store.{store.kind}.LOCK_TIMEOUT", 0.3)
    holder, waiter = await store.open(), await store.open()
    async with holder.login_lock(ALICE, DEVICE):
        with pytest.raises(TimeoutError):
            async with waiter.login_lock(ALICE, DEVICE):
                pass
    async with waiter.login_lock(ALICE, DEVICE):  # free again
        pass


async def test_a_waiter_that_gives_up_leaves_nothing_held(store: StoreUnderTest) -> None:
    holder, waiter = await store.open(), await store.open()

    async def wait_for_the_lock() -> None:
        async with waiter.login_lock(ALICE, DEVICE):
            await waiter.save_device_token(ALICE, DEVICE, "from-the-waiter")

    async with holder.login_lock(ALICE, DEVICE):
        task = asyncio.create_task(wait_for_the_lock())
        await asyncio.sleep(0.2)  # waiting on the database's lock by now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await holder.save_device_token(ALICE, DEVICE, TOKEN)
    # The abandoned wait neither took the lock later nor wrote anything.
    await asyncio.sleep(0.2)
    assert await holder.device_token(ALICE, DEVICE) == TOKEN
    async with asyncio.timeout(5):
        async with waiter.login_lock(ALICE, DEVICE):
            await waiter.save_device_token(ALICE, DEVICE, "second")
        async with holder.login_lock(ALICE, DEVICE):
            assert await holder.device_token(ALICE, DEVICE) == "second"


async def test_rotate_key_inside_the_lock(store: StoreUnderTest) -> None:
    s = await store.open(KEY_A)
    await s.save_device_token(BOB, DEVICE, "token-bob")
    await s.close()
    s = await store.open(KEY_B, KEY_A)
    async with s.login_lock(ALICE, DEVICE):
        await s.save_device_token(ALICE, DEVICE, TOKEN)
        assert await s.rotate_key() == 2
    assert await (await store.open(KEY_B)).device_token(BOB, DEVICE) == "token-bob"


async def test_ping_and_close(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.ping()
    await s.close()
    await s.close()  # again: nothing happens
