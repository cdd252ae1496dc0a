"""``make run``: the whole system on one machine with embedded defaults.

A local broker (Tansu by default, which starts at once; Apache Kafka itself with ``--broker apache-kafka``,
``make run BROKER=apache-kafka``; neither when KAFKA_BOOTSTRAP_SERVERS points at a cluster), the mail
catcher with its web inbox, and every service as its own process with SQLite under ``var/`` and a
generated development secret. Publishes a short demo unless ``--no-demo``; Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

from ops.broker import ApacheKafkaBroker, Broker, TansuBroker, free_port
from ops.console import Console
from ops.contract import PORTS, kafka_options
from ops.demo import TOPICS, publish_demo, services
from ops.mailcatcher import MailCatcher
from ops.topics import topic_configs
from shared.kafka import create_missing_topics

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
RUNNING = "make-run.pid"
"""Held locked (``flock``) by the ``make run`` that uses the folder, with its process id: the kernel drops the
lock when that process ends, however it ends, so a lock is never left behind."""


def claim(var: Path) -> IO[str]:
    """The folder ``var`` for this run alone, as long as the returned file stays open; a second ``make run``
    in the same clone stops here, before it deletes the first one's databases and inbox."""
    var.mkdir(exist_ok=True)
    held = open(var / RUNNING, "a+")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.seek(0)
        holder = held.read().strip() or "another process"
        held.close()
        raise SystemExit(f"make run is already running from this folder (process {holder}, using {var}): "
                         f"stop it first (Ctrl-C where it runs), or run from another clone") from None
    held.truncate(0)
    held.write(f"{os.getpid()}\n")
    held.flush()
    return held


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def dev_secret(var: Path, name: str) -> str:
    """A development secret, generated on the first run and kept in ``var/dev-<name>-secret``."""
    path = var / f"dev-{name}-secret"
    if not path.is_file():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def run(args: argparse.Namespace, var: Path = VAR) -> None:
    with claim(var):
        await _run(args, var)


def forget_the_last_run(var: Path) -> None:
    """The local broker starts empty: so do the services' databases, the inbox and Apache Kafka's logs, so
    that what the console shows is this run's."""
    for stale in [*var.glob("*.db"), *var.glob("*.db-*"), *var.glob("*.lock")]:
        stale.unlink()
    shutil.rmtree(var / "mail", ignore_errors=True)
    shutil.rmtree(var / "apache-kafka", ignore_errors=True)


