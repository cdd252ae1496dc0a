"""The operations CLI (the installed ``customersource-ops``) against the real broker and a running
service: validated publishing, dead letters listed and inspected, a replay after the fix that sends
each e-mail once (and a second replay that sends nothing), and lag from /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ops.health import read as read_health
from services.invitations.contracts import ADDED, RESEND_REQUESTED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.process import ServiceProcess
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

CLI = Path(sys.executable).parent / "customersource-ops"


def ops(kafka: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "--bootstrap", kafka, *args], capture_output=True, text=True, timeout=120,
                          check=False)


async def handled(service: ServiceProcess, count: float) -> None:
    await wait_until(lambda: service.metric("customersource_events_total") >= count, 30,
                     state=lambda: f"{service.metric('customersource_events_total')} of {count}")


async def test_publish_validates_before_sending(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                tmp_path: Path) -> None:
    service = start_service("invitations")
    await service.wait_ready()
    good = professional_added()
    bad = professional_added(country="UK")
    mixed = tmp_path / "events.jsonl"
    mixed.write_text("\n".join(json.dumps({"type": ADDED, "data": d}) for d in (good, bad)))
    refused = ops(kafka, "publish", str(mixed))
    assert refused.returncode == 2
    assert "event 2" in refused.stderr and "schema_invalid" in refused.stderr and "GB" in refused.stderr
    assert "nothing was published" in refused.stderr
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"type": ADDED, "data": good}))
    published = ops(kafka, "publish", str(single))
    assert published.returncode == 0, published.stderr
    assert f"to {TOPIC} (key {good['professional_id']})" in published.stdout
    await smtp.wait_for(lambda: len(smtp.to(good["email"])) == 1)
    await handled(service, 1)
    assert smtp.to(bad["email"]) == [] and service.metric("customersource_events_total") == 1, "only the good one"
    assert ops(kafka, "publish", "--example", "professional-added", "--binary").returncode == 0
    await handled(service, 2)
    listed = ops(kafka, "publish", "--list-examples")
    assert "post-overdue" in listed.stdout and "permission-requested" in listed.stdout


@pytest.mark.tansu
async def test_a_dead_letter_is_found_understood_and_replayed_without_a_duplicate_e_mail(
    kafka: str, smtp: SmtpServer, start_service: Starter
) -> None:
    service = start_service("invitations")
    await service.wait_ready()
    profile = professional_added()
    resend = cloudevent(RESEND_REQUESTED, {"account_id": profile["account_id"],
                                           "professional_id": profile["professional_id"]})
    invalid = cloudevent(ADDED, professional_added(country="UK"))
    async with Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, profile["professional_id"], resend)  # before its profile: dead-lettered
        await publisher.structured(TOPIC, invalid["data"]["professional_id"], invalid)  # fails the same way replayed
    await handled(service, 2)
    listing = ops(kafka, "dlq", "list", "invitations")
    assert listing.returncode == 0, listing.stderr
    assert "unknown_aggregate" in listing.stdout and resend["id"] in listing.stdout
    line = next(line for line in listing.stdout.splitlines() if f"id={resend['id']}" in line)
    position = line.split("customersource.professionals.dlq ", 1)[1].split()[0]
    shown = ops(kafka, "dlq", "show", "invitations", position)
    assert "re-send for a profile this service has never seen" in shown.stdout.replace("invitation re-send", "re-send")
    assert f'"professional_id": "{profile["professional_id"]}"' in shown.stdout
    assert "advice:   The aggregate it refers to was unknown" in shown.stdout
    dry_all = ops(kafka, "dlq", "replay", "invitations", "--all", "--dry-run")
    assert "1 dead letter(s) would be replayed" in dry_all.stdout, dry_all.stdout
    assert "a schema_invalid letter fails again unchanged (--force replays it anyway)" in dry_all.stderr
    assert "2 dead letter(s) would be replayed" in ops(kafka, "dlq", "replay", "invitations", "--all", "--force",
                                                         "--dry-run").stdout
    value = ops(kafka, "dlq", "show", "invitations", position, "--value")
    assert json.loads(value.stdout) == resend, "the value alone, as published: ready to fix and publish again"

    # The fix: the profile is added (one invitation). Then the dead letter is replayed: the re-send is
    # processed (a second invitation, the first link revoked). A second replay sends nothing.
    async with Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, profile["professional_id"], cloudevent(ADDED, profile))
    await smtp.wait_for(lambda: len(smtp.to(profile["email"])) == 1)
    unspecific = ops(kafka, "dlq", "replay", "invitations")
    assert unspecific.returncode == 2 and "--kind" in unspecific.stderr and "--all" in unspecific.stderr
    dry = ops(kafka, "dlq", "replay", "invitations", "--kind", "unknown_aggregate", "--dry-run")
    assert "1 dead letter(s) would be replayed" in dry.stdout
    replayed = ops(kafka, "dlq", "replay", "invitations", "--kind", "unknown_aggregate")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 dead letter(s)" in replayed.stdout
    await smtp.wait_for(lambda: len(smtp.to(profile["email"])) == 2)

    last: list[subprocess.CompletedProcess[str]] = []

    def listed_as(state: str) -> bool:
        last[:] = [ops(kafka, "dlq", "list", "invitations", "--group", f"invitations={service.env['KAFKA_GROUP_ID']}")]
        line = last[0].stdout.split(f"id={resend['id']}", 1)[1].split("customersource.professionals.dlq", 1)[0]
        return state in line and "1 resolved" in last[0].stderr

    await wait_until(lambda: listed_as("resolved: replayed as customersource.professionals/"), 30,
                     state=lambda: f"{last[0].stdout}\n{last[0].stderr}" if last else "")
    again = ops(kafka, "dlq", "replay", "invitations", "--position", position)
    assert again.returncode == 0, again.stderr
    await wait_until(lambda: service.metric("customersource_events_total", type=RESEND_REQUESTED,
                                            outcome="duplicate") == 1, 30)
    assert len(smtp.to(profile["email"])) == 2, "a replay never sends an e-mail twice"
    assert service.metric("customersource_dead_letters_total") == 2


async def test_lag_per_service_and_partition_from_metrics(kafka: str, smtp: SmtpServer,
                                                          start_service: Starter) -> None:
    service = start_service("invitations")
    await service.wait_ready()
    async with Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, "PRO-lag", cloudevent(ADDED, professional_added(professional_id="PRO-lag")))
    await handled(service, 1)
    url = f"http://127.0.0.1:{service.http_port}"
    result = ops(kafka, "lag", "--service", f"invitations={url}")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("invitations")]
    assert rows and all(row.split()[1] == "ready" and TOPIC in row and row.endswith("metrics") for row in rows)
    assert sum(int(row.split()[-2]) for row in rows) == 0


@pytest.mark.tansu
async def test_lag_from_the_broker_while_the_service_is_down(kafka: str, smtp: SmtpServer,
                                                           start_service: Starter) -> None:
    """With no /metrics to read, the CLI falls back to the group's committed offsets against the ends of the
    partitions: what was published while the service was down, partition by partition."""
    service = start_service("invitations")
    await service.wait_ready()
    before = [professional_added() for _ in range(4)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in before])
    await smtp.wait_for(lambda: len(smtp.messages) == len(before))
    def committed_all() -> bool:
        health = read_health("invitations", f"http://127.0.0.1:{service.http_port}")
        return len(health.lag) == 3 and health.total_lag == 0

    await wait_until(committed_all, 30)
    service.terminate()
    while_down = [professional_added() for _ in range(7)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in while_down])

    group = service.env["KAFKA_GROUP_ID"]
    result = ops(kafka, "lag", "--service", f"invitations=http://127.0.0.1:{service.http_port}",
                 "--group", f"invitations={group}")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("invitations")]
    assert len(rows) == 3 and all(row[1] == "unreachable" and f"group {group}" in " ".join(row) for row in rows)
    assert sum(int(row[4]) for row in rows) == len(while_down)


async def test_replaying_everything_sends_each_still_invalid_event_once_more_not_every_copy(
    kafka: str, smtp: SmtpServer, start_service: Starter
) -> None:
    service = start_service("invitations")
    await service.wait_ready()
    orphan = cloudevent(RESEND_REQUESTED, {"account_id": "ACC-none", "professional_id": "PRO-none"})
    async with Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, "PRO-none", orphan)
    await handled(service, 1)
    for round_ in (1, 2, 3):  # still invalid: each replay dead-letters it again, once
        replayed = ops(kafka, "dlq", "replay", "invitations", "--all")
        assert "replayed 1 dead letter(s)" in replayed.stdout, replayed.stdout + replayed.stderr

        def dead_lettered_again(n: int = round_) -> bool:
            return service.metric("customersource_dead_letters_total") == n + 1

        await wait_until(dead_lettered_again, 30)
    listing = ops(kafka, "dlq", "list", "invitations")
    assert listing.stdout.count(orphan["id"]) == 4 and "4 dead letter(s)" in listing.stderr
