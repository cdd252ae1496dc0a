"""The local console in headless Chromium (Debian's, driven by Playwright): an e-mail from a published
event, as the recipient sees it with the event that caused it, a dead letter with its reason, and the
deliverability page (a bounce whose diagnostic carries markup, shown as text; a suppression; an unsubscribe).

Chromium comes from Debian's package: where the tests run as root with apt (as in CI) it is installed
on first use; elsewhere the test says what it needs. Set CUSTOMERSOURCE_SCREENSHOTS=docs to refresh the
README's screenshots."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ops.broker import free_port
from ops.console import Console
from ops.mailcatcher import MailCatcher
from services.invitations.contracts import ADDED, TOPIC
from shared.suppressions import SUPPRESSION_ADDED_TYPE, SUPPRESSIONS_TOPIC
from tests.conftest import unavailable
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.process import ServiceProcess, leaks
from tests.support.samples import professional_added
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
            if result.returncode != 0:
                unavailable("Chromium", f"`{' '.join(command)}` failed: {result.stderr[-500:]}")
    if not CHROMIUM.exists():
        unavailable("Chromium", "this test needs Debian's chromium package (/usr/bin/chromium): "
                                "`sudo apt-get install chromium`, or run the tests as root where apt works")
    return CHROMIUM


@pytest.fixture
async def catcher(tmp_path: Path) -> AsyncIterator[MailCatcher]:
    catcher = MailCatcher(tmp_path / "mail", free_port())
    await catcher.start()
    try:
        yield catcher
    finally:
        await catcher.stop()


@pytest.fixture
async def invitations(catcher: MailCatcher, start_service: Starter) -> ServiceProcess:
    service = start_service("invitations", SMTP_PORT=str(catcher.smtp_port))
    await service.wait_ready()
    return service


@pytest.fixture
async def console(kafka: str, catcher: MailCatcher, invitations: ServiceProcess) -> AsyncIterator[Console]:
    console = Console(catcher.box, port=free_port(), kafka_options={"bootstrap_servers": kafka},
                      services={"invitations": f"http://127.0.0.1:{invitations.http_port}"})
    await console.start()
    try:
        yield console
    finally:
        await console.stop()


@pytest.mark.tansu
async def test_the_console_shows_an_e_mail_with_its_cause_and_a_dead_letter(
    chromium: Path, kafka: str, console: Console, invitations: ServiceProcess, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    data = professional_added(account_name="Northwind Traders", name="Maria Anders", locale="de-DE",
                              local_site="DE", country="DE")
    event = cloudevent(ADDED, data)
    async with Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, data["professional_id"], event)
        await publisher.raw(TOPIC, "PRO-broken", b'{"hello": "not a CloudEvent"}', [])
    await wait_until(lambda: len(console.box.names()) == 1 and len(console.feed.dead_letters) == 1, 30)
    await wait_until(lambda: event["id"] in console.feed.events, 30)

    shots = ROOT / "docs" if os.environ.get("CUSTOMERSOURCE_SCREENSHOTS") == "docs" else tmp_path
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(console.url)
            await page.get_by_text("Northwind Traders").first.click()
            await page.wait_for_selector("#subject")
            assert "Northwind Traders" in await page.inner_text("#subject")
            assert await page.inner_text("#language") == "de"
            # The HTML part, as the recipient sees it, in a sandboxed frame.
            frame = page.frame_locator("iframe")
            assert "Maria Anders" in await frame.locator("body").inner_text()
            assert "/invitations/accept?token=" in await page.inner_text("#text")
            cause = await page.inner_text("#cause")
            assert event["id"] in cause and data["professional_id"] in cause
            await page.screenshot(path=str(shots / "console-inbox.png"))

            await page.get_by_role("link", name="Dead letters (1)").click()
            table = await page.inner_text("#dead-letters")
            assert "not_cloudevent" in table and "customersource.professionals/" in table
            assert "open" in table
            await page.get_by_role("link", name="inspect").click()
            body = await page.inner_text("main")
            assert "Replayed unchanged it would fail the same way" in body and "--value > event.json" in body
            assert "not a CloudEvent" in body
            await page.screenshot(path=str(shots / "console-dead-letter.png"))

            # Replayed anyway (--force), it is dead-lettered again: the console says so.
            forced = subprocess.run([sys.executable, "-m", "ops.cli", "--bootstrap", kafka, "dlq", "replay",
                                     "invitations", "--all", "--force"], capture_output=True, text=True, timeout=60)
            assert forced.returncode == 0, forced.stderr
            await wait_until(lambda: len(console.feed.dead_letters) == 2, 30)
            await page.goto(console.url + "dead-letters")
            table = await page.inner_text("#dead-letters")
            assert "failed again" in table and "open" in table

            # Deliverability: a bounce whose diagnostic carries markup, and an unsubscribe, shown as text.
            hostile = '550 5.1.1 <script>document.title="owned"</script><img src=x onerror=alert(1)>'
            bounced = cloudevent("customersource.notification.bounced.v1", {
                "event_id": event["id"], "event_source": event["source"], "event_type": ADDED,
                "service": "invitations", "template": "invitation_professional", "recipient": data["email"],
                "message_id": "m1@customersource.example", "kind": "hard", "status": "5.1.1",
                "diagnostic": hostile, "reported_at": "2026-12-06T09:00:00+00:00"})
            unsubscribed = cloudevent(SUPPRESSION_ADDED_TYPE, {
                "address": "sam@example.com", "reason": "unsubscribed", "scope": "partner-digest",
                "since": "2026-12-06T09:01:00+00:00", "cause_message_id": None})
            async with Publisher(kafka) as publisher:
                await publisher.structured("customersource.notifications", data["professional_id"], bounced)
                await publisher.structured(SUPPRESSIONS_TOPIC, "sam@example.com", unsubscribed)
            await wait_until(lambda: len(console.feed.bounces) == 1 and len(console.feed.suppressions) == 1, 30)
            await page.reload()  # the counts in the navigation are those of the page's rendering
            await page.get_by_role("link", name="Deliverability (1)").click()
            bounces = await page.inner_text("#bounces")
            assert hostile in bounces and "hard" in bounces and data["email"] in bounces
            assert await page.evaluate("document.querySelectorAll('script, main img').length") == 0
            assert await page.title() != "owned"
            assert "partner-digest" in await page.inner_text("#suppressions")
            assert "sam@example.com" in await page.inner_text("#unsubscribes")

            await page.get_by_role("link", name="Services").click()
            service = await page.inner_text("#service-invitations")
            assert service.startswith("invitations ready") and "customersource.professionals" in service
            assert "customersource.professional.added.v1" in service
        finally:
            await browser.close()
    assert (shots / "console-inbox.png").stat().st_size > 10_000

    # No page shows a secret or a token, but an e-mail's own: the inbox shows it as its recipient sees it,
    # the invitation's link with its token (which also shows that the scan finds one).
    letters = [f"/dead-letters/{d.record.topic}/{d.record.partition}/{d.record.offset}"
               for d in console.feed.dead_letters]
    pages = ["/", "/escalations", "/dead-letters", *letters, "/deliverability", "/services", "/api/messages",
             "/api/dead-letters", "/api/escalations"]
    shown = {path: await asyncio.to_thread(read_page, console.url + path.lstrip("/")) for path in pages}
    assert {path: leaks(text, invitations.env) for path, text in shown.items() if leaks(text, invitations.env)} == {}
    [invitation] = console.box.names()
    e_mail = await asyncio.to_thread(read_page, f"{console.url}?id={urllib.parse.quote(invitation)}")
    assert leaks(e_mail, invitations.env) == ["an invitation token"]


def read_page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())

