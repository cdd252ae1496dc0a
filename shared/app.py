"""The service factory: one FastStream Kafka application per service, served over ASGI with
``/healthz``, ``/readyz``, ``/metrics``, ``/asyncapi`` (HTML) and ``/asyncapi.json``.

Each service describes itself in a :class:`ServiceSpec` (its router, templates, migrations, output
topics) and its composition root calls :func:`build_service`; tests call the same function with
their own SMTP pool or clock, so nothing is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, WithJsonSchema

from shared import asyncapi
from shared.batches import BatchProcessor
from shared.clock import Clock, SystemClock
from shared.envelope import events_json_schema
from shared.handling import Context, EventRouter, Plan, Preload
from shared.intake import Intake
from shared.kafka import Outputs, Producer, client_options, ensure_topics, security
from shared.lag import CaughtUp, LagMeter
from shared.mail.mailer import (
    FAILED_TYPE,
    NOTIFICATIONS_TOPIC,
    SENT_TYPE,
    SUPPRESSED_TYPE,
    EventRef,
    Mailer,
    NotificationOutcome,
    NotificationSuppressed,
    sender_domain,
)
from shared.mail.render import Renderer
from shared.mail.smtp import Pool, SmtpConfig, SmtpPool
from shared.mail.unsubscribe import UnsubscribeLinks
from shared.metrics import Metrics
from shared.retention import Purge, Retention
from shared.runtime import PlanRunner
from shared.scheduler import Job, JobDone, JobHandler, PassHandler, Scheduler, Wakeup
from shared.settings import ServiceSettings, database_url, load_settings
from shared.store import Migration, Store
from shared.suppressions import SUPPRESSIONS_TOPIC, SUPPRESSIONS_TOPIC_CONFIG, SuppressionFollower, Suppressions
from shared.tracing import Tracing, provider_from_environment

if TYPE_CHECKING:  # dkimpy is imported only where DKIM is configured
    from shared.mail.dkim import DkimSigner

log = logging.getLogger("customersource.app")

def drain_seconds(retry_window: float) -> float:
    """How long a batch in progress may take to wind down (partitions revoked, or shutting down): one
    SMTP retry window, then recording an accepted e-mail under database trouble (another window), the
    batch pause, and a margin; so that two members never send for the same records at once."""
    return 2 * retry_window + 30 + 15

BackgroundTask = Callable[["Service"], Coroutine[Any, Any, None]]
AsgiApp = Callable[[Any, Any, Any], Awaitable[None]]
JobFunction = Callable[[Job, Context], Awaitable[Plan]]
"""A scheduled job's handler: like an event handler, with the job instead of the event."""
JobGate = Callable[[CaughtUp, str, Mapping[str, Any]], bool]
"""Whether a due job (given its id and payload) may run on this member now, knowing how far it has processed
its partitions (:class:`shared.lag.CaughtUp`)."""


@dataclass(frozen=True)
class OutputTopic:
    """An output topic and its event types, documented in the AsyncAPI document."""

    topic: str
    description: str
    types: Mapping[str, type[BaseModel]]
    key: str  # what the record key is


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
    job_gates: Mapping[str, JobGate] = field(default_factory=dict)
    retention: Sequence[Purge] = ()
    """What of the service's own tables is personal and when it is finished (shared.retention); the shared
    tables' purges are always run."""
    job_preloads: Mapping[str, Preload] = field(default_factory=dict)
    """What a kind's job function reads first, read for all the jobs of a scheduler pass in one query."""
    template_globals: Callable[[Any], Mapping[str, Any]] = lambda settings: {}
    prefixed: Callable[[Service], Sequence[tuple[str, AsgiApp]]] = lambda service: ()
    """ASGI applications serving the paths under a prefix, given the running parts (the deliverability service's
    unsubscribe pages): FastStream's own routes match whole paths only."""


