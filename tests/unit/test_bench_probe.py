"""The bench's speed probe: what it measures, and how a drain's tenths read it."""

from __future__ import annotations

import asyncio
import time

from ops.bench import Drained, SpeedProbe, Tenth, mean_cost


def test_a_window_averages_the_samples_taken_in_it() -> None:
    samples = [(10.0, 20.0), (10.5, 22.0), (11.0, 24.0), (11.5, 40.0)]
    assert mean_cost(samples, 10.0, 11.0) == 22.0
    assert mean_cost(samples, 11.2, 11.6) == 40.0
    assert mean_cost(samples, 12.0, 13.0) is None


def test_the_machine_speed_is_the_early_probe_cost_over_the_late_one() -> None:
    def drained(early_ms: float | None, late_ms: float | None) -> Drained:
        return Drained(1.0, 1.0, 1.0, 1.0, 0.0, 0.0, early=Tenth(600.0, 1.2, early_ms), late=Tenth(540.0, 1.3, late_ms))

    assert drained(20.0, 25.0).machine_speed == 0.8  # the same work took longer: the machine ran slower
    assert drained(None, 25.0).machine_speed is None


async def test_the_probe_process_reports_its_work_on_the_bench_clock() -> None:
    probe = SpeedProbe()
    started = time.perf_counter()
    await probe.start()
    try:
        async with asyncio.timeout(30):
            while len(probe.samples) < 2:
                await asyncio.sleep(0.05)
    finally:
        await probe.stop()
    (first, cost), (second, _) = probe.samples[:2]
    assert started < first < second <= time.perf_counter()
    assert 0 < cost < 5000
