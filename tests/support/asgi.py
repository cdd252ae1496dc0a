"""One HTTP request through a service's ASGI application: no server, no broker needed for the routes that do
not reach one."""

from __future__ import annotations

from typing import Any


async def request(app: Any, method: str, path: str, *, body: bytes = b"",
                  headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[str, str], bytes]:
    """The response's status, headers and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers or [],
               "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http", "root_path": ""}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    found = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], found, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