@dataclass
class Service:
    """The running parts of one service (what the hooks, the endpoints and tests reach through)."""

    spec: ServiceSpec
    settings: ServiceSettings
    store: Store
    producer: Producer
    pool: Pool
    mailer: Mailer
    suppression_follower: SuppressionFollower
    runner: PlanRunner
    retention: Retention
    metrics: Metrics
    clock: Clock
    batches: BatchProcessor
    caught_up: CaughtUp
    lag: LagMeter
    broker: KafkaBroker
    intake: Intake
    scheduler: Scheduler | None
    drain: float
    tracing: Tracing
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: bool = False


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
        pool: Pool | None = None,
        producer: Producer | None = None,
        clock: Clock | None = None,
        caught_up: CaughtUp | None = None,
        retry_window: float = 60.0,
        tracer_provider: TracerProvider | None = None,
    ) -> tuple[AsgiApp, Service]:
        settings = settings or load_settings(self.settings_class, self.name)
        return build_service(self.spec(settings), settings, pool=pool, producer=producer, clock=clock,
                             caught_up=caught_up, retry_window=retry_window, tracer_provider=tracer_provider)

    def create_app(self, settings: SettingsT | None = None) -> AsgiApp:
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


def unsubscribe_links(settings: ServiceSettings) -> UnsubscribeLinks | None:
    if settings.UNSUBSCRIBE_BASE_URL is None or settings.UNSUBSCRIBE_SECRET is None:
        return None
    secret = settings.UNSUBSCRIBE_SECRET.get_secret_value()
    return UnsubscribeLinks(base_url=settings.UNSUBSCRIBE_BASE_URL, secret=secret,
                            domain=sender_domain(settings.SMTP_FROM),
                            previous=[s.get_secret_value() for s in settings.UNSUBSCRIBE_PREVIOUS_SECRETS])


def dkim_signer(settings: ServiceSettings) -> DkimSigner | None:
    if settings.DKIM_DOMAIN is None or settings.DKIM_SELECTOR is None or settings.DKIM_PRIVATE_KEY_FILE is None:
        return None
    from shared.mail.dkim import DkimSigner  # dkimpy is imported only where DKIM is configured

    return DkimSigner.from_file(domain=settings.DKIM_DOMAIN, selector=settings.DKIM_SELECTOR,
                                key_file=settings.DKIM_PRIVATE_KEY_FILE)


