"""``make bench``: each service's throughput, CPU, latency and memory against the raw limits, measured in
one run on the same broker and the same SMTP sink.

Raw limits, measured in the same run: plain aiokafka consuming the records from the same broker, and plain
aiosmtplib sending pre-built messages of the size each service's e-mails have, over the same number of
persistent connections into the same sink, from a process of its own as the services send; that client's own
CPU per message and the sink's: a yardstick of the machine's speed in the same minutes (the client is
aiosmtplib's ``sendmail``, which parses the addresses, rewrites each message's line endings and dot-stuffs it
again: about twice what the services' SMTP path spends per message, which writes it as built). Then, per
service and store (SQLite file, a fresh database on a throwaway PostgreSQL), ``python -m services.<name>`` as
a process:

- throughput: a backlog of N events published before the service starts, drained to the last e-mail
  (events/s, e-mails/s, ratio to the raw SMTP limit, the service's CPU ms per e-mail and its multiple of the
  raw client's, and the shares of the drain its event loop's thread ran on a core and waited for one);
- latency: events offered at a fixed rate (300/s by default); publish to SMTP accept, p50 and p99;
- backlog: a larger backlog (``--backlog``), peak RSS while draining it, and whether throughput stays
  flat as the tables grow: the e-mails/s of its ninth tenth (80-90% of the way, before the last batches
  trail off) against its second (10-20%), within 10%, timed in one drain so that a machine slowing down
  between runs does not pass for a service that does; its rate against the N-event drain's is reported too.
  A machine slowing down within the drain is measured beside it: a probe process times the same fixed work
  twice a second, and the machine's speed in the ninth tenth against the second is reported with the
  flatness for that speed (the ratio divided by it).

The workloads: invitations (one e-mail per ``professional.added``), expiry (reminders to three
contacts per ``plan.nearing_expiry``), permissions (three administrators per ``permission.requested``),
support (overdue posts: a team e-mail and an author notice each). No thresholds: the numbers are for
reading and comparing; results go to a JSON file and a table.

    python -m ops.bench [--events 10000] [--backlog 100000] [--rate 300] [--latency-events 1500]
                        [--services invitations,expiry,permissions,support] [--stores sqlite,postgresql]
                        [--broker tansu|apache-kafka] [--connections 16] [--json var/bench/latest.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import aiosmtplib
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiosmtpd.controller import Controller

from ops.broker import ApacheKafkaBroker, Broker, TansuBroker, die_with_parent, free_port
from ops.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent
EVENT_ID = re.compile(rb"\r\nX-CustomerSource-Event-Id: ([^\r\n]+)", re.IGNORECASE)
OUTPUTS = ["customersource.notifications", "customersource.invitations", "customersource.support-escalations"]
TICKS = os.sysconf("SC_CLK_TCK")


class Sink:
    """The SMTP sink: counts what it accepts, its sizes, and when each event's e-mails arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.accepted_at: dict[bytes, list[float]] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        content = envelope.original_content or envelope.content
        self.bytes += len(content)
        match = EVENT_ID.search(content)
        if match:
            self.accepted_at.setdefault(match.group(1).strip(), []).append(time.perf_counter())
        return "250 OK"

    def reset(self) -> None:
        self.count, self.bytes = 0, 0
        self.accepted_at = {}


def cloudevent(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/bench", "type": event_type,
            "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json", "data": data}


def person(tag: str) -> dict[str, str]:
    return {"email": f"{tag}-{uuid.uuid4().hex[:10]}@bench.example", "name": "Jane Doe", "locale": "en-US"}


def invitation() -> tuple[str, dict[str, Any]]:
    pid = f"PRO-{uuid.uuid4().hex[:12]}"
    return pid, cloudevent("customersource.professional.added.v1", {
        "account_id": f"ACC-{uuid.uuid4().hex[:8]}", "account_name": "Contoso Ltd", "professional_id": pid,
        **person("pro"), "local_site": "US", "country": "US", "roles": ["professional"],
        "is_first_professional": False, "added_by": {"name": "Alex Admin", "kind": "administrator"}})


