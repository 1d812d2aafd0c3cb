"""asyncio's write flow-control contract: pause_writing() is called from
inside write() when the buffer goes over the high-water mark, so a producer
that writes "while not paused" stops at once, whichever callback it runs in.
Every test runs on stock asyncio (the oracle) and on ferroloop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from conftest import run

CHUNK = b"x" * (1024 * 1024)
MAX_WRITES = 50


class Producer(asyncio.Protocol):
    """Writes 1 MiB chunks while not paused (at most 50), from ``where``:
    connection_made, data_received or a call_soon callback."""

    def __init__(self, where, done):
        self.where = where
        self.done = done
        self.paused = False
        self.writes = 0
        self.events = []

    def connection_made(self, transport):
        self.transport = transport
        if self.where == "connection_made":
            self.produce()
        elif self.where == "call_soon":
            asyncio.get_running_loop().call_soon(self.produce)

    def data_received(self, data):
        if self.where == "data_received":
            self.produce()

    def produce(self):
        while not self.paused and self.writes < MAX_WRITES:
            self.transport.write(CHUNK)
            self.writes += 1
            self.events.append(("write", self.paused))
        self.events.append(("stopped", self.transport.get_write_buffer_size()))
        self.done.set_result(None)

    def pause_writing(self):
        self.events.append(("pause_writing", self.writes))
        self.paused = True

    def resume_writing(self):
        self.paused = False


@pytest.mark.parametrize("where", ["connection_made", "data_received", "call_soon"])
def test_producer_stops_at_the_high_water_mark(loop, where):
    """The peer never reads: the producer stops once the buffer is over the
    high-water mark (64 KiB) plus what the socket took, within one chunk of
    it, wherever it runs; pause_writing came from inside the last write."""

    holder = {}

    class Recorder(Producer):
        def __init__(self, where, done):
            super().__init__(where, done)
            holder["p"] = self

    async def main2():
        done = loop.create_future()
        server = await loop.create_server(lambda: Recorder(where, done), "127.0.0.1", 0)
        peer = socket.create_connection(server.sockets[0].getsockname())
        try:
            peer.send(b"go")
            await asyncio.wait_for(done, 10)
            p = holder["p"]
            p.transport.abort()
            await asyncio.sleep(0)
        finally:
            peer.close()
            server.close()
            await server.wait_closed()
        return p

    p = run(loop, main2())
    assert p.writes < 10, p.events[-3:]
    # The last write is the one during which pause_writing ran.
    assert ("pause_writing", p.writes - 1) in p.events or ("pause_writing", p.writes) in p.events
    kinds = [e[0] for e in p.events]
    assert kinds.index("pause_writing") == len(kinds) - 3  # ... write, pause_writing, write, stopped
    assert p.events[-1][0] == "stopped"
    assert p.events[-1][1] <= 64 * 1024 + len(CHUNK)


def test_pause_writing_runs_in_the_writers_context(loop):
    """pause_writing() runs inside write(), so it sees the writer's context
    (a variable set by the caller just before the write)."""
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    seen = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def pause_writing(self):
            seen.append(var.get())

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(P, *server.sockets[0].getsockname())
        tr.set_write_buffer_limits(high=1000)

        def writer():
            var.set("the writer's")
            tr.write(b"y" * (16 * 1024 * 1024))
            seen.append("after write")

        contextvars.copy_context().run(writer)
        tr.abort()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen == ["the writer's", "after write"]