def build_service(
    spec: ServiceSpec,
    settings: ServiceSettings,
    *,
    pool: Pool | None = None,
    producer: Producer | None = None,
    clock: Clock | None = None,
    caught_up: CaughtUp | None = None,
    retry_window: float = 60.0,
    tracer_provider: TracerProvider | None = None,
) -> tuple[AsgiApp, Service]:
    """Wire a service, each part built once and complete. Tests pass their own SMTP pool, producer, clock,
    caught-up gate or tracer provider; production passes none (traces follow the OTEL_* variables)."""
    metrics = Metrics(spec.name)
    tracing = Tracing(spec.name, tracer_provider or provider_from_environment(spec.name))
    clock = clock or SystemClock(settings.TEST_CLOCK_OFFSET_SECONDS)
    store = Store(database_url(settings), component=spec.name, migrations=spec.migrations)
    producer = producer or Outputs(settings)
    pool = pool or SmtpPool(smtp_config(settings))
    caught_up = caught_up or CaughtUp()
    base_context = {
        "portal_url": settings.PORTAL_BASE_URL,
        "business_center_url": settings.BUSINESS_CENTER_URL,
        "help_email": settings.HELP_EMAIL,
    }
    renderer = Renderer(spec.templates, spec.locale, globals={**base_context, **spec.template_globals(settings)})
    suppression_follower = SuppressionFollower(client_options(settings), Suppressions(),
                                               fetch_max_wait_ms=settings.KAFKA_FETCH_MAX_WAIT_MS)
    metrics.count_suppressions(lambda: len(suppression_follower.state))
    mailer = Mailer(service=spec.name, sender=settings.SMTP_FROM, renderer=renderer, pool=pool, store=store,
                    metrics=metrics, clock=clock, base_context=base_context, retry_window=retry_window,
                    tracing=tracing, bounce_address=settings.SMTP_BOUNCE_ADDRESS,
                    unsubscribe=unsubscribe_links(settings), signer=dkim_signer(settings),
                    suppressions=suppression_follower.state)
    retention = Retention(store, clock, days=settings.PERSONAL_DATA_RETENTION_DAYS, purges=spec.retention,
                          on_purged=metrics.purge)
    drain = drain_seconds(retry_window)
    concurrency = max(settings.SMTP_MAX_CONNECTIONS * 2, 8)  # events (or jobs) in progress: two per connection
    wakeup = Wakeup()  # told when a job was scheduled, and when it is due
    runner = PlanRunner(service=spec.name, store=store, mailer=mailer, producer=producer, metrics=metrics,
                        tracing=tracing, on_scheduled=wakeup.scheduled)
    scheduler = None
    if spec.jobs:
        # A job's lease outlasts its longest run (SMTP retries, then recording under database trouble), so
        # another replica never takes over a job that is still sending.
        jobs = {kind: _job_runner(spec.name, runner, store, clock, function, spec.job_preloads.get(kind))
                for kind, function in spec.jobs.items()}
        scheduler = Scheduler(
            store, clock, jobs,
            gates={kind: functools.partial(gate, caught_up) for kind, gate in spec.job_gates.items()},
            wakeup=wakeup, lease=timedelta(seconds=drain + 15), concurrency=concurrency,
            on_measured=metrics.jobs_waiting,
        )
    lag = LagMeter(service=spec.name, topic=spec.router.topic, metrics=metrics, caught_up=caught_up,
                   gates_opened=scheduler.gates_opened if scheduler is not None else lambda: None)
    batches = BatchProcessor(
        spec.router, runner=runner, store=store, producer=producer, metrics=metrics, clock=clock,
        max_message_bytes=settings.KAFKA_MAX_MESSAGE_BYTES, concurrency=concurrency, tracing=tracing,
        on_revoke=caught_up.forget, after_settle=lag.measure,
    )
    intake = Intake(settings, topic=spec.router.topic, options=client_options(settings),
                    client_id=f"customersource-{spec.name}", batches=batches, drain=drain)
    # The application's broker: its life (started and stopped with the application) and the readiness ping.
    broker = KafkaBroker(settings.KAFKA_BOOTSTRAP_SERVERS, security=security(settings),
                         client_id=f"customersource-{spec.name}", description=spec.description,
                         logger=logging.getLogger(f"customersource.{spec.name}.faststream"))
    # The AsyncAPI document's broker, never connected: the input topic as a subscriber, the outputs as
    # publishers (the service consumes through its intake and produces through its outputs).
    described = KafkaBroker(settings.KAFKA_BOOTSTRAP_SERVERS, security=security(settings),
                            description=spec.description)
    _document_input(described, settings, spec.router)
    _document_outputs(described, spec)
    service = Service(
        spec=spec, settings=settings, store=store, producer=producer, pool=pool, mailer=mailer,
        suppression_follower=suppression_follower, runner=runner, retention=retention,
        metrics=metrics, clock=clock, batches=batches, caught_up=caught_up, lag=lag, broker=broker,
        intake=intake, scheduler=scheduler, drain=drain, tracing=tracing,
    )
    specification = AsyncAPI(described, title=spec.title, version="1.0.0", description=spec.description,
                             schema_version="3.0.0")
    app = AsgiFastStream(
        broker,
        asgi_routes=[
            ("/healthz", _healthz(service)),
            ("/readyz", _readyz(service)),
            ("/metrics", _metrics(service)),
            *_asyncapi(specification, _channels(spec)),
        ],
        specification=specification,
        logger=logging.getLogger(f"customersource.{spec.name}.app"),
        on_startup=[_hook(_start, service)],
        on_shutdown=[_hook(_wind_down, service)],
        after_startup=[_hook(_after_start, service)],
        after_shutdown=[_hook(_stop, service)],
    )
    prefixed = spec.prefixed(service)
    return (PrefixRoutes(app, prefixed) if prefixed else app), service


