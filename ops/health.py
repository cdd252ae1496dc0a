"""A service's health and counters, read from its /readyz and /metrics (the lag each service measures
from its own consumer: the local broker's end offsets are wrong)."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class ServiceHealth:
    name: str
    url: str
    reachable: bool = False
    ready: bool = False
    checks: dict[str, bool] = field(default_factory=dict)
    lag: list[tuple[str, int, int]] = field(default_factory=list)  # (topic, partition, lag)
    events: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, outcome) -> count
    emails: dict[tuple[str, str], int] = field(default_factory=dict)  # (template, outcome) -> count
    dead_letters: dict[str, int] = field(default_factory=dict)  # kind -> count
    retries: dict[str, int] = field(default_factory=dict)
    scheduled: int = 0
    error: str = ""

    @property
    def total_lag(self) -> int:
        return sum(lag for _, _, lag in self.lag)


def readyz(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """The service's /readyz answer (503 included); OSError or ValueError when there is none to read."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    status: dict[str, Any] = json.loads(body or b"{}")
    return status


def read(name: str, url: str, timeout: float = 3.0) -> ServiceHealth:
    health = ServiceHealth(name, url)
    try:
        status = readyz(url, timeout)
        health.ready = bool(status.get("ready"))
        health.checks = {k: bool(v) for k, v in status.items() if k != "ready"}
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError) as exc:
        health.error = str(exc)
        return health
    health.reachable = True
    events: Counter[tuple[str, str]] = Counter()
    emails: Counter[tuple[str, str]] = Counter()
    dead_letters: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, int(sample.value)
            if sample.name == "customersource_consumer_lag":
                health.lag.append((labels["topic"], int(labels["partition"]), value))
            elif sample.name == "customersource_events_total":
                events[(labels["type"], labels["outcome"])] += value
            elif sample.name == "customersource_emails_total":
                emails[(labels["template"], labels["outcome"])] += value
            elif sample.name == "customersource_dead_letters_total":
                dead_letters[labels["kind"]] += value
            elif sample.name == "customersource_retries_total":
                retries[labels["what"]] += value
            elif sample.name == "customersource_scheduled_jobs":
                health.scheduled = value
    health.lag.sort()
    health.events, health.emails = dict(sorted(events.items())), dict(sorted(emails.items()))
    health.dead_letters, health.retries = dict(sorted(dead_letters.items())), dict(sorted(retries.items()))
    return health


def main(argv: list[str] | None = None) -> int:
    """``python -m ops.health --ready URL``: exit 0 when the service at URL answers /readyz with ready, else
    1 (a container health check for images without curl)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--ready", metavar="URL", required=True, help="the service's base URL")
    url = parser.parse_args(argv).ready.rstrip("/")
    try:
        status = readyz(url, timeout=4)
    except (OSError, ValueError) as exc:
        print(f"not ready: {url}/readyz: {exc}")
        return 1
    if not status.get("ready"):
        print("not ready: " + (", ".join(k for k, v in status.items() if k != "ready" and not v) or "no answer"))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
