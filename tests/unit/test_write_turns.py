import asyncio

import pytest

from shared.store import Turns


async def test_urgent_writers_go_before_queued_ordinary_ones() -> None:
    turns, order = Turns(), []
    release = asyncio.Event()

    async def writer(name: str, urgent: bool) -> None:
        async with turns.turn(urgent=urgent):
            order.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(writer("first", False))
    await asyncio.sleep(0)
    others = [asyncio.create_task(writer(n, u)) for n, u in (("a", False), ("b", False), ("mail", True))]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *others)
    assert order == ["first", "mail", "a", "b"]


async def test_a_cancelled_waiter_does_not_keep_the_turn() -> None:
    turns = Turns()
    release = asyncio.Event()

    async def holder() -> None:
        async with turns.turn():
            await release.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)

    async def waiter() -> None:
        async with turns.turn():
            pass

    cancelled = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await held
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    async with asyncio.timeout(1):
        async with turns.turn():
            pass