async def _run(args: argparse.Namespace, var: Path) -> None:
    started = time.monotonic()
    broker: Broker | None = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        forget_the_last_run(var)
        if args.broker == "apache-kafka":
            print("starting Apache Kafka (the first time, its jars are fetched from Maven Central)...")
            broker = ApacheKafkaBroker(var / "apache-kafka", port=port_or_free(9092)).start()
        else:
            broker = TansuBroker(port=port_or_free(9092), log_path=var / "broker.log").start()
        bootstrap = broker.bootstrap
    smtp_port, console_port, bounce_port = port_or_free(1025), port_or_free(8025), port_or_free(2525)
    catcher = MailCatcher(var / "mail", smtp_port, bounces_to=("127.0.0.1", bounce_port))
    await catcher.start()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    console: Console | None = None
    try:
        names = services()
        topics = [t for s in names for t in TOPICS[s]]
        inputs = [TOPICS[s][0] for s in names]
        await create_missing_topics(kafka_options(bootstrap),
                                    topics + [f"{t}.dlq" for t in inputs] + ["customersource.notifications"],
                                    configs=topic_configs)
        http_ports = {name: port_or_free(PORTS[name]) for name in names}
        for name in names:
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "KAFKA_SESSION_TIMEOUT_MS": "6000",
                "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
                "KAFKA_FETCH_MAX_WAIT_MS": "50",
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(smtp_port),
                "SMTP_FROM": "Microsoft Dynamics CustomerSource <customersource@customersource.example>",
                "DATABASE_URL": f"sqlite+aiosqlite:///{var}/{name}.db",
                "HTTP_PORT": str(http_ports[name]),
                "PORTAL_BASE_URL": "https://customersource.example",
                "BUSINESS_CENTER_URL": "https://businesscenter.example",
                "HELP_EMAIL": "itmbssup@customersource.example",
                "INVITATION_SECRET": dev_secret(var, "invitation"),
                "SUPPORT_ESCALATION_EMAIL": "dynamics-support@customersource.example",
                "SMTP_BOUNCE_ADDRESS": "bounces@customersource.example",  # VERP: the catcher's bounces name the e-mail
                "BOUNCE_SMTP_PORT": str(bounce_port),  # read by the deliverability service only
                # One-click unsubscribe links in the reminders and digests, to the deliverability service's page.
                **({"UNSUBSCRIBE_BASE_URL": f"http://127.0.0.1:{http_ports['deliverability']}",
                    "UNSUBSCRIBE_SECRET": dev_secret(var, "unsubscribe")} if "deliverability" in http_ports else {}),
                "ENVIRONMENT": "development",
            }
            log = open(var / f"{name}.log", "ab")
            processes[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env,
                                               stdout=log, stderr=subprocess.STDOUT)
        console = Console(catcher.box, port=console_port, kafka_options=kafka_options(bootstrap),
                          services={name: f"http://127.0.0.1:{port}" for name, port in http_ports.items()})
        await console.start()
        while not all(ready(p) for p in http_ports.values()):
            for name, process in processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited ({process.returncode}); see var/{name}.log")
            await asyncio.sleep(0.2)
        # Where the services listen, for `customersource-ops lag` run from this folder.
        (var / "services.json").write_text(json.dumps({
            "broker": bootstrap, "services": {n: f"http://127.0.0.1:{p}" for n, p in http_ports.items()}}))
        print(f"\nCustomerSource notifications are running ({time.monotonic() - started:.1f} s to start):")
        where = {"tansu": " (local Tansu, in memory)", "apache-kafka": " (local Apache Kafka, logs in var/apache-kafka)"}
        print(f"  broker         {bootstrap}" + (where[args.broker] if broker else ""))
        print(f"                 customersource-ops run from this folder uses it; elsewhere: "
              f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        print(f"  console        {console.url}   inbox, escalations, dead letters, services (SMTP on "
              f"127.0.0.1:{smtp_port}, every message kept in var/mail; any address under .invalid bounces)")
        print(f"  bounces        127.0.0.1:{bounce_port}   the deliverability service's bounce listener")
        for name, port in http_ports.items():
            print(f"  {name:<14} http://127.0.0.1:{port}/asyncapi  /metrics  /readyz   log: var/{name}.log")
        if not args.no_demo:
            count = await publish_demo(bootstrap)
            before = len(catcher.box.names())
            deadline = time.monotonic() + 30
            while len(catcher.box.names()) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            print(f"\nPublished {count} demo events (four of them end as dead letters, on purpose; one invitation "
                  f"bounces, see `customersource-ops suppressions list`);"
                  f" first e-mail in the inbox {time.monotonic() - started:.1f} s after start.")
        print("\nCtrl-C stops everything.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        print("\nstopping...")
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        if console is not None:
            await console.stop()
        await catcher.stop()
        if broker:
            broker.stop()
        print("stopped.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-demo", action="store_true", help="do not publish the demo events")
    parser.add_argument("--broker", choices=["tansu", "apache-kafka"], default="tansu",
                        help="the local broker (default tansu: it starts at once; apache-kafka needs a JDK 17+ and "
                             "Maven the first time); ignored when KAFKA_BOOTSTRAP_SERVERS is set")
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:  # Ctrl-C before the system was up: everything was stopped on the way out
        pass


if __name__ == "__main__":
    main()
