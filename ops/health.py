"""A service's health and counters, read from its /readyz and /metrics (the lag each service measures
from its own consumer: the local broker's end offsets are wrong)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

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


def read(name: str, url: str, timeout: float = 3.0) -> ServiceHealth:
    health = ServiceHealth(name, url)
    try:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        status = json.loads(body or b"{}")
        health.ready = bool(status.get("ready"))
        health.checks = {k: bool(v) for k, v in status.items() if k != "ready"}
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError) as exc:
        health.error = str(exc)
        return health
    health.reachable = True
    sums: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "customersource_consumer_lag":
                health.lag.append((labels["topic"], int(labels["partition"]), int(sample.value)))
            elif sample.name == "customersource_events_total":
                sums["events"][(labels["type"], labels["outcome"])] += sample.value
            elif sample.name == "customersource_emails_total":
                sums["emails"][(labels["template"], labels["outcome"])] += sample.value
            elif sample.name == "customersource_dead_letters_total":
                sums["dead_letters"][(labels["kind"],)] += sample.value
            elif sample.name == "customersource_retries_total":
                sums["retries"][(labels["what"],)] += sample.value
            elif sample.name == "customersource_scheduled_jobs":
                health.scheduled = int(sample.value)
    health.lag.sort()
    health.events = {k: int(v) for k, v in sorted(sums["events"].items())}  # type: ignore[misc]
    health.emails = {k: int(v) for k, v in sorted(sums["emails"].items())}  # type: ignore[misc]
    health.dead_letters = {k[0]: int(v) for k, v in sorted(sums["dead_letters"].items())}
    health.retries = {k[0]: int(v) for k, v in sorted(sums["retries"].items())}
    return health
