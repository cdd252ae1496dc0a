"""The embedded mail catcher: an SMTP server (aiosmtpd) that keeps every message, as ``.eml`` files in a
folder; the console (``ops.console``) shows them as the recipient sees them.

    python -m ops.mailcatcher --smtp-port 1025 --http-port 8025 --folder var/mail
    (SMTP and the console; Kafka is KAFKA_BOOTSTRAP_SERVERS, the services on their default ports)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class Mailbox:
    """Messages on disk, newest last."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.time_ns()}.eml"
        data = envelope.original_content or envelope.content
        rcpt = ",".join(envelope.rcpt_tos)
        (self.folder / name).write_bytes(b"X-Envelope-To: " + rcpt.encode() + b"\r\n" + data)
        return "250 Message accepted for delivery"

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

    def __init__(self, folder: Path, smtp_port: int) -> None:
        self.box = Mailbox(folder)
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
