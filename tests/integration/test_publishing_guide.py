"""The README's publishing snippets, run as they are written against the broker and a running invitations
service: the CloudEvents SDK with confluent-kafka (binary and structured mode) and Java's kafka-clients
(with the jars of the Apache Kafka the tests run). Each must lead to the invitation e-mail."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ops.broker import fetch_apache_kafka
from tests.integration.conftest import Starter
from tests.support.samples import address, uid
from tests.support.smtp import SmtpServer

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet(name: str) -> str:
    """The code block that follows ``<!-- snippet: NAME -->`` in the README."""
    found = re.search(rf"<!-- snippet: {name} -->\n```\w+\n(.*?)\n```", README.read_text(), re.DOTALL)
    assert found, f"no '{name}' snippet in the README"
    return found.group(1)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "structured"])
async def test_the_python_snippet_publishes_an_event_the_service_processes(
    kafka: str, smtp: SmtpServer, start_service: Starter, binary: bool
) -> None:
    service = start_service("invitations")
    await service.wait_ready()
    email = address()
    exec(snippet("python"), {"BOOTSTRAP": kafka, "PROFESSIONAL_ID": uid("PRO"), "EMAIL": email, "BINARY": binary})
    await smtp.wait_for(lambda: len(smtp.to(email)) == 1)
    assert service.metric("customersource_dead_letters_total") == 0


async def test_the_java_snippet_publishes_an_event_the_service_processes(
    kafka: str, smtp: SmtpServer, start_service: Starter, tmp_path: Path
) -> None:
    java = shutil.which("java")
    assert java is not None, "a JDK is needed (Apache Kafka's tests need one too)"
    service = start_service("invitations")
    await service.wait_ready()
    (tmp_path / "Publish.java").write_text(snippet("java"))
    email = address()
    ran = subprocess.run([java, "-cp", f"{fetch_apache_kafka()}/*", "Publish.java", kafka, uid("PRO"), email],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr[-3000:]
    await smtp.wait_for(lambda: len(smtp.to(email)) == 1)
    assert service.metric("customersource_dead_letters_total") == 0
