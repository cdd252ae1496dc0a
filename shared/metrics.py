"""Our Prometheus counters, gauges and histograms, and the process collector, in one registry per service."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from shared.scheduler import Waiting


class Metrics:
    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self.events = Counter(
            "customersource_events_total",
            "Input events by type and outcome (processed, duplicate, ignored, dead_lettered)",
            ["service", "type", "outcome"],
            registry=self.registry,
        )
        self.emails = Counter(
            "customersource_emails_total",
            "E-mails by template and final outcome (sent, failed)",
            ["service", "template", "outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "customersource_dead_letters_total",
            "Events sent to the dead-letter topic, by error kind",
            ["service", "topic", "kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "customersource_retries_total",
            "Retries of transient failures (SMTP, broker, database), by what was retried",
            ["service", "what"],
            registry=self.registry,
        )
        self.output_events = Counter(
            "customersource_output_events_total",
            "Output events published, by type",
            ["service", "type"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "customersource_consumer_lag",
            "Records not yet processed and committed per partition (high watermark minus the group's "
            "committed offset), measured from the service's own consumer",
            ["service", "topic", "partition"],
            registry=self.registry,
        )
        self.scheduled = Gauge(
            "customersource_scheduled_jobs",
            "Due-times waiting in the scheduler",
            ["service"],
            registry=self.registry,
        )
        self.overdue = Gauge(
            "customersource_scheduled_overdue_seconds",
            "How long the earliest waiting job of each kind is past its due time (0: none is late); an "
            "escalation, reminder or digest that does not run shows here",
            ["service", "kind"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "customersource_ready",
            "1 when the service is ready (as /readyz says: started, broker and database reachable), else 0; "
            "measured at each scrape",
            ["service"],
            registry=self.registry,
        )
        self.bounces = Counter(
            "customersource_bounces_total",
            "Bounces and complaints published (deliverability), by kind (hard, soft, complaint) and template",
            ["service", "kind", "template"],
            registry=self.registry,
        )
        self.reports = Counter(
            "customersource_reports_total",
            "Messages and reports received at the bounce address (deliverability), by what became of them: "
            "published, duplicate, deferred, unknown_delivery, wrong_recipient, not_a_report",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.unsubscribes = Counter(
            "customersource_unsubscribes_total",
            "One-click unsubscribes (deliverability), by list and outcome: recorded, already (a suppression "
            "covered the list), invalid (a token that does not verify; no list)",
            ["service", "list", "outcome"],
            registry=self.registry,
        )
        self.suppressions_in_force = Gauge(
            "customersource_suppressions",
            "Suppressions in force (address and scope) as this service has read them from "
            "customersource.suppressions; e-mails they stopped are customersource_emails_total{outcome=\"suppressed\"}",
            ["service"],
            registry=self.registry,
        )
        self.purged = Counter(
            "customersource_personal_data_purged_total",
            "Rows whose personal data was purged (deleted, or the addresses and names replaced) once finished "
            "and older than PERSONAL_DATA_RETENTION_DAYS, by table",
            ["service", "table"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total

        self.unrecorded = Histogram(
            "customersource_accepted_unrecorded_seconds",
            "Time from the SMTP server's acceptance of an e-mail to its committed outcome record: the window "
            "in which a crash would send it again",
            ["service"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def event(self, event_type: str, outcome: str) -> None:
        self._child(self.events, event_type, outcome).inc()

    def email(self, template: str, outcome: str) -> None:
        self._child(self.emails, template, outcome).inc()

    def dead_letter(self, topic: str, kind: str) -> None:
        self.dead_letters.labels(self.service, topic, kind).inc()

    def retry(self, what: str) -> None:
        self.retries.labels(self.service, what).inc()

    def output(self, event_type: str) -> None:
        self._child(self.output_events, event_type).inc()

    def _child(self, metric: Counter, *labels: str) -> Counter:
        """The metric's child for the service and these labels, kept: ``labels()`` takes a lock and checks
        its arguments every time, several times per event. The set of label values is small (types,
        templates and outcomes the code names; an unknown input type is counted as "unknown")."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.service, *labels)
        return child

    def bounce(self, kind: str, template: str) -> None:
        self._child(self.bounces, kind, template).inc()

    def report(self, outcome: str) -> None:
        self._child(self.reports, outcome).inc()

    def unsubscribe(self, list_name: str, outcome: str) -> None:
        self._child(self.unsubscribes, list_name, outcome).inc()

    def purge(self, table: str, rows: int) -> None:
        self._child(self.purged, table).inc(rows)

    def count_suppressions(self, count: Callable[[], float]) -> None:
        """The suppressions gauge reads ``count()`` at each scrape."""
        self.suppressions_in_force.labels(self.service).set_function(count)

    def jobs_waiting(self, waiting: Waiting) -> None:
        self.scheduled.labels(self.service).set(waiting.jobs)
        for kind, seconds in waiting.overdue.items():
            self.overdue.labels(self.service, kind).set(seconds)
