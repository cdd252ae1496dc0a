"""``python -m services.<name> [migrate]``: load settings, configure logs, run or migrate."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import uvicorn

from shared.app import AsgiApp
from shared.logs import configure_logging
from shared.settings import ServiceSettings, database_url, load_settings
from shared.store import Migration, Store

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)

USAGE = "usage: python -m services.{name} [migrate]"

EVENT_LOOP = "asyncio"
"""The services' event loop (uvicorn's name for it): the standard library's. On uvloop, a write to a connection
the broker has reset raises ``RuntimeError`` where asyncio's transport drops it and lets the read side report the
reset; aiokafka catches only ``OSError`` there (aio-libs/aiokafka#1038), so after a broker restart its consumer's
heartbeat task, or its producer's sender task, could die for good and the service stop consuming. uvloop's gain,
~15-20% more events/s when it was adopted, is now within this machine's noise (~3% less CPU per e-mail over
eight paired bench runs) since the store path is batched. tests/unit/test_event_loop.py shows the difference."""

GC_THRESHOLDS = (50_000, 20, 100)
"""The garbage collector's thresholds in a running service (see :func:`main`)."""


def secret_values(settings: ServiceSettings) -> list[str]:
    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            values.append(value.get_secret_value())
        elif isinstance(value, (list, tuple)):
            values += [v.get_secret_value() for v in value if hasattr(v, "get_secret_value")]
    return values


def _listen(config: uvicorn.Config) -> socket.socket:
    """The socket of the server's host and port (HTTP_PORT), bound (uvicorn listens on it); a port that cannot be
    bound ends the process (status 3, uvicorn's for a failed start-up), saying which setting to change."""
    port = config.port
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((config.host, port))
    except OSError as exc:
        listening.close()
        logging.getLogger("customersource.app").error(
            f"cannot listen on HTTP_PORT={port}: {exc.strerror or exc} (another process has it?)")
        raise SystemExit(3) from None
    return listening


def main(
    *,
    name: str,
    settings_class: type[SettingsT],
    create_app: Callable[[SettingsT], AsgiApp],
    migrations: Sequence[Migration],
    argv: Sequence[str] | None = None,
) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["migrate"]):
        print(USAGE.format(name=name), file=sys.stderr)
        raise SystemExit(2)
    settings = load_settings(settings_class, name)
    configure_logging(name, secrets=secret_values(settings))
    if args == ["migrate"]:
        store = Store(database_url(settings), component=name, migrations=migrations)

        async def migrate() -> list[str]:
            try:
                return await store.migrate()
            finally:
                await store.close()

        applied = asyncio.run(migrate())
        print(f"{name}: " + (", ".join(applied) + " applied" if applied else "schema up to date"))
        return
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="0.0.0.0",  # noqa: S104 - probes and scrapers reach the container from outside
        port=settings.HTTP_PORT,
        lifespan="on",
        loop=EVENT_LOOP,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    # The HTTP port is bound before anything starts: a port in use stops the process at once (uvicorn's exit status
    # 3), not once it has migrated and joined its consumer group (a rebalance for nothing), and no connection start-up
    # opens meanwhile (to the broker, the database) can be given that port by the system.
    listening = _listen(config)
    # What start-up built (modules, schemas, templates, the engine) lives as long as the process. Frozen
    # out of the collector's reach, it is no longer walked by every full collection, each of which took
    # tens of milliseconds in the middle of a batch.
    gc.collect()
    gc.freeze()
    # Nearly everything an event allocates is freed by reference counting as soon as it is done with: the
    # collector's default pace (a young-generation pass every 700 net allocations) cost ~40 µs of CPU per
    # event for almost no garbage. At 50,000 it runs about once per 10,000 events (measured: 1.7 µs per
    # event), and what cyclic garbage there is (a few tens of MB at most) waits a little longer.
    gc.set_threshold(*GC_THRESHOLDS)
    server.run(sockets=[listening])
    if not getattr(server, "started", False):
        logging.getLogger("customersource.app").error("service did not start")
        raise SystemExit(1)
