"""Waiting on a condition (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(
    condition: Callable[[], bool], timeout: float = 30.0, *, state: Callable[[], str] = lambda: "", poll: float = 0.02
) -> None:
    """Return as soon as ``condition()`` holds; fail after ``timeout`` seconds, saying ``state()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; {state()}")
        await asyncio.sleep(poll)
