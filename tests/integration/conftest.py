from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.process import ServiceProcess, ServiceStarter
from tests.support.smtp import SmtpServer

Starter = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(kafka: str, smtp: SmtpServer, tmp_path: Path, test_token: str) -> Iterator[Starter]:
    """Start ``python -m services.<name>`` against the test broker and SMTP server, in a consumer group
    of this test's (``customersource.<name>.<test token>``); all are stopped (SIGTERM, then SIGKILL)
    at teardown."""
    starter = ServiceStarter(bootstrap=kafka, smtp_port=smtp.port, folder=tmp_path, token=test_token)
    yield starter
    starter.stop_all()
