"""With OTEL_EXPORTER_OTLP_ENDPOINT set, ``python -m services.invitations`` exports its spans over OTLP/HTTP
(to a small receiver in the test) while it processes events end to end on the real broker: FastStream's
batch span and the event's, the e-mail's under it, in the publisher's trace."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services.invitations.contracts import ADDED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Receiver(http.server.BaseHTTPRequestHandler):
    spans: ClassVar[list[tuple[str, str, str]]] = []  # (name, trace id, parent span id)

    def do_POST(self) -> None:  # the standard library's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    Receiver.spans.append((span.name, span.trace_id.hex(), span.parent_span_id.hex()))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    Receiver.spans = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_spans_reach_the_otlp_endpoint(kafka: str, smtp: SmtpServer, start_service: Starter,
                                             collector: str) -> None:
    service = start_service(OTEL_EXPORTER_OTLP_ENDPOINT=collector, OTEL_BSP_SCHEDULE_DELAY="200")
    await service.wait_ready()
    data = professional_added()
    async with Publisher(kafka) as publisher:
        await publisher.raw(TOPIC, data["professional_id"], json.dumps(cloudevent(ADDED, data)).encode(),
                            [("content-type", b"application/cloudevents+json"), ("traceparent", TRACEPARENT.encode())])
    await smtp.wait_for(lambda: len(smtp.to(data["email"])) == 1, timeout=60)
    # The e-mail's span ends (and may be exported) before the event's, which encloses it: wait for both.
    wanted = {f"process {ADDED}", "smtp invitation_professional"}
    await wait_until(lambda: wanted <= {name for name, _, _ in Receiver.spans}, 30,
                     state=lambda: f"{Receiver.spans}; {service.log_tail(10)}")
    ours = [(name, parent) for name, trace, parent in Receiver.spans if trace == TRACE_ID]
    names = [name for name, _ in ours]
    assert f"process {ADDED}" in names and "smtp invitation_professional" in names, Receiver.spans
    assert dict(ours)[f"process {ADDED}"] == "b7ad6b7169203331"
