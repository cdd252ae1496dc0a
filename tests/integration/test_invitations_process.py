"""``python -m services.invitations`` as a process against the real broker (Tansu, or a cluster),
a real SMTP server (aiosmtpd), SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from services.invitations import verify_invitation
from services.invitations.contracts import ADDED, EMAIL_CHANGED, ISSUED, REMOVED, RESEND_REQUESTED, REVOKED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, Reader, cloudevent
from tests.support.process import ServiceProcess
from tests.support.samples import address, professional_added
from tests.support.smtp import SmtpServer

SECRET = "test-secret-" + "x" * 40
TOKEN = re.compile(r"token=(cs1\.[A-Za-z0-9_.-]+)")
INVITATIONS = "customersource.invitations"
NOTIFICATIONS = "customersource.notifications"


def token_of(message: Any) -> str:
    match = TOKEN.search(message.get_body(("plain",)).get_content())
    assert match
    return match.group(1)


@pytest.mark.tansu
async def test_every_input_type_end_to_end(kafka: str, smtp: SmtpServer, start_service: Starter,
                                           database_url: str) -> None:
    from datetime import UTC, datetime

    service = start_service(database_url=database_url)
    await service.wait_ready()
    for path in ("/healthz", "/readyz", "/metrics", "/asyncapi", "/asyncapi.json"):
        assert service.get(path)[0] == 200, path
    channels = service.json("/asyncapi.json")["channels"]
    assert {TOPIC, INVITATIONS, NOTIFICATIONS, TOPIC + ".dlq"} <= set(channels)

    admin = professional_added(roles=["administrator"], is_first_professional=True, locale="da", local_site="DK",
                               country="DK")
    pid, aid = admin["professional_id"], admin["account_id"]
    new_email = address("new")
    async with Reader(kafka, INVITATIONS, NOTIFICATIONS) as reader, Publisher(kafka) as publisher:
        added = cloudevent(ADDED, admin)
        await publisher.structured(TOPIC, pid, added)
        await publisher.structured(TOPIC, pid, added)  # the same (source, id) again
        await smtp.wait_for(lambda: len(smtp.to(admin["email"])) == 1)
        await publisher.binary(TOPIC, pid, cloudevent(RESEND_REQUESTED, {"account_id": aid, "professional_id": pid}))
        await smtp.wait_for(lambda: len(smtp.to(admin["email"])) == 2)
        await publisher.structured(TOPIC, pid, cloudevent(
            EMAIL_CHANGED, {"account_id": aid, "professional_id": pid, "old_email": admin["email"], "new_email": new_email}))
        await smtp.wait_for(lambda: len(smtp.to(new_email)) == 1)
        await publisher.structured(TOPIC, pid, cloudevent(REMOVED, {"account_id": aid, "professional_id": pid}))
        await reader.wait_for(lambda: len(reader.events(INVITATIONS, REVOKED)) == 3)
        await reader.wait_for(lambda: len(reader.events(NOTIFICATIONS)) == 3)

        first, second = smtp.to(admin["email"])
        assert first["X-CustomerSource-Template"] == "invitation_administrator"
        assert first["X-CustomerSource-Event-Id"] == added["id"] and first["Content-Language"] == "da"
        tokens = [token_of(m) for m in (first, second, smtp.to(new_email)[0])]
        claims = [verify_invitation(t, secrets=[SECRET], now=datetime.now(UTC)) for t in tokens]
        issued = [e["data"] for e in reader.events(INVITATIONS, ISSUED)]
        revoked = [e["data"] for e in reader.events(INVITATIONS, REVOKED)]
        assert [i["token_id"] for i in issued] == [c.token_id for c in claims]
        assert [i["reason"] for i in issued] == ["added", "resend", "email_changed"]
        assert [(r["reason"], r["superseded_by"]) for r in revoked] == [
            ("superseded", claims[1].token_id), ("email_changed", claims[2].token_id), ("removed", None)]
        assert [r["token_id"] for r in revoked] == [c.token_id for c in claims]
        assert all(record.key == pid.encode() for record in reader.on(INVITATIONS))
        everything = b"".join(r.value for r in reader.records)
        assert not any(t.encode() in everything for t in tokens)
        assert b"/invitations/accept" not in everything
    assert len(smtp.messages) == 3
    assert service.metric("customersource_events_total", type=ADDED, outcome="duplicate") == 1
    assert service.metric("customersource_emails_total", outcome="sent") == 3
    _, metrics = service.get("/metrics")
    assert f'customersource_consumer_lag{{partition="0",service="invitations",topic="{TOPIC}"}}'.encode() in metrics


@pytest.mark.tansu
async def test_bad_messages_are_dead_lettered_and_the_partition_goes_on(kafka: str, smtp: SmtpServer,
                                                                        start_service: Starter) -> None:
    service = start_service(KAFKA_MAX_MESSAGE_BYTES="4096")
    await service.wait_ready()
    key = "PRO-same-key"  # everything on one partition, in order
    good = professional_added(professional_id=key)
    bad_records = [
        (b"\x00\x01 definitely not json", [("content-type", b"application/cloudevents+json"), ("trace", b"\xff\x00")],
         "unparseable"),
        (json.dumps(cloudevent(ADDED, {**good, "country": "UK"})).encode(), [], "schema_invalid"),
        (json.dumps({"hello": "world"}).encode(), [], "not_cloudevent"),
        (json.dumps(cloudevent("customersource.professional.promoted.v2", good)).encode(), [], "unknown_type"),
        (json.dumps(cloudevent(ADDED, {**good, "name": "x" * 5000})).encode(), [], "oversized"),
    ]
    async with Reader(kafka, TOPIC + ".dlq") as reader, Publisher(kafka) as publisher:
        for value, headers, _ in bad_records:
            await publisher.raw(TOPIC, key, value, headers)
        await publisher.structured(TOPIC, key, cloudevent(ADDED, good))
        await smtp.wait_for(lambda: len(smtp.to(good["email"])) == 1)
        await reader.wait_for(lambda: len(reader.on(TOPIC + ".dlq")) == len(bad_records))
        letters = reader.on(TOPIC + ".dlq")
    for letter, (value, headers, kind) in zip(letters, bad_records, strict=True):
        added = {k: v.decode() for k, v in letter.headers if k.startswith("dlq-")}
        assert letter.value == value and letter.key == key.encode()
        assert list(letter.headers)[: len(headers)] == headers  # original headers, byte for byte
        assert added["dlq-error-kind"] == kind, added
        assert added["dlq-service"] == "invitations" and added["dlq-original-topic"] == TOPIC
        assert added["dlq-reason"] and added["dlq-failed-at"] and added["dlq-original-offset"].isdigit()
        assert added["dlq-original-partition"].isdigit()
    assert service.metric("customersource_dead_letters_total") == len(bad_records)


async def test_injection_attempts_do_not_reach_headers_or_html(kafka: str, smtp: SmtpServer,
                                                               start_service: Starter) -> None:
    service = start_service()
    await service.wait_ready()
    data = professional_added(
        name="Mallory\r\nBcc: victim@evil.example\r\n\r\n<script>alert(1)</script>",
        account_name="Contoso\nX-Injected: yes \u202eevil",
        added_by={"name": "<img src=x onerror=alert(1)>", "kind": "partner"},
    )
    async with Reader(kafka, INVITATIONS) as reader, Publisher(kafka) as publisher:
        await publisher.raw(TOPIC, data["professional_id"], json.dumps(cloudevent(ADDED, data)).encode(),
                            [("content-type", b"application/cloudevents+json"),
                             ("reply_to", INVITATIONS.encode())])  # must not make FastStream publish there
        await smtp.wait_for(lambda: len(smtp.messages) == 1)
        await reader.wait_for(lambda: len(reader.on(INVITATIONS)) >= 1)
        await asyncio.sleep(0.5)
        assert [json.loads(r.value)["type"] for r in reader.on(INVITATIONS)] == [ISSUED]
    [received] = smtp.messages
    message = received.message
    assert received.rcpt_tos == [data["email"]]
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert "\u202e" not in message["Subject"]
    body = message.get_body(("html",))
    assert body is not None
    html = body.get_content()
    assert "<script>" not in html and "<img src=x" not in html


async def test_smtp_refusing_for_a_while_loses_and_duplicates_nothing(kafka: str, smtp: SmtpServer,
                                                                     start_service: Starter) -> None:
    service = start_service()
    await service.wait_ready()
    smtp.handler.refuse_code = 451
    events = [professional_added() for _ in range(20)]
    async with Reader(kafka, NOTIFICATIONS) as reader, Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events])
        await service_retried(service)
        smtp.handler.refuse_code = None
        await smtp.wait_for(lambda: len(smtp.messages) >= len(events), timeout=60)
        await reader.wait_for(lambda: len(reader.events(NOTIFICATIONS)) >= len(events))
        await asyncio.sleep(0.5)  # room for a duplicate to show up, if there were one
    assert sorted(r.rcpt_tos[0] for r in smtp.messages) == sorted(e["email"] for e in events)
    outcomes = [e["data"] for e in reader.events(NOTIFICATIONS)]
    assert len(outcomes) == len(events) and all(o["outcome"] == "sent" for o in outcomes)
    assert any(o["attempts"] > 1 for o in outcomes)


async def service_retried(service: ServiceProcess, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while service.metric("customersource_retries_total", what="smtp") < 3:
        assert loop.time() < deadline, "the service never retried"
        await asyncio.sleep(0.1)


async def test_a_port_in_use_stops_the_service_before_it_consumes(start_service: Starter) -> None:
    """The HTTP port is bound first: taken, the service exits at once, without migrating or joining its group."""
    import socket

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        service = start_service(HTTP_PORT=str(taken.getsockname()[1]))
        assert service.process is not None
        status = await asyncio.to_thread(service.process.wait, 60)
    log = service.log_tail(100)
    assert status == 3, log
    assert f"cannot listen on HTTP_PORT={service.http_port}: Address already in use" in log, log
    assert "service started" not in log and "schema migrated" not in log, log


async def test_migrate_command_then_start(kafka: str, smtp: SmtpServer, start_service: Starter,
                                         database_url: str) -> None:
    import subprocess
    import sys

    from tests.support.process import ROOT, base_env, new_port

    env = base_env(bootstrap=kafka, smtp_port=smtp.port, database_url=database_url, http_port=new_port())
    for expected in ("shared v1, shared v2, shared v3, invitations v1 applied", "schema up to date"):
        run = subprocess.run([sys.executable, "-m", "services.invitations", "migrate"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert expected in run.stdout
    service = start_service(database_url=database_url)
    await service.wait_ready()
