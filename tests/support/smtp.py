"""A real SMTP server (aiosmtpd) for tests: records what it accepts, and can refuse or go away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from ops.broker import free_port
from tests.support.waiting import wait_until


@dataclass
class Received:
    envelope_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


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

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse_code is not None and (self.refuse_for is None or self.refuse_for(address)):
            return f"{self.refuse_code} {'Try again later' if self.refuse_code < 500 else 'No such user'}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mail_options.append(list(envelope.mail_options))
        if self.refuse_data is not None:
            return f"{self.refuse_data} {'Try again later' if self.refuse_data < 500 else 'Message refused'}"
        held = [a for a in envelope.rcpt_tos if self.hold_for is not None and self.hold_for(a)]
        if held:
            self.holding += held
            while self.hold_for is not None and any(self.hold_for(a) for a in held):
                await asyncio.sleep(0.02)
            return "451 Held by the test, not accepted"
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.handler = RecordingHandler()
        self._controller: Controller | None = None

    def start(self) -> SmtpServer:
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10)
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
