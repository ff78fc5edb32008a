"""SingleFlight: one shared call per key for concurrent callers."""

from __future__ import annotations

import asyncio

import pytest

from bridge.runtime.singleflight import SingleFlight


class Call:
    """A call that counts itself and waits for ``gate``."""

    def __init__(self, result: str = "value", error: Exception | None = None) -> None:
        self.result = result
        self.error = error
        self.calls = 0
        self.gate = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def started(call: Call) -> None:
    for _ in range(100):
        if call.calls:
            return
        await asyncio.sleep(0)
    raise AssertionError("the call never started")


async def test_concurrent_runs_share_one_call() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    tasks = [asyncio.create_task(flight.run("k", call)) for _ in range(10)]
    await started(call)
    assert len(flight) == 1
    call.gate.set()
    assert await asyncio.gather(*tasks) == ["value"] * 10
    assert call.calls == 1
    assert len(flight) == 0


async def test_different_keys_do_not_share() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    call.gate.set()
    await asyncio.gather(flight.run("a", call), flight.run("b", call))
    assert call.calls == 2


async def test_exception_reaches_every_caller() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call(error=ValueError("boom"))
    tasks = [asyncio.create_task(flight.run("k", call)) for _ in range(3)]
    await started(call)
    call.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results] == [ValueError] * 3
    assert call.calls == 1
    assert len(flight) == 0


async def test_later_run_calls_again() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    call.gate.set()
    assert await flight.run("k", call) == "value"
    assert await flight.run("k", call) == "value"
    assert call.calls == 2


async def test_later_run_after_failure_calls_again() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call(error=ValueError("boom"))
    call.gate.set()
    with pytest.raises(ValueError, match="boom"):
        await flight.run("k", call)
    call.error = None
    assert await flight.run("k", call) == "value"
    assert call.calls == 2


async def test_cancelled_caller_does_not_cancel_the_call() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    quitter = asyncio.create_task(flight.run("k", call))
    stayer = asyncio.create_task(flight.run("k", call))
    await started(call)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    call.gate.set()
    assert await stayer == "value"
    assert call.calls == 1
