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


LIMITS = [
    dict(high=1000.5),
    dict(low=10.25),
    dict(high=2**70),
    dict(high=2**70, low=2**69),
    dict(high=float("inf"), low=10),
    dict(high=100, low=0),
    dict(),
]


@pytest.mark.parametrize("kind", ["stream", "datagram"])
def test_write_buffer_limits_take_what_asyncio_takes(loop, kind):
    """Floats and ints past 64 bits are taken, as asyncio takes them, and
    get_write_buffer_limits() gives back asyncio's (low, high); refused
    limits raise asyncio's ValueError."""

    async def main():
        if kind == "stream":
            server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
            tr, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        else:
            server = None
            tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        got = []
        try:
            for kw in LIMITS:
                tr.set_write_buffer_limits(**kw)
                got.append(tr.get_write_buffer_limits())
            for bad in (dict(high=1, low=2), dict(low=-1.5), dict(high=float("inf"))):
                with pytest.raises(ValueError) as ei:
                    tr.set_write_buffer_limits(**bad)
                got.append(str(ei.value))
            # Still a working transport, with the limits of the last good call.
            got.append(tr.get_write_buffer_limits())
        finally:
            tr.close()
            if server is not None:
                server.close()
                await server.wait_closed()
        return got

    got = run(loop, main())
    assert got[:4] == [(250.0, 1000.5), (10.25, 41.0), (2**68, 2**70), (2**69, 2**70)]
    assert got[4] == (10, float("inf"))
    assert got[5:7] == [(0, 100), (16384, 65536)]
    assert got[7] == "high (1) must be >= low (2) must be >= 0"
    assert got[8] == "high (-6.0) must be >= low (-1.5) must be >= 0"
    assert got[9] == "high (inf) must be >= low (nan) must be >= 0"  # inf // 4 is nan
    assert got[10] == (16384, 65536)


def test_float_high_water_mark_pauses_as_its_floor(loop):
    """A float high-water mark pauses once the buffer is over it (a byte
    count over 1000.5 is over 1000), from inside the write."""
    events = []

    class P(asyncio.Protocol):
        def pause_writing(self):
            events.append("pause")

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, _ = await loop.create_connection(P, *server.sockets[0].getsockname())
        tr.set_write_buffer_limits(high=1000.5)
        tr.write(b"z" * (32 << 20))
        events.append("written")
        tr.abort()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert events == ["pause", "written"]


@pytest.mark.parametrize("method", ["connection_made", "connection_lost"])
def test_stream_callback_exception_context_has_a_handle(loop, method):
    """An exception in connection_made/connection_lost reaches the exception
    handler as asyncio's Handle reports it: message, exception, handle."""
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            if method == "connection_made":
                raise ZeroDivisionError("made")

        def connection_lost(self, exc):
            if method == "connection_lost":
                raise ZeroDivisionError("lost")

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(P, *server.sockets[0].getsockname())
        tr.close()
        for _ in range(20):
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    run(loop, main())
    [ctx] = [c for c in reports if isinstance(c.get("exception"), ZeroDivisionError)]
    assert {"message", "exception", "handle"} <= set(ctx)
    assert isinstance(ctx["handle"], asyncio.Handle)
    assert ctx["message"].startswith("Exception in callback ")


@pytest.mark.parametrize("method", ["connection_made", "datagram_received", "error_received"])
def test_datagram_callback_exception_context_has_a_handle(loop, method):
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

    class P(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            if method == "connection_made":
                raise ZeroDivisionError("made")

        def datagram_received(self, data, addr):
            if method == "datagram_received":
                raise ZeroDivisionError("received")

        def error_received(self, exc):
            if method == "error_received":
                raise ZeroDivisionError("error")

    async def main():
        # A port nobody listens on: the ICMP error comes back as error_received.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
        probe.close()
        if method == "error_received":
            # Connected: the port's ICMP "unreachable" comes back on the socket.
            tr, pr = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", closed_port))
            tr.sendto(b"x")
        else:
            tr, pr = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
            tr.sendto(b"x", tr.get_extra_info("sockname"))
        for _ in range(20):
            await asyncio.sleep(0.01)
        tr.close()
        await asyncio.sleep(0.01)

    run(loop, main())
    got = [c for c in reports if isinstance(c.get("exception"), ZeroDivisionError)]
    assert got, reports
    ctx = got[0]
    assert {"message", "exception"} <= set(ctx)
    if "handle" in ctx or loop.__class__.__module__.startswith("ferroloop"):
        assert isinstance(ctx["handle"], asyncio.Handle)
