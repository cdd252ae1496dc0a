"""The SMTP pool against real servers: what is final (5xx on a recipient) and what is retried
(everything about the session: connection, greeting, sender, 4xx)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ops.broker import free_port
from shared.mail.message import OutgoingMail, build_message
from shared.mail.smtp import Accepted, Refused, SmtpConfig, SmtpPool, TransientSmtpError
from tests.support.smtp import SmtpServer

MAIL = OutgoingMail(sender="noreply@customersource.example", recipient="jane@contoso.example",
                    data=b"Subject: x\r\n\r\nhello\r\n", message_id="m@x")


@pytest.fixture
async def rude_server() -> AsyncIterator[int]:
    """Greets every connection with 554 and hangs up."""
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 no service for you\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_accepted_and_connections_are_reused(smtp: SmtpServer) -> None:
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=smtp.port, max_connections=2))
    try:
        results = await asyncio.gather(*(pool.send(MAIL) for _ in range(10)))
        assert all(isinstance(r, Accepted) for r in results)
        assert len(smtp.messages) == 10
        assert len(pool._idle) <= 2
    finally:
        await pool.close()


async def test_the_message_arrives_byte_for_byte_with_its_size(smtp: SmtpServer) -> None:
    """Messages are written as built (no second pass over them); lines starting with a dot were stuffed."""
    built = build_message(sender="CustomerSource <noreply@customersource.example>", recipient_name="Jane",
                          recipient_address="jane@contoso.example", subject="Hello", text="Hi\n.\n..hidden\n",
                          html="<p>Hi</p>", language="en", message_id="m1@customersource.example",
                          date=datetime(2026, 12, 1, tzinfo=UTC), extra_headers={})
    stuffed = OutgoingMail(sender=MAIL.sender, recipient=MAIL.recipient, message_id="m2@x",
                           data=b"Subject: dots\r\n\r\n..\r\n..x\r\n")
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=smtp.port))
    try:
        assert isinstance(await pool.send(built), Accepted)
        assert isinstance(await pool.send(stuffed), Accepted)
    finally:
        await pool.close()
    assert smtp.messages[0].data == built.data.replace(b"\r\n..", b"\r\n.")  # the server removes the stuffing
    plain = smtp.messages[0].message.get_body(("plain",))
    assert plain is not None and plain.get_content() == "Hi\r\n.\r\n..hidden\r\n"
    assert smtp.messages[1].data == b"Subject: dots\r\n\r\n.\r\n.x\r\n"
    assert smtp.handler.mail_options[0] == [f"SIZE={len(smtp.messages[0].data)}"] == [f"SIZE={built.size}"]
    assert (smtp.messages[0].envelope_from, smtp.messages[0].rcpt_tos) == ("noreply@customersource.example",
                                                                           ["jane@contoso.example"])


@pytest.mark.parametrize(("stage", "final", "transient"), [("refuse_code", 550, 451), ("refuse_data", 554, 452)],
                         ids=["at RCPT", "after the content"])
async def test_refusals_are_final_or_transient_by_code(smtp: SmtpServer, stage: str, final: int,
                                                       transient: int) -> None:
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=smtp.port))
    try:
        setattr(smtp.handler, stage, final)
        refused = await pool.send(MAIL)
        assert isinstance(refused, Refused) and refused.code == final
        assert len(pool._idle) == 1, "a final refusal keeps the connection for the next message"
        setattr(smtp.handler, stage, transient)
        with pytest.raises(TransientSmtpError):
            await pool.send(MAIL)
        setattr(smtp.handler, stage, None)
        assert isinstance(await pool.send(MAIL), Accepted)
    finally:
        await pool.close()


async def test_session_failures_are_transient_never_final(rude_server: int) -> None:
    for port in (rude_server, free_port()):  # a 554 greeting; nothing listening
        pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=port, timeout=5))
        with pytest.raises(TransientSmtpError):
            await pool.send(MAIL)
        await pool.close()


async def test_login_failure_is_transient(smtp: SmtpServer) -> None:
    # aiosmtpd here offers no AUTH: logging in fails during session set-up, which must be retried.
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=smtp.port, username="u", password="p"))
    with pytest.raises(TransientSmtpError):
        await pool.send(MAIL)
    await pool.close()


async def test_a_server_that_stops_answering_times_out_and_its_connection_is_dropped() -> None:
    """The transaction has one deadline: a server that greets, then never answers MAIL, fails the send
    transiently once it passes, and the connection (whose replies could no longer be paired) is closed."""
    closed = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mute.example ESMTP\r\n")
        await writer.drain()
        while line := await reader.readline():
            if line.upper().startswith((b"EHLO", b"HELO")):
                writer.write(b"250-mute.example\r\n250 SIZE 1000000\r\n")
                await writer.drain()
            # anything else: no answer
        closed.set()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=server.sockets[0].getsockname()[1], timeout=0.3))
    try:
        with pytest.raises(TransientSmtpError, match="TimeoutError"):
            await pool.send(MAIL)
        await asyncio.wait_for(closed.wait(), 5)
        assert pool._idle == []
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def test_each_phase_of_a_transaction_has_the_whole_timeout() -> None:
    """A server slow to accept the envelope, then slow to accept the content (scanning it), within the timeout
    each time: accepted, not retried (a retry after the content was taken would send it twice)."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow.example ESMTP\r\n")
        await writer.drain()
        while line := await reader.readline():
            command = line.strip().upper()
            if command.startswith((b"EHLO", b"HELO")):
                writer.write(b"250-slow.example\r\n250 SIZE 1000000\r\n")
            elif command.startswith((b"MAIL", b"RCPT")):
                await asyncio.sleep(0.2)
                writer.write(b"250 OK\r\n")
            elif command == b"DATA":
                await asyncio.sleep(0.2)
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while (await reader.readline()) != b".\r\n":
                    pass
                await asyncio.sleep(0.6)  # the envelope took 0.6 s: 1.2 s in all, the timeout is 1 s
                writer.write(b"250 taken\r\n")
            elif command == b"QUIT":
                writer.write(b"221 bye\r\n")
            await writer.drain()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=server.sockets[0].getsockname()[1], timeout=1.0))
    try:
        assert isinstance(await pool.send(MAIL), Accepted)
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