def plan_reminder() -> tuple[str, dict[str, Any]]:
    plan = f"PLAN-{uuid.uuid4().hex[:12]}"
    return plan, cloudevent("customersource.plan.nearing_expiry.v1", {
        "plan_id": plan, "account_id": f"ACC-{uuid.uuid4().hex[:8]}", "account_name": "Contoso Ltd",
        "plan_type": "software_assurance", "product": "dynamics_nav",
        "expires_on": (date.today() + timedelta(days=10)).isoformat(),
        "contacts": [person("contact") for _ in range(3)], "local_site": "US", "country": "US"})


def permission_request() -> tuple[str, dict[str, Any]]:
    request = f"REQ-{uuid.uuid4().hex[:12]}"
    return request, cloudevent("customersource.permission.requested.v1", {
        "request_id": request, "account_id": f"ACC-{uuid.uuid4().hex[:8]}", "account_name": "Fabrikam SA",
        "partner": {**person("partner"), "name": "Encore Business Solutions", "partner_id": "PARTNER-1"},
        "customer_admins": [person("admin") for _ in range(3)], "requested_at": datetime.now(UTC).isoformat()})


def overdue_post() -> tuple[str, dict[str, Any]]:
    post = f"POST-{uuid.uuid4().hex[:12]}"
    return post, cloudevent("customersource.newsgroup.post_created.v1", {
        "post_id": post, "newsgroup": "microsoft.public.dynamics.nav", "title": "Posting a sales invoice fails",
        "url": "https://community.bench.example/nav/1", "account_id": f"ACC-{uuid.uuid4().hex[:8]}",
        "account_name": "Contoso Pharmaceuticals", "author": person("author"), "product": "dynamics_nav",
        "plans": ["software_assurance"], "local_site": "US", "country": "US",
        "posted_at": (datetime.now(UTC) - timedelta(days=10)).isoformat()})


@dataclass(frozen=True)
class Workload:
    topic: str
    event: Callable[[], tuple[str, dict[str, Any]]]
    mails_per_event: int


WORKLOADS = {
    "invitations": Workload("customersource.professionals", invitation, 1),
    "expiry": Workload("customersource.service-plans", plan_reminder, 3),
    "permissions": Workload("customersource.partner-permissions", permission_request, 3),
    "support": Workload("customersource.newsgroups", overdue_post, 2),
}


@dataclass
class Result:
    service: str
    store: str
    events: int
    emails: int
    events_per_s: float
    emails_per_s: float
    raw_smtp_per_s: float
    ratio_to_raw_smtp: float
    cpu_ms_per_email: float
    mean_email_bytes: int
    loop_running: float | None = None  # the share of the drain the service's event loop's thread ran on a core
    loop_waiting: float | None = None  # ... and was runnable, waiting for a core the other processes held
    raw_sink_cpu_ms: float | None = None  # the sink's own CPU per message in the raw SMTP run
    raw_client_cpu_ms: float | None = None  # the raw SMTP client's own CPU per message, in the same run
    latency_rate: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_service_cores: float | None = None  # while the load was offered
    latency_bench_cores: float | None = None  # the bench's process: publisher and sink
    latency_idle_cores: float | None = None
    unrecorded_mean_ms: float | None = None  # SMTP acceptance to committed outcome record (the crash window)
    unrecorded_p99_ms: float | None = None
    backlog: int = 0
    backlog_emails_per_s: float | None = None
    backlog_cpu_ms_per_email: float | None = None  # tells a heavier service from a slower machine
    backlog_peak_rss_mib: float | None = None
    backlog_early: Tenth | None = None  # the e-mails 10-20% of the way into the backlog
    backlog_late: Tenth | None = None  # 80-90% of the way
    backlog_vs_drain: float | None = None  # the backlog's e-mails/s over the N-event drain's
    flat_within_10pct: bool | None = None  # the late tenth at 90% of the early one's rate, or more
    backlog_machine_speed: float | None = None  # the machine's speed in the late tenth against the early one


