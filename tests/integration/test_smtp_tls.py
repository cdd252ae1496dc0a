"""The SMTP pool over TLS (STARTTLS and implicit TLS) with authentication, against aiosmtpd with a
certificate from a throwaway CA: the CA in SMTP_CA_FILE is what the server's certificate is checked
against, a certificate it does not vouch for is refused, and nothing is ever sent in clear when TLS is
asked for."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from shared.mail.message import OutgoingMail
from shared.mail.smtp import Accepted, SmtpConfig, SmtpPool, TransientSmtpError
from tests.support.smtp import SmtpServer

MAIL = OutgoingMail(sender="noreply@customersource.example", recipient="jane@contoso.example",
                    data=b"Subject: x\r\n\r\nhello\r\n", message_id="m@x")
USER, PASSWORD = "customersource", "correct horse battery staple"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def certificate(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 signed by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def serve() -> Iterator[list[SmtpServer]]:
    started: list[SmtpServer] = []
    yield started
    for server in started:
        server.stop()


def start(started: list[SmtpServer], **options: object) -> SmtpServer:
    server = SmtpServer(**options).start()  # type: ignore[arg-type]
    started.append(server)
    return server


async def send(config: SmtpConfig) -> Accepted:
    pool = SmtpPool(config)
    try:
        result = await pool.send(MAIL)
        assert isinstance(result, Accepted), result
        return result
    finally:
        await pool.close()


async def refused(config: SmtpConfig) -> str:
    pool = SmtpPool(config)
    try:
        with pytest.raises(TransientSmtpError) as raised:
            await pool.send(MAIL)
        return str(raised.value)
    finally:
        await pool.close()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd knows only of STARTTLS
@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_sent_encrypted_checked_against_the_ca_file_and_authenticated(
        mode: str, ca: trustme.CA, ca_file: Path, serve: list[SmtpServer]) -> None:
    server = start(serve, tls=certificate(ca), implicit_tls=mode == "tls", credentials=(USER, PASSWORD))
    await send(SmtpConfig(host="127.0.0.1", port=server.port, tls=mode, ca_file=ca_file, username=USER,
                          password=PASSWORD))
    [received] = server.messages
    assert received.login == USER
    assert received.tls or mode == "tls"  # an implicit TLS server speaks nothing but TLS


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_a_certificate_the_ca_file_does_not_vouch_for_is_refused(
        mode: str, ca_file: Path, serve: list[SmtpServer]) -> None:
    server = start(serve, tls=certificate(trustme.CA()), implicit_tls=mode == "tls")
    error = await refused(SmtpConfig(host="127.0.0.1", port=server.port, tls=mode, ca_file=ca_file))
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert server.messages == []


async def test_without_the_ca_file_the_system_trust_store_refuses_a_private_ca(
        ca: trustme.CA, serve: list[SmtpServer]) -> None:
    """SMTP_CA_FILE is what made the private CA's certificate acceptable above."""
    server = start(serve, tls=certificate(ca))
    assert "CERTIFICATE_VERIFY_FAILED" in await refused(SmtpConfig(host="127.0.0.1", port=server.port,
                                                                   tls="starttls"))
    assert server.messages == []


async def test_starttls_asked_for_but_not_offered_sends_nothing_in_clear(
        ca_file: Path, serve: list[SmtpServer]) -> None:
    server = start(serve)  # a plain server: no STARTTLS in its EHLO
    error = await refused(SmtpConfig(host="127.0.0.1", port=server.port, tls="starttls", ca_file=ca_file))
    assert "STARTTLS" in error
    assert server.messages == []


async def test_a_wrong_password_is_retried_later_and_never_written_in_the_error(
        ca: trustme.CA, ca_file: Path, serve: list[SmtpServer]) -> None:
    server = start(serve, tls=certificate(ca), credentials=(USER, PASSWORD))
    error = await refused(SmtpConfig(host="127.0.0.1", port=server.port, tls="starttls", ca_file=ca_file,
                                     username=USER, password="wrong password 7Kq"))
    assert "7Kq" not in error and PASSWORD not in error
    assert set(server.failed_logins) == {USER} and server.messages == []  # each AUTH mechanism tried, refused
