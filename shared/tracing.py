"""Traces (OpenTelemetry): the W3C trace context of an input event carried to its e-mails, its output
events and its log lines.

An input record's ``traceparent`` (and ``tracestate``) Kafka headers are the parent of a span per event
(``process <type>``, kind CONSUMER); each e-mail is a child span (``smtp <template>``, kind CLIENT), and
each output event and audit event carries the context on as its own ``traceparent`` header. Dead letters
keep the original headers, ``traceparent`` included. A scheduled job's run is a span of its own (``job
<kind>``), its e-mails and events under it. Log lines written meanwhile carry ``trace_id`` and
``span_id``.

Off by default, and then free but for a check per event. On when the standard variables ask for it:
``OTEL_TRACES_EXPORTER=otlp`` or an ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
(the OTLP/HTTP exporter reads its other ``OTEL_EXPORTER_OTLP_*`` settings itself), unless
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. ``OTEL_SERVICE_NAME`` names the service
(default ``customersource-<service>``); ``OTEL_RESOURCE_ATTRIBUTES`` is honoured.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Headers = Sequence[tuple[str, bytes]]

_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_HEADERS = ("traceparent", "tracestate")
# W3C Trace Context: a version-00 traceparent is 55 characters; tracestate is at most 32 members of 256 at
# most, and propagators may drop it past 512. Anything longer is ignored before the SDK parses (and logs) it.
_LONGEST = {"traceparent": 55, "tracestate": 512}


class _KafkaHeaders(Getter[Headers]):
    """Reads ``traceparent``/``tracestate`` from a record's headers (bytes, possibly not UTF-8: ignored)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = []
        for name, value in carrier:
            if name == key and value and len(value) <= _LONGEST[key]:  # longer: not W3C, and never logged
                try:
                    values.append(value.decode("ascii"))
                except UnicodeDecodeError:
                    continue
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier]


_GETTER = _KafkaHeaders()

_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()
"""What every span is when tracing is off: nothing, at no cost (it is entered once per event and e-mail)."""


def provider_from_environment(service: str, environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """A tracer provider exporting over OTLP/HTTP when the OTEL_* variables ask for it, else None (off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter == "none" or (not exporter and not endpoint):
        return None
    if exporter not in ("", "otlp"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: only 'otlp' (or 'none') is supported")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    name = environ.get("OTEL_SERVICE_NAME") or f"customersource-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Tracing:
    """The service's spans, or nothing at all when no provider is given."""

    def __init__(self, service: str, provider: TracerProvider | None) -> None:
        self.service = service
        self.provider = provider
        self._tracer = provider.get_tracer("customersource.notifications") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def _span(self, name: str, kind: SpanKind, attributes: dict[str, str | int],
              parent: otel_context.Context | None = None) -> Iterator[trace.Span | None]:
        """A span made current for the block (None, and nothing done, when tracing is off). Exceptions are
        the runtime's to handle (retries, dead letters): not recorded as the span's errors."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes,
                                                record_exception=False, set_status_on_exception=False) as span:
            yield span

    def event(self, event_type: str, topic: str, partition: int, offset: int,
              headers: Headers) -> contextlib.AbstractContextManager[object]:
        """The span of one input event, child of the record's trace context (a new trace without one)."""
        if self._tracer is None:  # every record passes here: nothing built when tracing is off
            return _NO_SPAN
        parent = _PROPAGATOR.extract(headers, getter=_GETTER)
        attributes: dict[str, str | int] = {"messaging.system": "kafka", "messaging.destination.name": topic,
                      "messaging.kafka.destination.partition": partition, "messaging.kafka.message.offset": offset,
                      "messaging.operation.type": "process", "cloudevents.event_type": event_type}
        return self._span(f"process {event_type}", SpanKind.CONSUMER, attributes, parent)

    def job(self, kind: str, job_id: str) -> contextlib.AbstractContextManager[object]:
        """The span of one scheduled job's run (a trace of its own: the event that scheduled it may be days old)."""
        if self._tracer is None:
            return _NO_SPAN
        return self._span(f"job {kind}", SpanKind.INTERNAL,
                          {"customersource.job.kind": kind, "customersource.job.id": job_id})

    def email(self, template: str) -> contextlib.AbstractContextManager[trace.Span | None]:
        """The span of one e-mail's SMTP send, under the current event's."""
        if self._tracer is None:
            return _NO_SPAN
        return self._span(f"smtp {template}", SpanKind.CLIENT, {"customersource.template": template})

    @staticmethod
    def outcome(span: trace.Span | None, outcome: str, smtp_code: int | None) -> None:
        if span is None:
            return
        span.set_attribute("customersource.outcome", outcome)
        if smtp_code is not None:
            span.set_attribute("smtp.response.code", smtp_code)
        if outcome != "sent":
            span.set_status(Status(StatusCode.ERROR, outcome))

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """The current trace context as Kafka headers (``traceparent``, ``tracestate``), for an output event."""
        if self._tracer is None:
            return ()
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return tuple((name, carrier[name].encode("ascii")) for name in _CONTEXT_HEADERS if name in carrier)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


class TraceIds(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` to a log record written inside a recording span."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span(otel_context.get_current()).get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