@dataclass
class Report:
    when: str
    machine: str
    broker: str
    connections: int
    raw_kafka_events_per_s: float
    results: list[Result] = field(default_factory=list)


def encoded(key: str, event: dict[str, Any]) -> tuple[bytes, bytes]:
    return key.encode(), json.dumps(event).encode()


async def publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key, headers=[("content-type", b"application/cloudevents+json")])
        await producer.flush()
    finally:
        await producer.stop()


async def fresh_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics()) & set(topics)
        if existing:
            await admin.delete_topics(list(existing))
            while set(await admin.list_topics()) & existing:
                await asyncio.sleep(0.05)
        await admin.create_topics([NewTopic(t, 3, 1) for t in topics])
    finally:
        await admin.close()


async def raw_consume(bootstrap: str, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4()}",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        seen, started = 0, None
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if started is None and batch:
                started = time.perf_counter()
            seen += sum(len(v) for v in batch.values())
        assert started is not None
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def raw_smtp_client(port: int, messages: int, connections: int, size: int) -> tuple[float, float]:
    """Pre-built messages of ``size`` bytes over ``connections`` persistent connections: messages/s, and this
    client's own CPU ms per message."""
    head = b"From: a@bench.example\r\nTo: b@bench.example\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = head + line * max((size - len(head)) // len(line), 1)
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))
    remaining = messages
    started, cpu = time.perf_counter(), time.process_time()

    async def worker(client: aiosmtplib.SMTP) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.sendmail("a@bench.example", ["b@bench.example"], body)

    await asyncio.gather(*(worker(c) for c in clients))
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    await asyncio.gather(*(c.quit() for c in clients))
    return messages / elapsed, used * 1000 / messages


def own_cpu() -> float:
    """CPU seconds used by this process (the sink's thread, the publisher, the bench's own bookkeeping)."""
    return proc_stat(os.getpid())[0]


def machine_idle() -> float:
    """Seconds the machine's cores were idle (summed over them), from /proc/stat."""
    idle, iowait = (int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[4:6])
    return (idle + iowait) / TICKS


@dataclass(frozen=True)
class RawSmtp:
    per_s: float
    client_cpu_ms: float  # the client's CPU per message: a yardstick of the machine's speed in these minutes
    sink_cpu_ms: float  # the sink's CPU per message while it took them as fast as the client sent


async def raw_smtp(port: int, sink: Sink, messages: int, connections: int, size: int) -> RawSmtp:
    """The raw SMTP limit, measured from a process of its own (as the services send from theirs), so that
    the client does not share the sink's interpreter; what the client spends per message, as it reports it, and
    what the sink spends."""
    before, cpu = sink.count, own_cpu()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.bench", "--raw-smtp-client", str(port), str(messages), str(connections), str(size),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent)
    output, _ = await process.communicate()
    assert process.returncode == 0 and sink.count - before == messages, (process.returncode, sink.count - before)
    per_s, client_cpu_ms = (float(part) for part in output.decode().split())
    return RawSmtp(per_s, client_cpu_ms, (own_cpu() - cpu) * 1000 / messages)


