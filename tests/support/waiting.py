"""Waiting on a condition (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], bool], timeout: float = 30.0, *, state: Callable[[], str] = lambda: "", poll: float = 0.02
) -> None:
    """Return as soon as ``condition()`` holds; fail after ``timeout`` seconds, saying ``state()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; {state()}")
        await asyncio.sleep(poll)


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]], timeout: float = 30.0, *, state: Callable[[], str] = lambda: "",
    poll: float = 0.05,
) -> None:
    """``wait_until`` for a condition that must be awaited (a broker or database query)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; {state()}")
        await asyncio.sleep(poll)