class PrefixRoutes:
    """An ASGI application: the HTTP requests under one of ``routes``' prefixes go to that route's application,
    everything else (other paths, the lifespan) to ``app``."""

    def __init__(self, app: AsgiApp, routes: Sequence[tuple[str, AsgiApp]]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for prefix, route in self.routes:
                if scope["path"].startswith(prefix):
                    await route(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _document_outputs(broker: KafkaBroker, spec: ServiceSpec) -> None:
    """The output topics, the dead letters and the audit events, as publishers in the AsyncAPI document (an output
    topic that is also the input topic is documented by its subscriber: one channel, one description)."""
    for output in spec.outputs:
        if output.topic == spec.router.topic:
            continue
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
    if NOTIFICATIONS_TOPIC in (spec.router.topic, *(output.topic for output in spec.outputs)):
        return  # documented as the service's input, or by the service itself
    broker.publisher(
        NOTIFICATIONS_TOPIC,
        title=NOTIFICATIONS_TOPIC,
        description="customersource.notification.sent.v1 / .failed.v1 / .suppressed.v1: one per final outcome "
        "of each e-mail (structured CloudEvents, key: the triggering aggregate id).",
        schema=_documented(
            f"{NOTIFICATIONS_TOPIC} event", {SENT_TYPE: NotificationOutcome, FAILED_TYPE: NotificationOutcome,
                                             SUPPRESSED_TYPE: NotificationSuppressed}
        ),
    )


READINESS_IN_METRICS_S = 2.5
"""How long /metrics waits for the readiness checks behind ``customersource_ready``."""

JOB_READS_FRESH_S = 5.0
"""How long what a scheduler pass read for its jobs may be used: a job that starts later (queued behind the
others of a large pass) reads for itself, just before it runs."""


def _job_runner(service: str, runner: PlanRunner, store: Store, clock: Clock, function: JobFunction,
                preload: Preload | None) -> PassHandler:
    """A job's plan is applied like an event's; its cause is the event that scheduled it (or the job itself).
    For a pass's jobs, the deliveries already recorded for their causes are read in one query, and what
    their function reads first (``preload``) in another; a job that starts more than
    :data:`JOB_READS_FRESH_S` after them reads its own. A job whose reads cannot be prepared (say, a payload
    without the preload's key) fails alone, when it runs. Each job is marked done in its plan's last
    transaction."""

    def cause(job: Job) -> EventRef:
        of = job.payload.get("cause") or {"id": job.job_id, "source": f"/customersource/{service}/scheduler",
                                          "type": job.kind}
        return EventRef(id=of["id"], source=of["source"], type=of["type"])

    def preload_args(job: Job) -> tuple[Any, ...] | None:
        try:
            return preload.args(job) if preload is not None else None
        except Exception:  # the job's own function meets the same problem, and fails alone
            return None

    async def prepare(claimed: Sequence[Job]) -> JobHandler:
        keys = []
        for job in claimed:
            with contextlib.suppress(Exception):  # a malformed cause fails its job alone, when it runs
                ref = cause(job)
                keys.append((ref.source, ref.id))
        # Claimed under a lease: no other attempt of these jobs is sending meanwhile (see JOB_READS_FRESH_S).
        known = await store.deliveries_of(keys)
        preloaded: dict[tuple[Any, ...], Any] = {}
        wanted = list({args: None for job in claimed if (args := preload_args(job)) is not None})
        if preload is not None and wanted:
            try:
                found = await store.read_many(preload.read_many, wanted)
                preloaded = {args: found.get(args) for args in wanted}
            except Exception:  # a row it cannot read: each job reads for itself (and the bad one fails alone)
                log.warning("a scheduler pass's preload failed; its jobs read for themselves", exc_info=True)
        prepared = time.monotonic()

        async def run(job: Job) -> None:
            ref = cause(job)
            fresh = time.monotonic() - prepared <= JOB_READS_FRESH_S
            args = preload_args(job)
            ahead = {}
            if fresh and preload is not None and args in preloaded:  # only the first job with these reads
                ahead = {(preload.read, args): preloaded.pop(args)}
            context = runner.context(ref, clock.now(), preloaded=ahead)
            with runner.tracing.job(job.kind, job.job_id):
                plan = await function(job, context)
                await runner.apply(plan, context, known=known.get((ref.source, ref.id)) if fresh else None,
                                   done=JobDone(job.job_id, context.now))

        return run

    return prepare


def _hook(step: Callable[[Service], Awaitable[None]], service: Service) -> Callable[[], Awaitable[None]]:
    async def hook() -> None:
        await step(service)

    return hook


def _document_input(broker: KafkaBroker, settings: ServiceSettings, router: EventRouter) -> None:
    """The input topic, as the subscriber of the AsyncAPI document's broker (see :mod:`shared.asyncapi`)."""
    records_type = Annotated[Any, WithJsonSchema({**router.payload_json_schema(), "title": f"{router.topic} event"})]

    async def consume(records: Any) -> None:
        raise AssertionError("never called: the document's broker is never connected")

    consume.__annotations__["records"] = records_type  # resolved here, not from a string
    consume.__doc__ = router.description
    broker.subscriber(router.topic, batch=True, group_id=settings.group_id, title=router.topic,
                      description=router.description)(consume)


async def _start(service: Service) -> None:
    applied = await service.store.migrate()
    if applied:
        log.info("schema migrated", extra={"applied": applied})
    if service.settings.ENVIRONMENT in ("development", "test"):
        topics = [service.spec.router.topic, f"{service.spec.router.topic}.dlq", NOTIFICATIONS_TOPIC]
        topics += [o.topic for o in service.spec.outputs]
        await ensure_topics(service.settings, [*topics, SUPPRESSIONS_TOPIC],
                            configs=lambda t: dict(SUPPRESSIONS_TOPIC_CONFIG) if t == SUPPRESSIONS_TOPIC else {})
    # Every suppression in force is known before the first event is consumed.
    await service.suppression_follower.catch_up()
    await service.producer.start()
    await service.intake.start()


async def _after_start(service: Service) -> None:
    async def lag_loop() -> None:
        while True:
            await asyncio.sleep(1)
            if not service.intake.running:  # nothing assigned, nothing caught up
                service.caught_up.forget()
                continue
            try:
                await service.lag.measure(service.intake)
            except Exception:
                service.caught_up.forget()
                log.warning("lag not measured", exc_info=True)

    service.tasks.append(asyncio.create_task(lag_loop(), name="lag"))
    service.tasks.append(asyncio.create_task(service.suppression_follower.follow(), name="suppressions"))
    service.tasks.append(asyncio.create_task(service.retention.run(), name="retention"))
    if service.scheduler is not None:
        service.tasks.append(asyncio.create_task(service.scheduler.run(), name="scheduler"))
    for background in service.spec.background:
        task = asyncio.create_task(background(service), name=getattr(background, "__name__", "background"))
        task.add_done_callback(functools.partial(_background_ended, service))
        service.tasks.append(task)
    service.started = True
    log.info("service started", extra={"topic": service.spec.router.topic, "group_id": service.settings.group_id})


def _background_ended(service: Service, task: asyncio.Task[None]) -> None:
    """A background task (the deliverability service's bounce listener) runs as long as the service: one that
    failed leaves the service not ready (/readyz, the CustomerSourceNotReady alert), and says why."""
    if task.cancelled() or task.exception() is None:
        return
    service.started = False
    log.error("a background task failed: the service is not ready", exc_info=task.exception(),
              extra={"task": task.get_name()})


async def _wind_down(service: Service) -> None:
    """Before the broker stops: let the batch in progress finish its records and commit, rather
    than be cancelled between an SMTP acceptance and its record; then the intake leaves the group."""
    service.started = False
    service.caught_up.close()  # nothing counts as caught up from now on
    for task in service.tasks:  # the scheduler and the lag loop stop before the consumer does
        task.cancel()
    service.batches.stop()
    try:
        await asyncio.wait_for(service.batches.settled(), service.drain)
    except TimeoutError:
        log.warning("batch still running at shutdown")
    await service.intake.stop()


async def _stop(service: Service) -> None:
    service.started = False
    for task in service.tasks:
        task.cancel()
    for task in service.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await service.pool.close()
    await service.suppression_follower.stop()
    await service.producer.stop()
    await service.store.close()
    service.tracing.shutdown()  # the spans still buffered are exported
    log.info("service stopped")


def _json(status: int, body: Mapping[str, Any]) -> AsgiResponse:
    return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})


