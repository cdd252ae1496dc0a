"""The service factory: one FastStream Kafka application per service, served over ASGI with
``/healthz``, ``/readyz``, ``/metrics``, ``/asyncapi`` (HTML) and ``/asyncapi.json``.

Each service describes itself in a :class:`ServiceSpec` (its router, templates, migrations, output
topics) and its composition root calls :func:`build_service`; tests call the same function with
their own SMTP pool or clock, so nothing is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.factories import AsyncAPIRoute
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.middlewares import AckPolicy
from faststream.specification import AsyncAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, WithJsonSchema

from shared.clock import Clock, SystemClock
from shared.consumer import DrainOnRevoke, Effects, EventRouter, TopicConsumer
from shared.envelope import events_json_schema
from shared.kafka import Outputs, ensure_topics, security
from shared.mail.mailer import FAILED_TYPE, NOTIFICATIONS_TOPIC, SENT_TYPE, EventRef, Mailer, NotificationOutcome
from shared.mail.render import Renderer
from shared.mail.smtp import SmtpConfig, SmtpPool
from shared.metrics import Metrics
from shared.scheduler import Job, JobHandler, Scheduler
from shared.settings import ServiceSettings, database_url, load_settings
from shared.store import Migration, Store

log = logging.getLogger("customersource.app")

def drain_seconds(retry_window: float) -> float:
    """How long a batch in progress may take to wind down (partitions revoked, or shutting down): one
    SMTP retry window, then recording an accepted e-mail under database trouble (another window), the
    batch pause, and a margin; so that two members never send for the same records at once."""
    return 2 * retry_window + 30 + 15

BackgroundTask = Callable[["Service"], Coroutine[Any, Any, None]]
JobFunction = Callable[[Job, Effects], Awaitable[None]]
"""A scheduled job's handler: like an event handler, with the job instead of the event."""


@dataclass(frozen=True)
class OutputTopic:
    """An output topic and its event types, documented in the AsyncAPI document."""

    topic: str
    description: str
    types: Mapping[str, type[BaseModel]]


def _documented(title: str, types: Mapping[str, type[BaseModel]]) -> Any:
    return Annotated[Any, WithJsonSchema({**events_json_schema(types), "title": title})]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    title: str
    description: str
    router: EventRouter
    templates: Path
    locale: Path
    migrations: Sequence[Migration] = ()
    outputs: Sequence[OutputTopic] = ()
    jobs: Mapping[str, JobFunction] = field(default_factory=dict)
    background: Sequence[BackgroundTask] = ()
    job_gates: Mapping[str, Callable[[Service, Mapping[str, Any]], bool]] = field(default_factory=dict)
    template_globals: Callable[[Any], Mapping[str, Any]] = lambda settings: {}


@dataclass
class Service:
    """The running parts of one service (what handlers and tests reach through)."""

    spec: ServiceSpec
    settings: ServiceSettings
    store: Store
    outputs: Outputs
    pool: SmtpPool
    mailer: Mailer
    metrics: Metrics
    clock: Clock
    consumer: TopicConsumer
    broker: KafkaBroker
    scheduler: Scheduler | None = None
    drain: float = 165.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: bool = False
    caught_up: set[int] = field(default_factory=set)  # assigned partitions with nothing left to process

    def is_caught_up(self, partition: int) -> bool:
        """True when this member owns ``partition`` of the input topic, its last fetch of it is recent, and
        everything that fetch reported has been processed (no batch in progress). False while stopping or
        rebalancing, and under FastStream's TestKafkaBroker (which has no consumer)."""
        return self.started and partition in self.caught_up


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


class ServiceFactory(Generic[SettingsT]):
    """A service's composition root: ``create_app`` for ``python -m services.<name>``, ``create_service``
    for tests (their own SMTP pool, outputs or clock; nothing is patched)."""

    def __init__(self, name: str, settings_class: type[SettingsT], spec: Callable[[SettingsT], ServiceSpec]) -> None:
        self.name = name
        self.settings_class = settings_class
        self.spec = spec

    def create_service(
        self,
        settings: SettingsT | None = None,
        *,
        pool: SmtpPool | None = None,
        outputs: Outputs | None = None,
        clock: Clock | None = None,
        retry_window: float = 60.0,
    ) -> tuple[AsgiFastStream, Service]:
        settings = settings or load_settings(self.settings_class, self.name)
        return build_service(self.spec(settings), settings, pool=pool, outputs=outputs, clock=clock,
                             retry_window=retry_window)

    def create_app(self, settings: SettingsT | None = None) -> AsgiFastStream:
        return self.create_service(settings)[0]


