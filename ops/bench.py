"""``make bench``: throughput and memory of a service against the raw limits, measured in one run.

Raw limits: plain aiokafka consuming the same records from the same local broker, and plain
aiosmtplib sending pre-built messages over SMTP_MAX_CONNECTIONS persistent connections into the
same SMTP sink. Then ``python -m services.invitations`` turns N ``professional.added`` events into
N e-mails (render, build, send, record, audit). Reported as events/s and as ratios of the limits,
plus the service's peak RSS. No thresholds: the numbers are for reading and comparing.

    python -m ops.bench [--events 3000] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiosmtpd.controller import Controller

from ops.broker import TansuBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "customersource.professionals"


class Sink:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


def event(i: int) -> tuple[bytes, bytes]:
    pid = f"PRO-{i}-{uuid.uuid4().hex[:6]}"
    data = {"account_id": f"ACC-{i}", "account_name": "Contoso Ltd", "professional_id": pid,
            "email": f"pro{i}@bench.example", "name": "Jane Doe", "locale": "en", "local_site": "US", "country": "US",
            "roles": ["professional"], "is_first_professional": False,
            "added_by": {"name": "Admin", "kind": "administrator"}}
    value = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/bench", "type":
             "customersource.professional.added.v1", "time": datetime.now(UTC).isoformat(), "data": data}
    return pid.encode(), json.dumps(value).encode()


async def publish(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(TOPIC, value, key=key, headers=[("content-type", b"application/cloudevents+json")])
        await producer.flush()
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4()}",
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


async def raw_smtp(port: int, sink: Sink, messages: int, connections: int) -> float:
    body = b"From: a@bench.example\r\nTo: b@bench.example\r\nSubject: bench\r\n\r\n" + (b"x" * 75 + b"\r\n") * 60
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(messages):
        queue.put_nowait(i)
    before = sink.count
    started = time.perf_counter()

    async def worker(client: aiosmtplib.SMTP) -> None:
        while not queue.empty():
            queue.get_nowait()
            await client.sendmail("a@bench.example", ["b@bench.example"], body)

    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.quit() for c in clients))
    assert sink.count - before == messages
    return messages / elapsed


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def service_run(
    bootstrap: str, smtp_port: int, sink: Sink, events: int, connections: int, database_url: str | None
) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    http_port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_FETCH_MAX_WAIT_MS": "50",
           "KAFKA_SESSION_TIMEOUT_MS": "6000", "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
           "SMTP_PORT": str(smtp_port), "SMTP_FROM": "CustomerSource <noreply@bench.example>",
           "SMTP_MAX_CONNECTIONS": str(connections),
           "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{work}/inv.db",
           "HTTP_PORT": str(http_port), "PORTAL_BASE_URL": "https://portal.bench.example",
           "BUSINESS_CENTER_URL": "https://bc.bench.example", "HELP_EMAIL": "help@bench.example",
           "INVITATION_SECRET": "bench-" + "s" * 40, "ENVIRONMENT": "test"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.invitations", cwd=ROOT, env=env,
                                                   stdout=open(work / "service.log", "wb"),
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                await asyncio.sleep(0.1)
        before = sink.count
        records = [event(i) for i in range(events)]
        started = time.perf_counter()
        await publish(bootstrap, records)
        while sink.count - before < events:
            await asyncio.sleep(0.01)
        rate = events / (time.perf_counter() - started)
        return rate, peak_rss_mib(process.pid)
    finally:
        process.terminate()
        await process.wait()


async def main(events: int, connections: int, database_url: str | None) -> None:
    broker = TansuBroker().start()
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(t, 3, 1) for t in (TOPIC, TOPIC + ".dlq", "customersource.invitations",
                                                               "customersource.notifications")])
        await admin.close()
        kafka_records = [event(i) for i in range(events * 10)]
        await publish(broker.bootstrap, kafka_records)
        kafka_rate = await raw_consume(broker.bootstrap, len(kafka_records))
        smtp_rate = await raw_smtp(smtp_port, sink, events, connections)
        # The raw consume topic is reused: the service's group starts from the beginning, so give it a fresh broker.
        broker.stop()
        broker = TansuBroker().start()
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(t, 3, 1) for t in (TOPIC, TOPIC + ".dlq", "customersource.invitations",
                                                               "customersource.notifications")])
        await admin.close()
        service_rate, rss = await service_run(broker.bootstrap, smtp_port, sink, events, connections, database_url)
    finally:
        controller.stop()
        broker.stop()
    print(f"raw aiokafka consume      {kafka_rate:10.0f} events/s")
    print(f"raw SMTP send ({connections} conns)   {smtp_rate:10.0f} messages/s")
    store = "PostgreSQL" if database_url else "SQLite"
    print(f"invitations service       {service_rate:10.0f} events/s (= e-mails/s) on {store}, peak RSS {rss:.0f} MiB")
    print(f"  ratio to raw SMTP       {service_rate / smtp_rate:10.2f}")
    print(f"  ratio to raw Kafka      {service_rate / kafka_rate:10.4f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: a fresh SQLite file)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.connections, args.database_url))


if __name__ == "__main__":
    cli()
