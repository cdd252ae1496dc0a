"""The servers the tests and ``make run`` start for themselves (Apache Kafka, Tansu, PostgreSQL) leave
nothing behind, even when the process that started them is SIGKILLed: a killed test run leaves no orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from ops.broker import apache_kafka_available
from tests.conftest import unavailable
from tests.support.process import ROOT
from tests.support.waiting import wait_until

STARTER = textwrap.dedent("""
    import sys, tempfile, time
    from pathlib import Path
    from ops.broker import ApacheKafkaBroker, TansuBroker
    from ops.postgres import LocalPostgres
    servers = [ApacheKafkaBroker(Path(tempfile.mkdtemp()) / "kafka").start(), TansuBroker().start(),
               LocalPostgres().start()]
    print(" ".join(str(s.process.pid) for s in servers), flush=True)
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead, waiting for its parent to reap it
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_servers_die_with_the_process_that_started_them() -> None:
    why = apache_kafka_available()
    if why is not None:
        unavailable("Apache Kafka", why)
    starter = subprocess.Popen([sys.executable, "-c", STARTER], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert starter.stdout is not None
        pids = [int(pid) for pid in starter.stdout.readline().split()]
        assert len(pids) == 3 and all(alive(pid) for pid in pids), starter.poll()
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    await wait_until(lambda: not any(alive(pid) for pid in pids), 30,
                     state=lambda: f"still alive: {[pid for pid in pids if alive(pid)]}")