def smtp_config(settings: ServiceSettings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.SMTP_HOST,
        port=settings.SMTP_PORT,
        tls=settings.SMTP_TLS,
        username=settings.SMTP_USERNAME,
        password=settings.SMTP_PASSWORD.get_secret_value() if settings.SMTP_PASSWORD else None,
        ca_file=settings.SMTP_CA_FILE,
        max_connections=settings.SMTP_MAX_CONNECTIONS,
    )


def build_service(
    spec: ServiceSpec,
    settings: ServiceSettings,
    *,
    pool: SmtpPool | None = None,
    outputs: Outputs | None = None,
    clock: Clock | None = None,
    retry_window: float = 60.0,
) -> tuple[AsgiFastStream, Service]:
    """Wire a service. Tests pass their own SMTP pool, outputs or clock; production passes none."""
    metrics = Metrics(spec.name)
    clock = clock or SystemClock(settings.TEST_CLOCK_OFFSET_SECONDS)
    store = Store(database_url(settings), component=spec.name, migrations=spec.migrations)
    outputs = outputs or Outputs(settings)
    pool = pool or SmtpPool(smtp_config(settings))
    base_context = {
        "portal_url": settings.PORTAL_BASE_URL,
        "business_center_url": settings.BUSINESS_CENTER_URL,
        "help_email": settings.HELP_EMAIL,
    }
    renderer = Renderer(spec.templates, spec.locale, globals={**base_context, **spec.template_globals(settings)})
    mailer = Mailer(
        service=spec.name,
        sender=settings.SMTP_FROM,
        renderer=renderer,
        pool=pool,
        store=store,
        outputs=outputs,
        metrics=metrics,
        clock=clock,
        base_context=base_context,
        retry_window=retry_window,
    )
    drain = drain_seconds(retry_window)
    scheduler: Scheduler | None = None
    if spec.jobs:
        # A job's lease outlasts its longest run (SMTP retries, then recording under database trouble), so
        # another replica never takes over a job that is still sending.
        scheduler = Scheduler(
            store, clock, {}, lease=timedelta(seconds=drain + 15),
            on_pending=lambda n: metrics.scheduled.labels(spec.name).set(n),
        )
    consumer = TopicConsumer(
        spec.router,
        store=store,
        mailer=mailer,
        outputs=outputs,
        metrics=metrics,
        clock=clock,
        max_message_bytes=settings.KAFKA_MAX_MESSAGE_BYTES,
        concurrency=max(settings.SMTP_MAX_CONNECTIONS * 2, 8),
        scheduler=scheduler,
    )
    broker = KafkaBroker(
        settings.KAFKA_BOOTSTRAP_SERVERS,
        # JoinGroup waits as long as the rebalance: the request must not time out first (KAFKA-5570).
        request_timeout_ms=int((drain + 15 + 5) * 1000),
        security=security(settings),
        client_id=f"customersource-{spec.name}",
        middlewares=[KafkaPrometheusMiddleware(registry=metrics.registry, app_name=spec.name)],
        logger=logging.getLogger(f"customersource.{spec.name}.faststream"),
        graceful_timeout=drain + 5,
        log_level=logging.DEBUG,  # FastStream's per-message "Received"/"Processed" lines
        description=spec.description,
    )
    service = Service(
        spec=spec, settings=settings, store=store, outputs=outputs, pool=pool, mailer=mailer,
        metrics=metrics, clock=clock, consumer=consumer, broker=broker, scheduler=scheduler, drain=drain,
    )
    if scheduler is not None:
        scheduler.handlers.update({kind: _job_runner(service, function) for kind, function in spec.jobs.items()})
        scheduler.gates.update({kind: functools.partial(gate, service) for kind, gate in spec.job_gates.items()})

    def forget_caught_up() -> None:
        service.caught_up = set()

    consumer.on_revoke = forget_caught_up
    _subscribe(service)
    for output in spec.outputs:
        broker.publisher(output.topic, title=output.topic, description=output.description,
                         schema=_documented(f"{output.topic} event", output.types))
    broker.publisher(
        f"{spec.router.topic}.dlq",
        title=f"{spec.router.topic}.dlq",
        description=(
            "Dead letters: the original key, value and headers byte for byte, with dlq-service, "
            "dlq-error-kind, dlq-reason, dlq-original-topic, dlq-original-partition, "
            "dlq-original-offset and dlq-failed-at added."
        ),
        schema=bytes,
    )
    broker.publisher(
        NOTIFICATIONS_TOPIC,
        title=NOTIFICATIONS_TOPIC,
        description="customersource.notification.sent.v1 / .failed.v1: one per final outcome of each e-mail "
        "(structured CloudEvents, key: the triggering aggregate id).",
        schema=_documented(
            f"{NOTIFICATIONS_TOPIC} event", {SENT_TYPE: NotificationOutcome, FAILED_TYPE: NotificationOutcome}
        ),
    )
    app = AsgiFastStream(
        broker,
        asgi_routes=[
            ("/healthz", _healthz()),
            ("/readyz", _readyz(service)),
            ("/metrics", _metrics(service)),
        ],
        asyncapi_path=AsyncAPIRoute("/asyncapi", asyncapi_json_path="/asyncapi.json", try_it_out_path=None),
        specification=AsyncAPI(
            title=spec.title, version="1.0.0", description=spec.description, schema_version="3.0.0"
        ),
        logger=logging.getLogger(f"customersource.{spec.name}.app"),
        on_startup=[_hook(_start, service)],
        on_shutdown=[_hook(_wind_down, service)],
        after_startup=[_hook(_after_start, service)],
        after_shutdown=[_hook(_stop, service)],
    )
    return app, service