def _channels(spec: ServiceSpec) -> dict[str, asyncapi.Channel]:
    """What the contract says of each topic's records beyond their payload: headers and key."""
    channels = {NOTIFICATIONS_TOPIC: asyncapi.Channel(asyncapi.OUR_HEADERS, "the aggregate id of the triggering event")}
    channels.update({output.topic: asyncapi.Channel(asyncapi.OUR_HEADERS, output.key) for output in spec.outputs})
    channels.update({  # the input topic as others publish it (the deliverability service's is the notifications')
        spec.router.topic: asyncapi.Channel(asyncapi.CLOUDEVENTS_HEADERS, spec.router.key),
        f"{spec.router.topic}.dlq": asyncapi.Channel(asyncapi.DLQ_HEADERS, "the original record's key"),
    })
    return channels


def _asyncapi(specification: AsyncAPI, channels: Mapping[str, asyncapi.Channel]) -> list[tuple[str, Any]]:
    """``/asyncapi.json`` (FastStream's document, completed: see :mod:`shared.asyncapi`) and its page."""
    document: dict[str, Any] = {}

    def built() -> dict[str, Any]:  # once, on the first request: the broker has all its publishers then
        if not document:
            document.update(asyncapi.complete(json.loads(specification.to_specification().to_json()), channels))
        return document

    @get(include_in_schema=False)
    async def as_json(scope: Any) -> AsgiResponse:
        return _json(200, built())

    @get(include_in_schema=False)
    async def as_page(scope: Any) -> AsgiResponse:
        return AsgiResponse(asyncapi.page(built()), 200, headers={
            "content-type": "text/html; charset=utf-8",
            "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'"})

    return [("/asyncapi.json", as_json), ("/asyncapi", as_page)]


