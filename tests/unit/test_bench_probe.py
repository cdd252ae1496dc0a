"""The bench's speed probe: what it measures, and how a drain's tenths read it."""

from __future__ import annotations

import asyncio
import os
import time

from ops.bench import HEADER, Drained, Result, SpeedProbe, Tenth, loop_thread, machine_idle, mean_cost, own_cpu, row


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


def test_the_machine_counts_idle_time_over_its_cores_and_the_process_its_own_cpu() -> None:
    idle, cpu, started = machine_idle(), own_cpu(), time.perf_counter()
    deadline = started + 0.2
    while time.perf_counter() < deadline:  # busy on one core
        pass
    elapsed = time.perf_counter() - started
    assert own_cpu() - cpu >= 0.1, "the busy loop's CPU is this process's"
    assert 0 <= machine_idle() - idle <= (elapsed + 0.05) * ((os.cpu_count() or 1) - 1) + 0.05, \
        "no more idle than the other cores had"


def test_a_row_says_what_the_sink_the_raw_client_and_the_cores_did() -> None:
    result = Result("support", "sqlite", 2000, 4000, 300.0, 600.0, 1300.0, 0.46, 1.5, 4900, raw_sink_cpu_ms=0.7,
                    raw_client_cpu_ms=0.6, latency_rate=300, latency_p50_ms=120.0, latency_p99_ms=240.0,
                    latency_service_cores=0.9, latency_bench_cores=0.5, latency_idle_cores=0.4)
    line = row(result)
    assert "1,300 (sink 0.70, client 0.60 ms/message)" in line
    assert "| 1.50 (x2.5 the client's) |" in line
    assert "120 / 240 at 300/s (cores: service 0.90, bench 0.50, idle 0.40)" in line
    assert line.count("|") == HEADER.split("\n")[1].count("|")


def test_a_row_without_the_raw_client_s_cpu_leaves_it_out() -> None:
    line = row(Result("invitations", "sqlite", 2000, 2000, 500.0, 500.0, 1000.0, 0.5, 1.8, 8000, raw_sink_cpu_ms=0.9))
    assert "1,000 (sink 0.90 ms/message) | 0.50 | 1.80 |" in line


def test_the_loop_threads_time_on_a_core_grows_as_it_works() -> None:
    before = loop_thread(os.getpid())
    assert before is not None, "the kernel keeps scheduler statistics here (/proc/<pid>/task/<tid>/schedstat)"
    deadline = time.perf_counter() + 0.2
    while time.perf_counter() < deadline:  # busy: this test runs on the process's main thread
        pass
    after = loop_thread(os.getpid())
    assert after is not None
    assert after[0] - before[0] >= 0.1, "the busy loop ran on a core"
    assert after[1] >= before[1] >= 0
    assert loop_thread(2**22 + 1) is None  # no such process


def test_a_row_gives_the_loop_threads_shares_of_the_drain() -> None:
    result = Result("invitations", "sqlite", 2000, 2000, 500.0, 500.0, 840.0, 0.6, 1.8, 8000, raw_client_cpu_ms=0.8,
                    loop_running=0.81, loop_waiting=0.12)
    assert "| 1.80 (x2.2 the client's); loop running 0.81, waiting 0.12 |" in row(result)
    assert "; loop" not in row(Result("invitations", "sqlite", 2000, 2000, 500.0, 500.0, 840.0, 0.6, 1.8, 8000))
