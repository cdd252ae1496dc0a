"""SMTP delivery over a small pool of reused aiosmtplib connections.

A send ends in one of three ways: accepted (``Accepted``), refused for good (5xx: ``Refused``), or
not yet (connection errors and 4xx: :class:`TransientSmtpError`, retried by the caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib
from aiosmtplib import SMTPStatus

from shared.mail.message import OutgoingMail

log = logging.getLogger("customersource.smtp")


@dataclass(frozen=True, slots=True)
class Accepted:
    code: int
    response: str


@dataclass(frozen=True, slots=True)
class Refused:
    code: int
    response: str


class TransientSmtpError(Exception):
    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


class Pool(Protocol):
    """The port through which the mailer sends (an :class:`SmtpPool`, or a test's recording double)."""

    async def send(self, mail: OutgoingMail) -> Accepted | Refused:
        """Send one message; a refusal is returned, a transient failure raised as TransientSmtpError."""

    @property
    def reachable(self) -> bool:
        """Whether the server opened the last session tried (True before any): what /readyz says of SMTP."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    tls: str = "none"  # none | starttls | tls
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    max_connections: int = 16
    timeout: float = 30.0


class SmtpPool:
    """At most ``max_connections`` connections, kept open and reused; broken ones are dropped."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(config.max_connections)
        self._reachable = True
        self._tls_context: ssl.SSLContext | None = None
        if config.tls != "none":
            self._tls_context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self._config
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            timeout=c.timeout,
            use_tls=c.tls == "tls",
            start_tls=True if c.tls == "starttls" else False,
            tls_context=self._tls_context,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # before the first MAIL (connect's STARTTLS may have said it)
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            if c.username and c.password:
                await client.login(c.username, c.password)
        except BaseException:
            client.close()  # never leak the socket of a half-opened session
            raise
        return client

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        async with self._slots:
            if self._idle:
                client = self._idle.pop()
            else:
                try:
                    client = await self._connect()
                except Exception as exc:
                    # Connecting, greeting, EHLO, STARTTLS or AUTH failing is the server's (or our
                    # configuration's) state, not this message's fault: retried, never a final failure.
                    self._reachable = False
                    raise TransientSmtpError(f"cannot open an SMTP session: {exc.__class__.__name__}: {exc}") from None
                self._reachable = True
            healthy = False
            try:
                yield client
                healthy = True
            finally:
                if healthy and client.is_connected:
                    self._idle.append(client)
                else:
                    with contextlib.suppress(Exception):
                        client.close()

    async def send(self, mail: OutgoingMail) -> Accepted | Refused:
        try:
            async with self._connection() as client:
                try:
                    async with asyncio.timeout(self._config.timeout) as deadline:
                        response = await self._transaction(client, mail, deadline)
                except aiosmtplib.SMTPSenderRefused as exc:
                    if exc.code == 552:  # MAIL FROM ... SIZE=: this message is too large, for good
                        return Refused(code=exc.code, response=f"{exc.code} {exc.message}")
                    # Otherwise SMTP_FROM or the relay's configuration, not this message: retried.
                    raise TransientSmtpError(f"sender refused: {exc.code} {exc.message}", code=exc.code) from None
                except aiosmtplib.SMTPResponseException as exc:
                    # A final refusal keeps the connection (its envelope was reset); a transient one drops it.
                    return self._classify(exc.code, exc.message)
                return Accepted(code=response.code, response=response.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientSmtpError(f"{exc.__class__.__name__}: {exc}") from None

    async def _transaction(self, client: aiosmtplib.SMTP, mail: OutgoingMail,
                           deadline: asyncio.Timeout) -> aiosmtplib.SMTPResponse:
        """MAIL, RCPT, DATA for one recipient, on a connection this send holds alone.

        Our messages are built ready for the wire (:class:`OutgoingMail`: CRLF line endings, dot-stuffed,
        plain ASCII addresses, their RFC 1870 size known), so the content is written as it is: aiosmtplib's
        ``mail``/``rcpt``/``data`` would parse both addresses again and rewrite the line endings and dot-stuff
        every message, two regular-expression passes over it (together 8 % of the service's CPU). The
        commands still go through ``execute_command``, which refuses control characters in them. A refusal
        resets the envelope (RSET) before the connection is used again.

        The timeout (``SmtpConfig.timeout``) is a deadline per phase, ``deadline`` moved on between them, not one
        per command (``asyncio.wait_for`` around each of the four replies cost more than the parsing of all
        four): the envelope (MAIL, RCPT, DATA), the content and its reply (which may come after the server has
        scanned it), and the reset after a refusal each have the whole timeout. A transaction that times out
        leaves its connection closed (its replies could no longer be paired)."""
        loop = asyncio.get_running_loop()
        size = [b"SIZE=%d" % mail.size] if client.supports_extension("size") else []
        try:
            answer = await client.execute_command(b"MAIL", b"FROM:<%s>" % mail.sender.encode("ascii"), *size,
                                                  timeout=None)
            if answer.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPSenderRefused(answer.code, answer.message, mail.sender)
            answer = await client.execute_command(b"RCPT", b"TO:<%s>" % mail.recipient.encode("ascii"), timeout=None)
            if answer.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                raise aiosmtplib.SMTPRecipientRefused(answer.code, answer.message, mail.recipient)
            answer = await client.execute_command(b"DATA", timeout=None)
            if answer.code != SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(answer.code, answer.message)
            protocol = client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
            deadline.reschedule(loop.time() + self._config.timeout)
            protocol.write(mail.data + b".\r\n")  # one write (a system call): the copy costs far less
            answer = await protocol.read_response(timeout=None)
            if answer.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPDataError(answer.code, answer.message)
            return answer
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == SMTPStatus.domain_unavailable:  # 421: the server is closing the session
                client.close()
                raise
            deadline.reschedule(loop.time() + self._config.timeout)
            with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
                await client.rset()
            raise

    @staticmethod
    def _classify(code: int, message: str) -> Refused:
        if 400 <= code < 500 or code < 200:
            raise TransientSmtpError(f"{code} {message}", code=code)
        return Refused(code=code, response=f"{code} {message}")

    @property
    def reachable(self) -> bool:
        return self._reachable

    async def close(self) -> None:
        idle, self._idle = self._idle, []

        async def quit(client: aiosmtplib.SMTP) -> None:
            try:
                await asyncio.wait_for(client.quit(), 5)
            except Exception:
                client.close()

        await asyncio.gather(*(quit(c) for c in idle))