def _healthz(service: Service) -> Any:
    """Liveness: the process runs, its consumer is not stalled (shared.intake.STALLED_AFTER) and its producer
    not broken (:attr:`shared.kafka.Producer.broken`): a Kafka client that failed inside recovers only in a new
    process."""

    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        if service.intake.polls.stalled:
            return _json(503, {"status": "stalled", "failed_polls": service.intake.polls.failed_in_a_row})
        if service.producer.broken is not None:
            return _json(503, {"status": "producer_broken"})
        return _json(200, {"status": "ok"})

    return healthz


async def readiness(service: Service) -> dict[str, bool]:
    """What /readyz answers, and the ``customersource_ready`` gauge says at each scrape."""
    broker_ok = bool(await service.broker.ping(timeout=2.0))
    store_ok = await service.store.ping()
    suppressions_ok = service.suppression_follower.caught_up
    smtp_ok = service.pool.reachable  # the last session tried opened: no probe of our own
    consuming = not service.intake.polls.stalled
    producing = service.producer.broken is None
    return {"ready": (service.started and broker_ok and store_ok and suppressions_ok and smtp_ok and consuming
                      and producing),
            "started": service.started, "broker": broker_ok, "store": store_ok, "suppressions": suppressions_ok,
            "smtp": smtp_ok, "consuming": consuming, "producing": producing}


def _readyz(service: Service) -> Any:
    @get(include_in_schema=False)
    async def readyz(scope: Any) -> AsgiResponse:
        status = await readiness(service)
        return _json(200 if status["ready"] else 503, status)

    return readyz


def _metrics(service: Service) -> Any:
    @get(include_in_schema=False)
    async def metrics(scope: Any) -> AsgiResponse:
        # Bounded: a database or broker that does not answer must not make the scrape (and every series
        # with it) time out; it shows as not ready.
        try:
            ready = (await asyncio.wait_for(readiness(service), READINESS_IN_METRICS_S))["ready"]
        except Exception:  # TimeoutError included
            ready = False
        service.metrics.ready.labels(service.spec.name).set(1 if ready else 0)
        return AsgiResponse(generate_latest(service.metrics.registry), 200,
                            headers={"content-type": CONTENT_TYPE_LATEST})

    return metrics

