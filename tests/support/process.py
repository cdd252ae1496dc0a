"""Run a service as ``python -m services.<name>`` the way the contract says, and clean up after."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ops.broker import die_with_parent, free_port
from ops.topicreader import read_to_end
from tests.support.kafka import INPUT_TOPICS, OUTPUT_TOPICS

ROOT = Path(__file__).resolve().parents[2]


def base_env(*, bootstrap: str, smtp_port: int, database_url: str, http_port: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")}
    return {
        **keep,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "KAFKA_FETCH_MAX_WAIT_MS": "50",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_FROM": "CustomerSource <noreply@customersource.example>",
        "DATABASE_URL": database_url,
        "HTTP_PORT": str(http_port),
        "PORTAL_BASE_URL": "https://portal.example.test",
        "BUSINESS_CENTER_URL": "https://businesscenter.example.test",
        "HELP_EMAIL": "help@customersource.example",
        "INVITATION_SECRET": "test-secret-" + "x" * 40,
        "SUPPORT_ESCALATION_EMAIL": "support@customersource.example",
        "ENVIRONMENT": "test",
        "PYTHONUNBUFFERED": "1",
    }


class ServiceProcess:
    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.http_port = int(env["HTTP_PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"], cwd=ROOT, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def json(self, path: str) -> Any:
        return json.loads(self.get(path)[1])

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            status, _ = await asyncio.to_thread(self.get, "/readyz")
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout} s: {self.log_tail()}")
            await asyncio.sleep(0.1)

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def terminate(self, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def new_port() -> int:
    return free_port()


class ServiceStarter:
    """Starts ``python -m services.<name>`` against one broker and SMTP server, each service in a consumer
    group of this test's (``customersource.<name>.<token>``), its SQLite file and log in ``folder``;
    ``stop_all()`` stops every one it started (SIGTERM, then SIGKILL)."""

    def __init__(self, *, bootstrap: str, smtp_port: int, folder: Path, token: str,
                 test_bootstrap: str | None = None) -> None:
        self.bootstrap = bootstrap
        # Where the test itself reads the topics: the broker's plaintext listener when the services use another.
        self.test_bootstrap = test_bootstrap or bootstrap
        self.smtp_port = smtp_port
        self.folder = folder
        self.token = token
        self.started: list[ServiceProcess] = []

    def __call__(self, name: str = "invitations", *, database_url: str | None = None, **extra: str) -> ServiceProcess:
        env = base_env(bootstrap=self.bootstrap, smtp_port=self.smtp_port,
                       database_url=database_url or f"sqlite+aiosqlite:///{self.folder}/{name}.db",
                       http_port=new_port())
        env["KAFKA_GROUP_ID"] = f"customersource.{name}.{self.token}"
        env.update(extra)
        process = ServiceProcess(name, env, self.folder / f"{name}-{len(self.started)}.log").start()
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        """Stop every service started, then check that none wrote a secret or a token in its log, its metrics,
        or a record of the topics the services write (output events, audit events, dead letters)."""
        found: list[str] = []
        for process in self.started:
            metrics = process.get("/metrics")[1].decode("utf-8", "replace")  # nothing when it has exited
            process.terminate()
            log = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
            found += [f"{process.log_path.name}: {leak}" for leak in leaks(log + metrics, process.env)]
        if self.started:
            with concurrent.futures.ThreadPoolExecutor(1) as thread:  # this fixture's teardown runs no loop
                records = thread.submit(asyncio.run, read_to_end({"bootstrap_servers": self.test_bootstrap},
                                                                 WRITTEN_TOPICS)).result(timeout=120)
            written = "\n".join(f"{r.topic} {r.key!r} {r.value!r} {r.headers!r}" for r in records)
            found += [f"{self.test_bootstrap} topics: {leak}" for process in self.started
                      for leak in leaks(written, process.env)]
        assert not found, f"secrets or tokens written: {sorted(set(found))}"


WRITTEN_TOPICS = [*OUTPUT_TOPICS, *(topic + ".dlq" for topic in INPUT_TOPICS), "customersource.notifications.dlq"]
"""The topics the services write."""


SECRET_SETTINGS = ("INVITATION_SECRET", "INVITATION_PREVIOUS_SECRETS", "UNSUBSCRIBE_SECRET",
                   "UNSUBSCRIBE_PREVIOUS_SECRETS", "KAFKA_SASL_PASSWORD", "SMTP_PASSWORD")
INVITATION_TOKEN = re.compile(r"cs1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}")  # key id, payload, signature
UNSUBSCRIBE_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])([A-Za-z0-9_-]{8,})\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
"""A payload and an HMAC-SHA256 signature, base64url: one only if the payload is a list and an address."""


def _unsubscribe_token_in(text: str) -> bool:
    for match in UNSUBSCRIBE_TOKEN.finditer(text):
        payload = match.group(1)
        try:
            list_name, _, address = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode().partition("\n")
        except (ValueError, UnicodeDecodeError):
            continue
        if list_name and "@" in address:
            return True
    return False


def leaks(text: str, env: dict[str, str]) -> list[str]:
    """What of the service's secrets (its settings' values) and tokens ``text`` shows, named, never quoted."""
    found = [name for name in SECRET_SETTINGS for value in env.get(name, "").split(",")
             if len(value.strip()) >= 8 and value.strip() in text]
    if INVITATION_TOKEN.search(text):
        found.append("an invitation token")
    if _unsubscribe_token_in(text):
        found.append("an unsubscribe token")
    return found