def loop_thread(pid: int) -> tuple[float, float] | None:
    """Seconds a process's main thread (a service's event loop) has run on a core, and has waited for one while
    runnable, by the kernel's scheduler statistics (``/proc/<pid>/task/<pid>/schedstat``); None where it keeps
    none. Running, waiting and the rest (sleeping: nothing to do, or the GIL) tell a service bound by its own
    CPU from one starved of cores or waiting on something."""
    try:
        running, waiting = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return int(running) / 1e9, int(waiting) / 1e9


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds used, peak RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    peak = next(int(line.split()[1]) / 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    return cpu, peak


class ServiceRun:
    """One service process against the broker, the sink and a store; as a context manager, started and stopped,
    its folder removed unless the run failed (its ``service.log`` is named in the error)."""

    def __init__(self, name: str, bootstrap: str, smtp_port: int, connections: int, database_url: str) -> None:
        self.name = name
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.http_port = free_port()
        self.env = {
            **os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_FETCH_MAX_WAIT_MS": "50",
            "KAFKA_SESSION_TIMEOUT_MS": "6000", "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "KAFKA_GROUP_ID": f"bench-{name}-{uuid.uuid4().hex[:8]}",
            "SMTP_PORT": str(smtp_port), "SMTP_FROM": "CustomerSource <noreply@bench.example>",
            "SMTP_MAX_CONNECTIONS": str(connections), "DATABASE_URL": database_url,
            "HTTP_PORT": str(self.http_port), "PORTAL_BASE_URL": "https://portal.bench.example",
            "BUSINESS_CENTER_URL": "https://bc.bench.example", "HELP_EMAIL": "help@bench.example",
            "INVITATION_SECRET": "bench-" + "s" * 40, "SUPPORT_ESCALATION_EMAIL": "support@bench.example",
            "ENVIRONMENT": "test",
        }
        self.process: asyncio.subprocess.Process | None = None
        self._log: BinaryIO | None = None

    async def __aenter__(self) -> ServiceRun:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, failed: type[BaseException] | None, *exc: object) -> None:
        await self.stop()
        if failed is None:
            shutil.rmtree(self.work, ignore_errors=True)

    async def start(self) -> None:
        self._log = open(self.work / "service.log", "wb")  # closed in stop()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{self.name}", cwd=ROOT, env=self.env,
            stdout=self._log, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent)  # a killed bench leaves no service behind
        deadline = time.monotonic() + 60
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.name} exited: see {self.work / 'service.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in 60 s: see {self.work / 'service.log'}")
            await asyncio.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if self._log is not None:
            self._log.close()


async def wait_for_mail(sink: Sink, expected: int, run: ServiceRun, *, stalled: float = 120.0,
                        marks: Sequence[int] = (), noted: dict[int, tuple[float, float]] | None = None) -> float:
    """Wait until the sink has ``expected`` e-mails; the time it happened. Fails if nothing comes for a while.
    ``noted``: filled with the time and the service's CPU seconds when each of the e-mail counts ``marks`` was
    first reached."""
    last, last_change = sink.count, time.monotonic()
    pending = sorted(marks)
    while sink.count < expected:
        await asyncio.sleep(0.01)
        while pending and sink.count >= pending[0] and noted is not None:
            noted[pending.pop(0)] = (time.perf_counter(), proc_stat(run.pid)[0])
        if sink.count != last:
            last, last_change = sink.count, time.monotonic()
        elif time.monotonic() - last_change > stalled:
            raise RuntimeError(f"{run.name}: {sink.count} of {expected} e-mails, nothing for {stalled:.0f} s; "
                               f"see {run.work / 'service.log'}")
    finished = time.perf_counter()
    if noted is not None:
        noted.update({mark: (finished, proc_stat(run.pid)[0]) for mark in pending})  # reached in the last wait
    return finished


@dataclass
class Tenth:
    """A tenth of a drain's e-mails: how fast they went, the service's CPU for them, and the speed probe's CPU
    for its fixed work meanwhile (:class:`SpeedProbe`; None if it measured nothing then)."""

    emails_per_s: float
    cpu_ms_per_email: float
    probe_ms: float | None = None


PROBE_INTERVAL_S = 0.5


def probe_work() -> None:
    """A fixed piece of interpreter work (about 20 ms on this machine at full speed)."""
    counts: dict[str, int] = {}
    for i in range(50_000):
        key = f"k{i % 1000}"
        counts[key] = counts.get(key, 0) + i


def speed_probe() -> None:
    """``python -m ops.bench --speed-probe``: the fixed work twice a second, each time a line ``<perf_counter>
    <CPU ms it took>`` (``perf_counter`` is the system's monotonic clock, the bench's too)."""
    while True:
        started = time.process_time()
        probe_work()
        print(f"{time.perf_counter():.3f} {(time.process_time() - started) * 1000:.3f}", flush=True)
        time.sleep(PROBE_INTERVAL_S)


def mean_cost(samples: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """The mean CPU ms of the probe's samples taken from ``start`` to ``end``."""
    inside = [cost for at, cost in samples if start <= at <= end]
    return statistics.fmean(inside) if inside else None


class SpeedProbe:
    """How fast this (virtual) machine runs, moment by moment: a process of its own doing the same work twice a
    second (about 4% of a core), the CPU it takes each time noted. This machine's speed drifts by 10-20% within
    minutes, with nothing stolen by its host in /proc/stat: the probe tells a drain that slows down from a
    machine that does."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SpeedProbe:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ops.bench", "--speed-probe", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent)
        self._reader = asyncio.create_task(self._read(self._process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            fields = line.split()
            if len(fields) == 2:  # not a line cut short by the end
                self.samples.append((float(fields[0]), float(fields[1])))

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()
        if self._reader is not None:
            await self._reader


@dataclass
class Drained:
    events_per_s: float
    emails_per_s: float
    cpu_ms_per_email: float
    peak_rss_mib: float
    unrecorded_mean_ms: float
    unrecorded_p99_ms: float
    early: Tenth
    late: Tenth
    loop_running: float | None = None  # shares of the drain's time: see :func:`loop_thread`
    loop_waiting: float | None = None

    @property
    def machine_speed(self) -> float | None:
        """How fast the machine ran in the late tenth against the early one (below 1: slower), by the probe."""
        if self.early.probe_ms is None or self.late.probe_ms is None:
            return None
        return self.early.probe_ms / self.late.probe_ms


def unrecorded_window(metrics: str) -> tuple[float, float]:
    """From a service's /metrics: the mean and the p99 (upper bucket bound) of the time from SMTP acceptance
    to the committed outcome record, in ms."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("customersource_accepted_unrecorded_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
        elif line.startswith("customersource_accepted_unrecorded_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("customersource_accepted_unrecorded_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    if not count:
        return 0.0, 0.0
    p99 = next(bound for bound, cumulative in sorted(buckets) if cumulative >= 0.99 * count)
    return total / count * 1000, p99 * 1000


async def drain(name: str, store_url: str, events: int, ctx: Context) -> Drained:
    """A backlog of ``events`` drained."""
    workload = WORKLOADS[name]
    await fresh_topics(ctx.bootstrap, [workload.topic, workload.topic + ".dlq", *OUTPUTS])
    records = [encoded(*workload.event()) for _ in range(events)]
    await publish(ctx.bootstrap, workload.topic, records)
    ctx.sink.reset()
    expected = events * workload.mails_per_event
    tenths = [expected * k // 10 for k in (1, 2, 8, 9)]
    marks: dict[int, tuple[float, float]] = {}
    async with SpeedProbe() as probe, ServiceRun(name, ctx.bootstrap, ctx.smtp_port, ctx.connections,
                                                 store_url) as run:
        started = time.perf_counter()  # timed from readiness: the process's start-up is not the drain
        cpu_before, _ = proc_stat(run.pid)
        loop_before = loop_thread(run.pid)
        finished = await wait_for_mail(ctx.sink, expected, run, marks=tenths, noted=marks)
        cpu_after, peak = proc_stat(run.pid)
        loop_after = loop_thread(run.pid)
        marks[expected] = (finished, cpu_after)
        await asyncio.sleep(0.5)  # the last outcome records
        with urllib.request.urlopen(f"http://127.0.0.1:{run.http_port}/metrics", timeout=5) as response:
            window = unrecorded_window(response.read().decode())
    elapsed = finished - started

    def tenth(start: int, end: int) -> Tenth:
        (t0, cpu0), (t1, cpu1) = marks[start], marks[end]
        return Tenth((end - start) / max(t1 - t0, 1e-9), (cpu1 - cpu0) * 1000 / (end - start),
                     mean_cost(probe.samples, t0, t1))

    loop: tuple[float | None, float | None] = (None, None)
    if loop_before is not None and loop_after is not None:
        loop = ((loop_after[0] - loop_before[0]) / elapsed, (loop_after[1] - loop_before[1]) / elapsed)
    return Drained(events / elapsed, expected / elapsed, (cpu_after - cpu_before) * 1000 / expected, peak, *window,
                   early=tenth(tenths[0], tenths[1]), late=tenth(tenths[2], tenths[3]), loop_running=loop[0],
                   loop_waiting=loop[1])


@dataclass(frozen=True)
class Offered:
    """A fixed offered load: latency from publish to the SMTP server's accept, and who used the cores meanwhile."""

    p50_ms: float
    p99_ms: float
    service_cores: float
    bench_cores: float  # this process: the publisher and the sink
    idle_cores: float  # the machine's idle time (the broker and the rest are what is left)


async def latency(name: str, store_url: str, events: int, rate: int, ctx: Context) -> Offered:
    """Events offered at ``rate`` per second, from the first publish to the last e-mail accepted."""
    workload = WORKLOADS[name]
    await fresh_topics(ctx.bootstrap, [workload.topic, workload.topic + ".dlq", *OUTPUTS])
    ctx.sink.reset()
    published: dict[bytes, float] = {}
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, acks="all", linger_ms=0)
    async with ServiceRun(name, ctx.bootstrap, ctx.smtp_port, ctx.connections, store_url) as run:
        await producer.start()
        try:
            service_cpu, bench_cpu, idle = proc_stat(run.pid)[0], own_cpu(), machine_idle()
            start = time.perf_counter()
            for i in range(events):
                key, event = workload.event()
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                published[event["id"].encode()] = time.perf_counter()
                await producer.send(workload.topic, json.dumps(event).encode(), key=key.encode(),
                                    headers=[("content-type", b"application/cloudevents+json")])
            await producer.flush()
            finished = await wait_for_mail(ctx.sink, events * workload.mails_per_event, run)
            elapsed = finished - start
            service_cores = (proc_stat(run.pid)[0] - service_cpu) / elapsed
            bench_cores, idle_cores = (own_cpu() - bench_cpu) / elapsed, (machine_idle() - idle) / elapsed
        finally:
            await producer.stop()
    samples = sorted((at - published[event_id]) * 1000 for event_id, times in ctx.sink.accepted_at.items()
                     if event_id in published for at in times)
    quantiles = statistics.quantiles(samples, n=100)
    return Offered(quantiles[49], quantiles[98], service_cores, bench_cores, idle_cores)


@dataclass
class Context:
    bootstrap: str
    sink: Sink
    smtp_port: int
    connections: int
    postgres: LocalPostgres | None
    databases: list[Path] = field(default_factory=list)  # the SQLite files' folders, removed at the end


async def store_url(store: str, ctx: Context) -> str:
    if store == "sqlite":
        ctx.databases.append(Path(tempfile.mkdtemp(prefix="bench-db-")))
        return f"sqlite+aiosqlite:///{ctx.databases[-1]}/state.db"
    import asyncpg

    assert ctx.postgres is not None
    name = f"bench_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(ctx.postgres.url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return ctx.postgres.url.rsplit("/", 1)[0] + f"/{name}"


STORES = ("sqlite", "postgresql")


def names(kind: str, known: tuple[str, ...], value: str) -> str:
    """A comma-separated list of known names (argparse shows the error, with the names it knows)."""
    unknown = [name for name in (n.strip() for n in value.split(",")) if name and name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(unknown)} (known: {', '.join(known)})")
    return value


async def main(args: argparse.Namespace) -> Report:
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    broker: Broker = (ApacheKafkaBroker(Path(tempfile.mkdtemp(prefix="bench-kafka-"))) if args.broker == "apache-kafka"
                      else TansuBroker())
    broker.start()
    postgres = LocalPostgres().start() if "postgresql" in stores else None
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    ctx = Context(broker.bootstrap, sink, smtp_port, args.connections, postgres)
    try:
        topic = "bench.raw"
        await fresh_topics(ctx.bootstrap, [topic])
        raw_records = [encoded(*invitation()) for _ in range(max(args.events * 10, 20_000))]
        await publish(ctx.bootstrap, topic, raw_records)
        report = Report(when=datetime.now(UTC).isoformat(timespec="seconds"),
                        machine=f"{os.cpu_count()} cores, {os.uname().machine}", broker=args.broker,
                        connections=args.connections,
                        raw_kafka_events_per_s=await raw_consume(ctx.bootstrap, topic, len(raw_records)))
        print(f"raw aiokafka consume: {report.raw_kafka_events_per_s:,.0f} events/s", flush=True)
        for name in services:
            for store in stores:
                workload = WORKLOADS[name]
                url = await store_url(store, ctx)
                drained = await drain(name, url, args.events, ctx)
                size = ctx.sink.bytes // max(ctx.sink.count, 1)
                ctx.sink.reset()
                smtp = await raw_smtp(smtp_port, sink, max(args.events * workload.mails_per_event, 3000),
                                      args.connections, size)
                result = Result(name, store, args.events, args.events * workload.mails_per_event,
                                drained.events_per_s, drained.emails_per_s, smtp.per_s,
                                drained.emails_per_s / smtp.per_s, drained.cpu_ms_per_email, size,
                                loop_running=drained.loop_running, loop_waiting=drained.loop_waiting,
                                raw_sink_cpu_ms=smtp.sink_cpu_ms, raw_client_cpu_ms=smtp.client_cpu_ms,
                                unrecorded_mean_ms=drained.unrecorded_mean_ms,
                                unrecorded_p99_ms=drained.unrecorded_p99_ms)
                if args.latency_events:
                    offered = await latency(name, await store_url(store, ctx), args.latency_events, args.rate, ctx)
                    result.latency_rate, result.latency_p50_ms, result.latency_p99_ms = (
                        args.rate, offered.p50_ms, offered.p99_ms)
                    result.latency_service_cores, result.latency_bench_cores, result.latency_idle_cores = (
                        offered.service_cores, offered.bench_cores, offered.idle_cores)
                if args.backlog:
                    result.backlog = args.backlog
                    backlog = await drain(name, await store_url(store, ctx), args.backlog, ctx)
                    result.backlog_emails_per_s, result.backlog_peak_rss_mib = backlog.emails_per_s, backlog.peak_rss_mib
                    result.backlog_cpu_ms_per_email = backlog.cpu_ms_per_email
                    result.backlog_early, result.backlog_late = backlog.early, backlog.late
                    result.backlog_vs_drain = backlog.emails_per_s / drained.emails_per_s
                    result.flat_within_10pct = backlog.late.emails_per_s >= 0.9 * backlog.early.emails_per_s
                    result.backlog_machine_speed = backlog.machine_speed
                report.results.append(result)
                print(row(result), flush=True)
    finally:
        controller.stop()
        broker.stop()
        if postgres is not None:
            postgres.stop()
        for folder in ctx.databases:  # a 100,000-event backlog leaves 100 to 200 MB
            shutil.rmtree(folder, ignore_errors=True)
    return report


HEADER = ("| service | store | events/s | e-mails/s | raw SMTP/s (CPU ms per message: the sink's, the client's) | "
          "ratio | CPU ms/e-mail (against the raw client's; the event loop's thread: running, waiting for a core) | "
          "accepted, unrecorded: mean / p99 ms | p50 / p99 ms at offered rate (cores used meanwhile) | backlog: "
          "e-mails/s, CPU ms/e-mail, peak RSS | flat: the backlog's 80-90% against its 10-20%, e-mails/s and CPU "
          "ms/e-mail; the machine's speed likewise |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def row(r: Result) -> str:
    lat = (f"{r.latency_p50_ms:,.0f} / {r.latency_p99_ms:,.0f} at {r.latency_rate}/s"
           if r.latency_p50_ms is not None and r.latency_p99_ms is not None else "-")
    if r.latency_service_cores is not None:
        lat += (f" (cores: service {r.latency_service_cores:.2f}, bench {r.latency_bench_cores or 0:.2f}, "
                f"idle {r.latency_idle_cores or 0:.2f})")
    raw = f"{r.raw_smtp_per_s:,.0f}"
    cpu = f"{r.cpu_ms_per_email:.2f}"
    client = ""
    if r.raw_client_cpu_ms:
        client = f", client {r.raw_client_cpu_ms:.2f}"
        cpu += f" (x{r.cpu_ms_per_email / r.raw_client_cpu_ms:.1f} the client's)"
    if r.loop_running is not None and r.loop_waiting is not None:
        cpu += f"; loop running {r.loop_running:.2f}, waiting {r.loop_waiting:.2f}"
    if r.raw_sink_cpu_ms is not None:
        raw += f" (sink {r.raw_sink_cpu_ms:.2f}{client} ms/message)"
    backlog = (f"{r.backlog:,}: {r.backlog_emails_per_s:,.0f}/s, {r.backlog_cpu_ms_per_email or 0:.2f} ms, "
               f"{r.backlog_peak_rss_mib:.0f} MiB (x{r.backlog_vs_drain or 0:.2f} of the {r.events:,}-event drain)"
               if r.backlog_emails_per_s is not None and r.backlog_peak_rss_mib is not None else "-")
    flat = "-"
    if r.backlog_early is not None and r.backlog_late is not None:
        first, last = r.backlog_early, r.backlog_late
        ratio = last.emails_per_s / first.emails_per_s
        flat = (f"{'yes' if r.flat_within_10pct else 'no'}: {ratio:.2f} "
                f"({last.emails_per_s:,.0f} / {first.emails_per_s:,.0f}; {last.cpu_ms_per_email:.2f} / "
                f"{first.cpu_ms_per_email:.2f} ms)")
        if r.backlog_machine_speed is not None:
            flat += f"; machine {r.backlog_machine_speed:.2f}, for its speed {ratio / r.backlog_machine_speed:.2f}"
    window = (f"{r.unrecorded_mean_ms:.1f} / {r.unrecorded_p99_ms:.0f}"
              if r.unrecorded_mean_ms is not None and r.unrecorded_p99_ms is not None else "-")
    return (f"| {r.service} | {r.store} | {r.events_per_s:,.0f} | {r.emails_per_s:,.0f} | {raw} | "
            f"{r.ratio_to_raw_smtp:.2f} | {cpu} | {window} | {lat} | {backlog} | {flat} |")


def cli() -> None:
    if sys.argv[1:2] == ["--speed-probe"]:
        speed_probe()
        return
    if sys.argv[1:2] == ["--raw-smtp-client"]:
        port, messages, connections, size = (int(a) for a in sys.argv[2:6])
        # On the services' event loop (asyncio's): the raw limit is the same client on the same loop.
        print(*asyncio.run(raw_smtp_client(port, messages, connections, size)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000,
                        help="backlog drained for throughput (default 10000)")
    parser.add_argument("--backlog", type=int, default=100_000,
                        help="larger backlog for peak RSS and flatness (0: skip; default 100000)")
    parser.add_argument("--rate", type=int, default=300, help="offered events/s for the latency run (default 300)")
    parser.add_argument("--latency-events", type=int, default=1500,
                        help="events offered in the latency run (0: skip; default 1500)")
    parser.add_argument("--services", type=functools.partial(names, "service", tuple(WORKLOADS)),
                        default=",".join(WORKLOADS))
    parser.add_argument("--stores", type=functools.partial(names, "store", STORES), default=",".join(STORES))
    parser.add_argument("--broker", choices=["tansu", "apache-kafka"], default="tansu")
    parser.add_argument("--connections", type=int, default=16, help="SMTP_MAX_CONNECTIONS and raw SMTP connections")
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "latest.json")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"\n{report.when}, {report.machine}, broker {report.broker}, {report.connections} SMTP connections; "
          f"raw aiokafka consume {report.raw_kafka_events_per_s:,.0f} events/s\n")
    print(HEADER)
    for result in report.results:
        print(row(result))
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    cli()
