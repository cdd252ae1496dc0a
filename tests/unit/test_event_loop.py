"""The services' event loop lets aiokafka see a broker's reset connection as a Kafka connection error.

aiokafka writes a request to a connection it still takes for open (its reader has not seen the end) and catches
only ``OSError`` around the write. After a broker is SIGKILLed, its kernel resets the connections: on uvloop the
next write raised ``RuntimeError``, which killed the consumer's heartbeat task for good (the integration test of a
broker restart caught it once in CI: the service polled the same error every second and never consumed again).
On the loop the services run, the write is dropped and the reset is reported by the read side, where aiokafka
closes the connection and reconnects."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import uvicorn

from shared.runner import EVENT_LOOP


async def write_after_reset() -> BaseException | None:
    """Connect to a server that resets the connection, then write twice as aiokafka would: what the reader
    reports."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = await accepted
    peer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.transport.abort()  # no linger: a reset, as a killed broker's kernel sends
    try:
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
        assert not reader.at_eof()  # what aiokafka's connected() reads: still "connected"
        writer.write(b"\x00\x00\x00\x01x")  # must not raise
        writer.write(b"\x00\x00\x00\x01x")
        return reader.exception()
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_a_write_to_a_connection_the_broker_reset_does_not_raise() -> None:
    factory = uvicorn.Config(app="services.invitations:app", loop=EVENT_LOOP).get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.run(write_after_reset()), ConnectionResetError)
