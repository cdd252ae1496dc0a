from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.process import ServiceProcess, base_env, new_port
from tests.support.smtp import SmtpServer

Starter = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(kafka: str, smtp: SmtpServer, tmp_path: Path, test_token: str) -> Iterator[Starter]:
    """Start ``python -m services.<name>`` against the test broker and SMTP server, in a consumer group
    of this test's (``customersource.<name>.<test token>``); all are stopped (SIGTERM, then SIGKILL)
    at teardown."""
    started: list[ServiceProcess] = []

    def start(name: str = "invitations", *, database_url: str | None = None, **extra: str) -> ServiceProcess:
        env = base_env(
            bootstrap=kafka,
            smtp_port=smtp.port,
            database_url=database_url or f"sqlite+aiosqlite:///{tmp_path}/{name}.db",
            http_port=new_port(),
        )
        env["KAFKA_GROUP_ID"] = f"customersource.{name}.{test_token}"
        env.update(extra)
        process = ServiceProcess(name, env, tmp_path / f"{name}-{len(started)}.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
