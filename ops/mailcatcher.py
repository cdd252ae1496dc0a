"""The embedded mail catcher: an SMTP server (aiosmtpd) that keeps every message, as ``.eml``
files in a folder, and a small web inbox that shows them as the recipient sees them.

    python -m ops.mailcatcher --smtp-port 1025 --http-port 8025 --folder var/mail
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import uvicorn
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


def summary(name: str, message: EmailMessage) -> dict[str, str]:
    return {
        "id": name,
        "to": str(message.get("To", "")),
        "subject": str(message.get("Subject", "")),
        "date": str(message.get("Date", "")),
        "language": str(message.get("Content-Language", "")),
        "template": str(message.get("X-CustomerSource-Template", "")),
        "event_id": str(message.get("X-CustomerSource-Event-Id", "")),
    }


PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>CustomerSource inbox</title>
<style>body{{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh}}
#list{{width:38%;overflow:auto;border-right:1px solid #ddd}}#view{{flex:1;overflow:auto;padding:12px}}
a.m{{display:block;padding:8px 12px;border-bottom:1px solid #eee;color:#222;text-decoration:none}}
a.m:hover{{background:#f3f7fb}}small{{color:#666}}iframe{{width:100%;height:60vh;border:1px solid #ddd}}
pre{{white-space:pre-wrap;background:#fafafa;padding:8px;border:1px solid #eee}}</style></head>
<body><div id="list"><h3 style="padding:0 12px">Inbox ({count})</h3>{items}</div><div id="view">{view}</div></body></html>"""


def inbox_page(box: Mailbox, selected: str | None) -> str:
    items, view = [], "<p>Select a message.</p>"
    for name in reversed(box.names()):
        message = box.read(name)
        if message is None:
            continue
        s = summary(name, message)
        items.append(
            f'<a class="m" href="/?id={html.escape(name)}"><b>{html.escape(s["subject"])}</b><br>'
            f'<small>{html.escape(s["to"])} · {html.escape(s["language"])} · {html.escape(s["template"])}</small></a>'
        )
    if selected and (message := box.read(selected)) is not None:
        s = summary(selected, message)
        text_part = message.get_body(("plain",))
        html_part = message.get_body(("html",))
        headers = "".join(f"{html.escape(k)}: {html.escape(str(v))}\n" for k, v in message.items())
        view = (
            f"<h3>{html.escape(s['subject'])}</h3><p><small>event {html.escape(s['event_id'])}</small></p>"
            + (f'<iframe sandbox="" srcdoc="{html.escape(html_part.get_content())}"></iframe>' if html_part else "")
            + (f"<h4>Text part</h4><pre>{html.escape(text_part.get_content())}</pre>" if text_part else "")
            + f"<h4>Headers</h4><pre>{headers}</pre>"
        )
    return PAGE.format(count=len(items), items="".join(items), view=view)


def web_app(box: Mailbox) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = dict(p.split("=", 1) for p in scope.get("query_string", b"").decode().split("&") if "=" in p)
        if scope["path"] == "/api/messages":
            body = json.dumps([summary(n, m) for n in box.names() if (m := box.read(n)) is not None]).encode()
            content_type = b"application/json"
        else:
            body = inbox_page(box, query.get("id")).encode()
            content_type = b"text/html; charset=utf-8"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})

    return app


class MailCatcher:
    def __init__(self, folder: Path, smtp_port: int, http_port: int) -> None:
        self.box = Mailbox(folder)
        self.smtp_port = smtp_port
        self.http_port = http_port
        self._controller = Controller(self.box, hostname="127.0.0.1", port=smtp_port)
        self._server = uvicorn.Server(uvicorn.Config(web_app(self.box), host="127.0.0.1", port=http_port,
                                                     log_level="warning", lifespan="off"))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._controller.start()
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task:
            await self._task
        self._controller.stop()


async def _main(args: argparse.Namespace) -> None:
    catcher = MailCatcher(Path(args.folder), args.smtp_port, args.http_port)
    await catcher.start()
    print(f"SMTP on 127.0.0.1:{args.smtp_port}, inbox on http://127.0.0.1:{args.http_port}/")
    try:
        await asyncio.Event().wait()
    finally:
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