def _job_runner(service: Service, function: JobFunction) -> JobHandler:
    async def run(job: Job) -> None:
        cause = job.payload.get("cause") or {
            "id": job.job_id, "source": f"/customersource/{service.spec.name}/scheduler", "type": job.kind,
        }
        effects = service.consumer.effects(EventRef(id=cause["id"], source=cause["source"], type=cause["type"]),
                                           service.clock.now())
        await function(job, effects)

    return run


def _hook(step: Callable[[Service], Awaitable[None]], service: Service) -> Callable[[], Awaitable[None]]:
    async def hook() -> None:
        await step(service)

    return hook


def _subscribe(service: Service) -> None:
    settings, router = service.settings, service.spec.router

    async def raw_records(message: Any) -> Any:
        return message.raw_message

    async def tolerant_parser(records: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
        # FastStream's parser decodes every header as UTF-8; a binary or null header value would
        # make it fail before our code sees the record, and the record would never be dead-lettered.
        # It parses copies with text-safe headers; the handler still gets the original records.
        safe = tuple(
            dataclasses.replace(r, headers=[(k, (v or b"").decode("utf-8", "replace").encode()) for k, v in r.headers])
            for r in records
        )
        message = await original(safe)
        message.raw_message = records
        return message

    records_type = Annotated[Any, WithJsonSchema({**router.payload_json_schema(), "title": f"{router.topic} event"})]

    async def consume(records: Any) -> None:
        await service.consumer.handle_fetch(subscriber.consumer, records)
        await _measure_lag(service)

    consume.__annotations__["records"] = records_type  # resolved here, not from a string
    consume.__doc__ = router.description
    subscriber = service.broker.subscriber(
        router.topic,
        batch=True,
        group_id=settings.group_id,
        parser=tolerant_parser,
        decoder=raw_records,
        ack_policy=AckPolicy.MANUAL,  # TopicConsumer.handle_fetch commits or rewinds each batch itself
        no_reply=True,  # never publish to a topic named by a record's reply_to header
        listener=DrainOnRevoke(service.consumer, timeout=service.drain),
        rebalance_timeout_ms=int((service.drain + 15) * 1000),
        auto_offset_reset="earliest",
        session_timeout_ms=settings.KAFKA_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=settings.KAFKA_HEARTBEAT_INTERVAL_MS,
        fetch_max_wait_ms=settings.KAFKA_FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=max(1_048_576, settings.KAFKA_MAX_MESSAGE_BYTES + 65_536),
        batch_timeout_ms=settings.KAFKA_FETCH_MAX_WAIT_MS,
        max_records=500,
        title=router.topic,
        description=router.description,
    )
    subscriber(consume)
    service.subscriber = subscriber  # type: ignore[attr-defined]


FRESH_FETCH_MS = 3000
"""A partition counts as caught up only if the broker answered a fetch for it this recently: a broker
outage, or a rebalance that stopped fetching, must not leave it "caught up" on old news."""


COMMITTED_TIMEOUT_S = 2.0
"""How long the lag loop waits for the group coordinator's committed offsets (it is down with the broker)."""


async def _measure_lag(service: Service) -> None:
    """Lag per assigned partition, exported and kept as the set of caught-up partitions: the high
    watermark of the last fetch minus the group's committed offset (the log's start before the first
    commit), so that /metrics says what the broker says (end offset minus committed offset): records
    fetched but not yet committed still count."""
    consumer = getattr(getattr(service, "subscriber", None), "consumer", None)
    if consumer is None:
        return
    caught_up = set()
    fresh_after = time.time() * 1000 - FRESH_FETCH_MS - service.settings.KAFKA_FETCH_MAX_WAIT_MS
    for partition in consumer.assignment():
        with contextlib.suppress(Exception):  # a rebalance may take the partition away meanwhile
            highwater = consumer.highwater(partition)
            if highwater is None:
                continue
            committed = await asyncio.wait_for(consumer.committed(partition), COMMITTED_TIMEOUT_S)
            if committed is None:  # never committed: consumption starts at the log's start (earliest)
                starts = await asyncio.wait_for(consumer.beginning_offsets([partition]), COMMITTED_TIMEOUT_S)
                committed = starts[partition]
            lag = max(highwater - committed, 0)
            service.metrics.lag.labels(service.spec.name, partition.topic, str(partition.partition)).set(lag)
            fetched = consumer.last_poll_timestamp(partition) or 0
            if lag == 0 and fetched >= fresh_after and partition.topic == service.spec.router.topic:
                caught_up.add(partition.partition)
    # While a batch is in progress the position is past records not yet processed: nothing counts as
    # caught up then (the batch's end measures again).
    caught_up = caught_up if service.consumer.idle.is_set() else set()
    newly = caught_up - service.caught_up
    service.caught_up = caught_up
    if newly and service.scheduler is not None:
        service.scheduler.wake()


async def _start(service: Service) -> None:
    applied = await service.store.migrate()
    if applied:
        log.info("schema migrated", extra={"applied": applied})
    if service.settings.ENVIRONMENT in ("development", "test"):
        topics = [service.spec.router.topic, f"{service.spec.router.topic}.dlq", NOTIFICATIONS_TOPIC]
        topics += [o.topic for o in service.spec.outputs]
        await ensure_topics(service.settings, topics)
    await service.outputs.start()


async def _after_start(service: Service) -> None:
    async def lag_loop() -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await _measure_lag(service)
            except Exception:
                service.caught_up = set()
                log.warning("lag not measured", exc_info=True)

    service.tasks.append(asyncio.create_task(lag_loop(), name="lag"))
    if service.scheduler is not None:
        service.tasks.append(asyncio.create_task(service.scheduler.run(), name="scheduler"))
    for task in service.spec.background:
        service.tasks.append(asyncio.create_task(task(service), name=getattr(task, "__name__", "background")))
    service.started = True
    log.info("service started", extra={"topic": service.spec.router.topic, "group_id": service.settings.group_id})


async def _wind_down(service: Service) -> None:
    """Before the broker stops: let the batch in progress finish its records and commit, rather
    than be cancelled between an SMTP acceptance and its record."""
    service.started = False  # nothing counts as caught up from now on
    service.caught_up = set()
    for task in service.tasks:  # the scheduler and the lag loop stop before the consumer does
        task.cancel()
    service.consumer.revoking.set()
    try:
        await asyncio.wait_for(service.consumer.idle.wait(), service.drain)
    except TimeoutError:
        log.warning("batch still running at shutdown")


async def _stop(service: Service) -> None:
    service.started = False
    for task in service.tasks:
        task.cancel()
    for task in service.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await service.pool.close()
    await service.outputs.stop()
    await service.store.close()
    log.info("service stopped")


def _json(status: int, body: Mapping[str, Any]) -> AsgiResponse:
    return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})


def _healthz() -> Any:
    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        return _json(200, {"status": "ok"})

    return healthz


def _readyz(service: Service) -> Any:
    @get(include_in_schema=False)
    async def readyz(scope: Any) -> AsgiResponse:
        broker_ok = bool(await service.broker.ping(timeout=2.0))
        store_ok = await service.store.ping()
        ready = service.started and broker_ok and store_ok
        return _json(200 if ready else 503, {"ready": ready, "started": service.started,
                                             "broker": broker_ok, "store": store_ok})

    return readyz


def _metrics(service: Service) -> Any:
    @get(include_in_schema=False)
    async def metrics(scope: Any) -> AsgiResponse:
        return AsgiResponse(generate_latest(service.metrics.registry), 200,
                            headers={"content-type": CONTENT_TYPE_LATEST})

    return metrics

