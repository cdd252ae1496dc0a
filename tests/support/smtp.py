"""A real SMTP server (aiosmtpd) for tests: records what it accepts, and can refuse or go away."""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from ops.broker import free_port
from tests.support.waiting import wait_until


@dataclass
class Received:
    envelope_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool = False  # the session was encrypted by STARTTLS (an implicit TLS server speaks nothing else)
    login: str | None = None  # the user the session authenticated as

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @functools.cached_property
    def event_id(self) -> str | None:
        """The ``X-CustomerSource-Event-Id`` of the message, its headers read once (a test that counts thousands
        of messages would otherwise spend the CPU of its process, which the SMTP server shares, parsing them)."""
        value = BytesHeaderParser(policy=policy.default).parsebytes(self.data)["X-CustomerSource-Event-Id"]
        return None if value is None else str(value)


class RecordingHandler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refuse_code: int | None = None  # e.g. 451 (transient) or 550 (permanent)
        self.refuse_for: Callable[[str], bool] | None = None
        # Messages to these recipients are held at DATA (never accepted) until hold_for is cleared;
        # then refused with 451. Lets a test kill a client while its message is in flight.
        self.hold_for: Callable[[str], bool] | None = None
        self.holding: list[str] = []
        self.refuse_data: int | None = None  # refuse the message at the end of DATA with this code
        self.mail_options: list[list[str]] = []
        self.delay = 0.0  # seconds each message takes to be accepted (a slower relay: a stream lasts longer)
        self.flaky = 0.0  # the share of RCPTs answered flaky_code at random (a busy relay): each a retry
        self.flaky_code = 451  # or 421: the server then closes the connection, as RFC 5321 has it (4.2.2)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse_code is not None and (self.refuse_for is None or self.refuse_for(address)):
            return f"{self.refuse_code} {'Try again later' if self.refuse_code < 500 else 'No such user'}"
        if self.flaky and random.random() < self.flaky:
            if self.flaky_code == 421:  # closed once the reply is written (it is, before the next turn of the loop)
                asyncio.get_running_loop().call_soon(server.transport.close)
                return "421 4.3.2 Service not available, closing transmission channel"
            return f"{self.flaky_code} 4.3.2 Busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mail_options.append(list(envelope.mail_options))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse_data is not None:
            return f"{self.refuse_data} {'Try again later' if self.refuse_data < 500 else 'Message refused'}"
        held = [a for a in envelope.rcpt_tos if self.hold_for is not None and self.hold_for(a)]
        if held:
            self.holding += held
            while self.hold_for is not None and any(self.hold_for(a) for a in held):
                await asyncio.sleep(0.02)
            return "451 Held by the test, not accepted"
        login = session.auth_data if isinstance(session.auth_data, str) else None  # what _authenticate kept
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content or envelope.content, tls=session.ssl is not None,
                                      login=login))
        return "250 Message accepted for delivery"


class SmtpServer:
    """``tls``: the server's certificate, offered with STARTTLS (then required before MAIL and AUTH), or from
    the first byte with ``implicit_tls``. ``credentials``: the one user and password AUTH accepts (then
    required before MAIL)."""

    def __init__(self, port: int | None = None, *, tls: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 credentials: tuple[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.handler = RecordingHandler()
        self._controller: Controller | None = None
        self._tls = tls
        self._implicit_tls = implicit_tls
        self._credentials = credentials
        self.failed_logins: list[str] = []

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == self._credentials:
            return AuthResult(success=True, auth_data=data.login.decode())
        self.failed_logins.append(data.login.decode() if isinstance(data, LoginPassword) else mechanism)
        return AuthResult(success=False, handled=False)

    def start(self) -> SmtpServer:
        options: dict[str, Any] = {}
        if self._tls is not None and self._implicit_tls:
            options["ssl_context"] = self._tls
        elif self._tls is not None:
            options.update(tls_context=self._tls, require_starttls=True)
        if self._credentials is not None:
            # Over implicit TLS the whole session is encrypted, which aiosmtpd does not see: it only knows of STARTTLS.
            options.update(authenticator=self._authenticate, auth_required=True,
                           auth_require_tls=self._tls is not None and not self._implicit_tls)
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10,
                                      **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def messages(self) -> list[Received]:
        return self.handler.received

    def to(self, address: str) -> list[EmailMessage]:
        return [r.message for r in self.handler.received if address.lower() in (a.lower() for a in r.rcpt_tos)]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        await wait_until(condition, timeout, state=lambda: f"{len(self.messages)} messages received")
