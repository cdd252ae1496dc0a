"""The embedded mail catcher: an SMTP server (aiosmtpd) that keeps every message, as ``.eml`` files in a
folder; the console (``ops.console``) shows them as the recipient sees them.

Like a real relay, it bounces what cannot be delivered: a recipient in a domain under ``.invalid`` (RFC 2606:
a name that never exists, as a mistyped address's would not) is accepted, then answered with a delivery status
notification (RFC 3464, as Postfix writes them: status 5.1.2, the returned headers) sent to the message's
envelope sender, through ``bounces_to`` (the deliverability service's bounce listener) when it is given.

    python -m ops.mailcatcher --smtp-port 1025 --http-port 8025 --folder var/mail
    (SMTP and the console; Kafka is KAFKA_BOOTSTRAP_SERVERS, the services on their default ports)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

log = logging.getLogger("customersource.mailcatcher")

REPORTING_MTA = "mailcatcher.customersource.localhost"


def undeliverable(address: str) -> bool:
    """A recipient the catcher bounces: its domain is under ``.invalid``."""
    return address.strip().strip("<>").lower().rstrip(".").endswith(".invalid")


def delivery_status_notification(original: bytes, *, envelope_from: str, recipient: str) -> bytes:
    """The DSN of ``original`` not delivered to ``recipient`` (RFC 3464; the layout Postfix uses)."""
    headers = re.split(rb"\r?\n\r?\n", original, maxsplit=1)[0].decode("utf-8", "replace")
    boundary = f"{time.time_ns()}/{REPORTING_MTA}"
    now = format_datetime(datetime.now(UTC))
    text = f"""From: MAILER-DAEMON@{REPORTING_MTA} (Mail Delivery System)
To: {envelope_from}
Subject: Undelivered Mail Returned to Sender
Date: {now}
Message-ID: {make_msgid(domain=REPORTING_MTA)}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host {REPORTING_MTA}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: Host or domain name not found. Name service error for
    name={recipient.rpartition("@")[2]} type=MX: Host not found

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {REPORTING_MTA}
Arrival-Date: {now}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: failed
Status: 5.1.2
Diagnostic-Code: X-Postfix; Host or domain name not found. Name service error for
    name={recipient.rpartition("@")[2]} type=MX: Host not found

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}

--{boundary}--
"""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


class Mailbox:
    """Messages on disk, newest last. ``bounces_to``: where the bounces of undeliverable recipients are sent
    (host, port), else they are kept in the folder like any message."""

    def __init__(self, folder: Path, bounces_to: tuple[str, int] | None = None) -> None:
        self.folder = folder
        self.bounces_to = bounces_to
        self._bouncing: set[asyncio.Task[None]] = set()
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        self.keep(data, envelope.rcpt_tos)
        for recipient in (r for r in envelope.rcpt_tos if undeliverable(r)):
            if envelope.mail_from:  # a bounce is never bounced
                task = asyncio.create_task(self._bounce(data, envelope.mail_from, recipient))
                self._bouncing.add(task)
                task.add_done_callback(self._bouncing.discard)
        return "250 Message accepted for delivery"

    def keep(self, data: bytes, recipients: list[str]) -> None:
        name = f"{time.time_ns()}.eml"
        (self.folder / name).write_bytes(b"X-Envelope-To: " + ",".join(recipients).encode() + b"\r\n" + data)

    async def _bounce(self, data: bytes, envelope_from: str, recipient: str) -> None:
        report = delivery_status_notification(data, envelope_from=envelope_from, recipient=recipient)
        if self.bounces_to is None:
            self.keep(report, [envelope_from])
            return
        host, port = self.bounces_to
        for attempt in range(30):  # as an MTA would, for a while: the listener may still be starting
            try:
                async with aiosmtplib.SMTP(hostname=host, port=port, timeout=10) as client:
                    await client.sendmail("", [envelope_from], report)  # the null sender: bounces are not bounced
                return
            except (aiosmtplib.SMTPException, OSError):
                await asyncio.sleep(min(0.5 * 2 ** attempt, 5))
        log.warning("a bounce could not be delivered; kept in the inbox")
        self.keep(report, [envelope_from])

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.glob("*.eml"))

    def read(self, name: str) -> EmailMessage | None:
        path = self.folder / Path(name).name
        if not path.is_file():
            return None
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class MailCatcher:
    """The SMTP side: every message accepted is kept in the mailbox folder (the console shows them)."""

    def __init__(self, folder: Path, smtp_port: int, *, bounces_to: tuple[str, int] | None = None) -> None:
        self.box = Mailbox(folder, bounces_to)
        self.smtp_port = smtp_port
        self._controller = Controller(self.box, hostname="127.0.0.1", port=smtp_port)

    async def start(self) -> None:
        self._controller.start()

    async def stop(self) -> None:
        self._controller.stop()


async def _main(args: argparse.Namespace) -> None:
    from ops.console import Console
    from ops.contract import PORTS, kafka_options

    catcher = MailCatcher(Path(args.folder), args.smtp_port)
    await catcher.start()
    console = Console(catcher.box, port=args.http_port, kafka_options=kafka_options(),
                      services={name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()})
    await console.start()
    print(f"SMTP on 127.0.0.1:{args.smtp_port}, console on {console.url}")
    try:
        await asyncio.Event().wait()
    finally:
        await console.stop()
        await catcher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--folder", default="var/mail")
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
