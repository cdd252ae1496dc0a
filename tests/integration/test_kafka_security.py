"""KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE reach every Kafka client of a service (the topic
admin, the consumer, the producer, the suppressions follower): a service given only Apache Kafka's SASL_SSL
listener (PLAIN, a certificate from a throwaway CA named by KAFKA_SSL_CAFILE) consumes, sends and publishes;
with a wrong password it stops at start, saying that authentication failed, and never writes the password."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from ops.broker import ApacheKafkaBroker, SaslSslListener, apache_kafka_available, free_port
from services.invitations.contracts import ADDED, ISSUED, TOPIC
from tests.conftest import unavailable
from tests.support.kafka import Publisher, Reader, cloudevent
from tests.support.process import ServiceStarter
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

USER, PASSWORD = "customersource", "kafka-password-4Fj"
INVITATIONS = "customersource.invitations"


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApacheKafkaBroker, str, Path]]:
    """Apache Kafka with its plaintext listener (for the test's own clients) and a SASL_SSL one; the secure
    listener's address and the CA file."""
    why = apache_kafka_available()
    if why is not None:
        unavailable("Apache Kafka", why)
    folder = tmp_path_factory.mktemp("secure-kafka")
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    keystore = folder / "keystore.pem"
    # Kafka's PEM keystore reads PKCS#8 keys only (trustme writes the SEC 1 form).
    key = serialization.load_pem_private_key(certificate.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    keystore.write_bytes(pkcs8 + b"".join(p.bytes() for p in certificate.cert_chain_pems))
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    listener = SaslSslListener(port=free_port(), keystore=keystore, users={USER: PASSWORD})
    broker = ApacheKafkaBroker(folder / "kafka", sasl_ssl=listener).start()
    try:
        yield broker, f"127.0.0.1:{listener.port}", ca_file
    finally:
        broker.stop()


def secure_settings(ca_file: Path, password: str) -> dict[str, str]:
    return {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": USER,
            "KAFKA_SASL_PASSWORD": password, "KAFKA_SSL_CAFILE": str(ca_file)}


async def test_a_service_on_the_sasl_ssl_listener_consumes_sends_and_publishes(
        secure_kafka: tuple[ApacheKafkaBroker, str, Path], smtp: SmtpServer, tmp_path: Path) -> None:
    broker, secure, ca_file = secure_kafka
    starter = ServiceStarter(bootstrap=secure, smtp_port=smtp.port, folder=tmp_path, token=uuid.uuid4().hex[:10],
                             test_bootstrap=broker.bootstrap)
    try:
        service = starter("invitations", **secure_settings(ca_file, PASSWORD))
        await service.wait_ready()  # it created its topics, read the suppressions and joined its group
        data = professional_added()
        async with Reader(broker.bootstrap, INVITATIONS) as reader, Publisher(broker.bootstrap) as publisher:
            await publisher.structured(TOPIC, data["professional_id"], cloudevent(ADDED, data))
            await smtp.wait_for(lambda: len(smtp.to(data["email"])) == 1)
            await reader.wait_for(lambda: len(reader.events(INVITATIONS, ISSUED)) == 1)
        assert PASSWORD not in service.log_path.read_text(errors="replace")
    finally:
        starter.stop_all()


async def test_a_wrong_password_stops_the_start_saying_why_and_is_never_logged(
        secure_kafka: tuple[ApacheKafkaBroker, str, Path], smtp: SmtpServer, tmp_path: Path) -> None:
    broker, secure, ca_file = secure_kafka
    starter = ServiceStarter(bootstrap=secure, smtp_port=smtp.port, folder=tmp_path, token=uuid.uuid4().hex[:10],
                             test_bootstrap=broker.bootstrap)
    wrong = "wrong-password-Zq9"
    try:
        service = starter("invitations", **secure_settings(ca_file, wrong))
        assert service.process is not None
        await wait_until(lambda: service.process is not None and service.process.poll() is not None, 60,
                         state=service.log_tail)
        assert service.process.returncode != 0
        log = service.log_path.read_text(errors="replace")
        assert "Authentication failed: Invalid username or password" in log
        assert wrong not in log and "Zq9" not in log
    finally:
        starter.stop_all()
