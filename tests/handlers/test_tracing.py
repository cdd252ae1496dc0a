"""Traces: an input event's W3C trace context reaches its e-mail's span, its output events' headers and
its log lines; no exporter (and no span, no header) unless the OTEL_* variables ask for one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.invitations.app import create_service
from services.invitations.contracts import ADDED, TOPIC
from services.invitations.settings import InvitationSettings
from services.support.app import create_service as create_support
from services.support.contracts import POST_CREATED
from services.support.contracts import TOPIC as SUPPORT_TOPIC
from services.support.settings import SupportSettings
from shared.tracing import TraceIds, Tracing, provider_from_environment
from tests.support.harness import Harness, service_harness
from tests.support.kafka import cloudevent
from tests.support.samples import post_created, professional_added

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(tmp_path: Path, exporter: InMemorySpanExporter) -> AsyncIterator[Harness]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with service_harness(create_service, InvitationSettings, tmp_path, now=NOW, topic=TOPIC,
                               key_field="professional_id", INVITATION_SECRET="t" * 40,
                               tracer_provider=provider) as harness:
        yield harness


def header(headers: list[tuple[str, bytes]], name: str) -> str | None:
    values = [value.decode() for key, value in headers if key == name]
    assert len(values) <= 1
    return values[0] if values else None


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name.startswith(prefix)]
    return span


async def test_one_trace_from_the_input_event_to_its_email_and_output_events(
        traced: Harness, exporter: InMemorySpanExporter) -> None:
    await traced.fetch(traced.record(cloudevent(ADDED, professional_added()), headers=[("traceparent", TRACEPARENT)]))
    spans = exporter.get_finished_spans()
    process = by_name(spans, f"process {ADDED}")
    smtp = by_name(spans, "smtp invitation_professional")
    assert process.kind is SpanKind.CONSUMER and smtp.kind is SpanKind.CLIENT
    assert format(process.context.trace_id, "032x") == TRACE_ID
    assert process.parent is not None and format(process.parent.span_id, "016x") == PARENT_ID
    assert smtp.parent is not None and smtp.parent.span_id == process.context.span_id
    assert smtp.attributes is not None and smtp.attributes["customersource.outcome"] == "sent"
    outputs = {topic: headers for topic, _, _, headers in traced.outputs.records}
    assert set(outputs) == {"customersource.invitations", "customersource.notifications"}
    for headers in outputs.values():
        traceparent = header(headers, "traceparent")
        assert traceparent == f"00-{TRACE_ID}-{format(process.context.span_id, '016x')}-01"


async def test_an_event_without_trace_context_starts_a_trace_of_its_own(
        traced: Harness, exporter: InMemorySpanExporter) -> None:
    await traced.fetch(traced.record(cloudevent(ADDED, professional_added()), headers=[("traceparent", b"\xff junk")]))
    process = by_name(exporter.get_finished_spans(), f"process {ADDED}")
    assert process.parent is None
    for _, _, _, headers in traced.outputs.records:
        traceparent = header(headers, "traceparent")
        assert traceparent is not None and traceparent.startswith(
            f"00-{format(process.context.trace_id, '032x')}-{format(process.context.span_id, '016x')}-")


async def test_without_a_provider_no_span_and_no_header(tmp_path: Path) -> None:
    async with service_harness(create_service, InvitationSettings, tmp_path, now=NOW, topic=TOPIC,
                               key_field="professional_id", INVITATION_SECRET="t" * 40) as harness:
        assert not harness.service.tracing.enabled
        await harness.fetch(harness.record(cloudevent(ADDED, professional_added()),
                                           headers=[("traceparent", TRACEPARENT)]))
        assert harness.outputs.records
        assert all(header(headers, "traceparent") is None for _, _, _, headers in harness.outputs.records)


def test_log_lines_in_a_span_carry_its_ids(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing("invitations", provider)
    outside = logging.makeLogRecord({"msg": "outside"})
    assert TraceIds().filter(outside) and not hasattr(outside, "trace_id")
    with tracing.event(ADDED, TOPIC, 0, 7, [("traceparent", TRACEPARENT)]):
        inside = logging.makeLogRecord({"msg": "smtp still failing"})
        TraceIds().filter(inside)
    fields = vars(inside)  # set by the filter
    assert fields["trace_id"] == TRACE_ID
    assert fields["span_id"] == format(by_name(exporter.get_finished_spans(), "process").context.span_id, "016x")


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
])
def test_the_exporter_is_off_unless_the_standard_variables_ask(environ: dict[str, str], on: bool) -> None:
    provider = provider_from_environment("invitations", environ)
    assert (provider is not None) == on
    if provider is not None:
        assert provider.resource.attributes["service.name"] == "customersource-invitations"
        provider.shutdown()


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        provider_from_environment("invitations", {"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_a_scheduled_jobs_emails_are_under_its_span(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with service_harness(create_support, SupportSettings, tmp_path, now=NOW, topic=SUPPORT_TOPIC,
                               key_field="post_id", SUPPORT_ESCALATION_EMAIL="support@example.com",
                               tracer_provider=provider) as harness:
        await harness.fetch(harness.record(cloudevent(POST_CREATED, post_created(NOW))))
        assert await harness.run_jobs_at(NOW + timedelta(days=10)) == 1
    spans = exporter.get_finished_spans()
    job = by_name(spans, "job ")
    mails = [s for s in spans if s.name.startswith("smtp ")]
    assert len(mails) == 2 and all(m.parent is not None and m.parent.span_id == job.context.span_id for m in mails)
