"""Lifetimes, garbage collection and re-entrant callbacks."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import warnings
import weakref

import pytest

from conftest import run, run_isolated, tcp_pair


class Proto(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.log = []
        self.data = bytearray()
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.log.append("made")

    def data_received(self, data):
        self.data += data
        if not self.log or self.log[-1] != "data":
            self.log.append("data")

    def eof_received(self):
        self.log.append("eof")

    def connection_lost(self, exc):
        self.log.append(("lost", None if exc is None else type(exc).__name__))
        if self.lost.done():
            self.log.append("LOST TWICE")
        else:
            self.lost.set_result(exc)

    def pause_writing(self):
        self.log.append("pause")

    def resume_writing(self):
        self.log.append("resume")


async def connect(loop, factory, **kw):
    a, b = tcp_pair(**kw)
    b.setblocking(False)
    tr, pr = await loop.create_connection(factory, sock=a)
    return tr, pr, b


async def read_all(loop, peer, limit=None):
    chunks, total = [], 0
    while True:
        data = await loop.sock_recv(peer, 1 << 20)
        if not data:
            break
        chunks.append(data)
        total += len(data)
        if limit is not None and total >= limit:
            break
    return b"".join(chunks)


def collect():
    for _ in range(3):
        gc.collect()


# ----------------------------------------------------------------------------- lifetimes


def test_closed_loop_with_open_transport_warns_when_collected(flavor):
    lp = flavor.new_event_loop()
    a, b = tcp_pair()
    try:
        tr, pr = lp.run_until_complete(lp.create_connection(lambda: Proto(lp), sock=a))
        pr_ref = weakref.ref(pr)
        fd = a.fileno()
        lp.close()
        assert not tr.is_closing()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del tr, pr, a
            collect()
        messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert any(m.startswith("unclosed transport <") for m in messages), messages
        # A recorded warning keeps its source (the transport, so the
        # protocol) alive: let go of the records first.
        del caught
        collect()
        assert pr_ref() is None
        # The socket was closed with the transport: the peer sees EOF.
        b.settimeout(5)
        assert b.recv(10) == b""
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        b.close()


@pytest.mark.parametrize("side", ["client", "server"])
def test_transport_protocol_cycle_collected_after_close(loop, side):
    refs = {}

    async def main():
        server_protos = []
        server = await loop.create_server(
            lambda: server_protos.append(Proto(loop)) or server_protos[-1], "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Proto(loop), "127.0.0.1", port)
        while not server_protos:
            await asyncio.sleep(0.001)
        sp = server_protos.pop()
        tr.write(b"x")
        while not sp.data:
            await asyncio.sleep(0.001)
        if side == "client":
            mine, other = pr, sp
        else:
            mine, other = sp, pr
        refs["protocol"] = weakref.ref(mine)
        refs["transport"] = weakref.ref(mine.transport)
        mine.transport.close()
        await mine.lost
        await other.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    collect()
    assert refs["protocol"]() is None
    assert refs["transport"]() is None


def test_cycle_collected_after_abort_and_loop_close(flavor):
    lp = flavor.new_event_loop()
    a, b = tcp_pair()
    try:
        tr, pr = lp.run_until_complete(lp.create_connection(lambda: Proto(lp), sock=a))
        refs = (weakref.ref(tr), weakref.ref(pr))
        tr.abort()
        lp.run_until_complete(pr.lost)
        lp.close()
        del tr, pr, a
        collect()
        assert [r() for r in refs] == [None, None]
    finally:
        b.close()


def test_live_connection_survives_gc(loop):
    """Only the loop references a live connection: a collection must not break it."""
    got = loop.create_future()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data.upper())

        def connection_lost(self, exc):
            got.set_result(exc)

    async def main():
        a, b = tcp_pair()
        b.setblocking(False)
        await loop.create_connection(Echo, sock=a)
        del a
        collect()
        await loop.sock_sendall(b, b"still alive")
        reply = await loop.sock_recv(b, 100)
        b.close()
        assert await got is None
        return reply

    assert run(loop, main()) == b"STILL ALIVE"


def test_gc_between_transport_creation_and_connection_made(flavor):
    def body(loop):
        events = []

        class P(asyncio.Protocol):
            def __init__(self):
                # Runs after the transport is made, before connection_made (both loops
                # schedule connection_made with call_soon after the factory).
                loop.call_soon(collect)

            def connection_made(self, transport):
                self.transport = transport
                events.append("made")

            def data_received(self, data):
                self.transport.write(data.upper())

        async def main():
            server = await loop.create_server(P, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hi")
            reply = await reader.read(10)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            return reply

        assert run(loop, main()) == b"HI"
        assert events == ["made"]

    run_isolated(flavor, body)


def test_many_connections_with_frequent_gc(flavor):
    """A soak with the collector running every few allocations."""
    def body(loop):

        async def handler(reader, writer):
            data = await reader.read()
            writer.write(data[::-1])
            await writer.drain()
            writer.close()

        async def main():
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]

            async def client(i):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"%d-payload" % i)
                writer.write_eof()
                got = await reader.read()
                writer.close()
                await writer.wait_closed()
                return got == (b"%d-payload" % i)[::-1]

            old = gc.get_threshold()
            gc.set_threshold(50, 5, 5)
            try:
                results = await asyncio.gather(*(client(i) for i in range(30)))
            finally:
                gc.set_threshold(*old)
            server.close()
            await server.wait_closed()
            return results

        results = run(loop, main())
        assert results == [True] * 30

    run_isolated(flavor, body)


# ----------------------------------------------------------------------------- re-entrant callbacks


def test_write_from_pause_writing(loop):
    total_extra = []

    class P(Proto):
        def pause_writing(self):
            super().pause_writing()
            extra = b"written from pause_writing"
            total_extra.append(extra)
            self.transport.write(extra)  # allowed: it is only buffered

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop), sndbuf=32768, rcvbuf=32768)
        try:
            payload = b"p" * (2 << 20)
            tr.write(payload)
            assert pr.log == ["made", "pause"]
            expected = payload + b"".join(total_extra)
            got = await read_all(loop, peer, limit=len(expected))
            assert got == expected
            tr.close()
            await pr.lost
            return pr.log
        finally:
            peer.close()

    log = run(loop, main())
    assert log == ["made", "pause", "resume", ("lost", None)]


def test_write_from_resume_writing_cycles(loop):
    """resume_writing writes more (which may pause again): every byte arrives in order."""
    rounds = 20
    chunk = 300_000

    class P(Proto):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.round = 0
            self.paused = False
            self.depth = 0

        def pause_writing(self):
            super().pause_writing()
            assert not self.paused
            self.paused = True

        def resume_writing(self):
            super().resume_writing()
            assert self.paused
            self.paused = False
            self.send_round()

        def send_round(self):
            if self.round < rounds:
                self.round += 1
                self.transport.write(bytes([self.round]) * chunk)
            else:
                self.transport.close()

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop), sndbuf=32768, rcvbuf=32768)
        try:
            pr.send_round()
            got = await read_all(loop, peer)
            await pr.lost
            return got, pr
        finally:
            peer.close()

    got, pr = run(loop, main())
    assert got == b"".join(bytes([r]) * chunk for r in range(1, rounds + 1))
    pauses = pr.log.count("pause")
    assert pauses >= 1 and pr.log.count("resume") == pauses
    assert pr.log[-1] == ("lost", None)
    assert "LOST TWICE" not in pr.log


def test_abort_from_pause_writing(loop):
    class P(Proto):
        def pause_writing(self):
            super().pause_writing()
            self.transport.abort()
            self.log.append(("buffer after abort", self.transport.get_write_buffer_size()))

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop), sndbuf=32768, rcvbuf=32768)
        try:
            tr.write(b"a" * (2 << 20))
            tr.write(b"dropped")  # after abort: silently dropped
            await pr.lost
            await asyncio.sleep(0.01)
            return pr.log
        finally:
            peer.close()

    assert run(loop, main()) == ["made", "pause", ("buffer after abort", 0), ("lost", None)]


def test_close_write_abort_from_connection_lost(loop):
    handler_calls = []
    loop.set_exception_handler(lambda lp, ctx: handler_calls.append(ctx))

    class P(Proto):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            self.transport.close()
            self.transport.abort()
            self.transport.write(b"too late")
            self.transport.pause_reading()
            self.transport.resume_reading()
            self.log.append(("closing", self.transport.is_closing()))
            self.log.append(("peername kept", self.transport.get_extra_info("peername") is not None))

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.send(b"bye")
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            await asyncio.sleep(0.02)
            return pr.log
        finally:
            peer.close()

    log = run(loop, main())
    assert log == ["made", "data", "eof", ("lost", None), ("closing", True), ("peername kept", True)]
    assert handler_calls == []


def test_close_in_eof_received_then_keep_open(loop):
    class P(Proto):
        def eof_received(self):
            super().eof_received()
            self.transport.write(b"goodbye")
            self.transport.close()
            return True

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            return pr.log, await read_all(loop, peer)
        finally:
            peer.close()

    log, got = run(loop, main())
    assert log == ["made", "eof", ("lost", None)]
    assert got == b"goodbye"


def test_write_from_data_received_echo_with_close(loop):
    """The classic echo server: write + close inside data_received, many times."""

    class Echo(Proto):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(data)
            self.transport.close()
            self.transport.close()

    async def main():
        results = []
        for _ in range(20):
            tr, pr, peer = await connect(loop, lambda: Echo(loop))
            try:
                await loop.sock_sendall(peer, b"ping")
                results.append(await read_all(loop, peer))
                await pr.lost
            finally:
                peer.close()
        return results

    assert run(loop, main()) == [b"ping"] * 20


def test_pause_reading_in_data_received_resume_from_timer(loop):
    class P(Proto):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()
            self.transport.pause_reading()
            self.loop.call_later(0.001, self.transport.resume_reading)

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            payload = os.urandom(1 << 20)
            await loop.sock_sendall(peer, payload)
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            return bytes(pr.data) == payload, pr.log
        finally:
            peer.close()

    ok, log = run(loop, main())
    assert ok
    assert log == ["made", "data", "eof", ("lost", None)]


def test_close_other_transport_from_callback(loop):
    """One connection's data_received closes another connection and itself."""
    others = []

    class Killer(Proto):
        def data_received(self, data):
            super().data_received(data)
            others[0].abort()
            self.transport.close()

    async def main():
        tr1, p1, peer1 = await connect(loop, lambda: Killer(loop))
        tr2, p2, peer2 = await connect(loop, lambda: Proto(loop))
        others.append(tr2)
        try:
            peer1.send(b"x")
            await asyncio.gather(p1.lost, p2.lost)
            return p1.log, p2.log
        finally:
            peer1.close()
            peer2.close()

    log1, log2 = run(loop, main())
    assert log1 == ["made", "data", ("lost", None)]
    assert log2 == ["made", ("lost", None)]


def test_protocol_methods_looked_up_at_call_time(loop):
    calls = []

    class P(Proto):
        def data_received(self, data):
            calls.append(("class", data))

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            pr.data_received = lambda data: calls.append(("instance", data))
            peer.send(b"x")
            while not calls:
                await asyncio.sleep(0.005)
            del pr.data_received
            peer.send(b"y")
            while len(calls) < 2:
                await asyncio.sleep(0.005)
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())
    assert calls == [("instance", b"x"), ("class", b"y")]


def test_set_protocol_inside_connection_made(loop):
    class Second(Proto):
        pass

    second_holder = []

    class First(Proto):
        def connection_made(self, transport):
            super().connection_made(transport)
            second = Second(self.loop)
            second.transport = transport
            second_holder.append(second)
            transport.set_protocol(second)

    async def main():
        tr, first, peer = await connect(loop, lambda: First(loop))
        try:
            peer.send(b"to second")
            peer.shutdown(socket.SHUT_WR)
            second = second_holder[0]
            await second.lost
            return first.log, second.log, bytes(second.data)
        finally:
            peer.close()

    assert run(loop, main()) == (["made"], ["data", "eof", ("lost", None)], b"to second")


def test_loop_stop_from_protocol_callback_and_resume(loop):
    """stop() from data_received, then run again: the connection carries on."""

    class P(Proto):
        def data_received(self, data):
            super().data_received(data)
            self.loop.stop()

    a, b = tcp_pair()
    try:
        tr, pr = loop.run_until_complete(loop.create_connection(lambda: P(loop), sock=a))
        b.sendall(b"first")
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert bytes(pr.data) == b"first"
        b.sendall(b"second")
        loop.run_forever()
        assert bytes(pr.data) == b"firstsecond"
        tr.close()
        loop.run_until_complete(pr.lost)
    finally:
        b.close()


def test_forwarding_methods_find_the_core_of_the_instances_own_class():
    """The transport methods forwarding to ``_core`` (``_ferroloop.core_method``)
    read it from its slot only for classes where ``_core`` is that slot: a class
    borrowing the slot descriptor, or a subclass whose ``_core`` is a property,
    goes through attribute lookup (a wrong slot offset would read another
    object's memory). Run in a child process: a crash must fail the test."""
    from conftest import FLAVORS, run_isolated

    def body(lp):
        from ferroloop import _ferroloop
        from ferroloop._transports import StreamTransport

        class Borrower:
            __slots__ = ("a",)

        Borrower._core = StreamTransport.__dict__["_core"]
        Borrower.write = _ferroloop.core_method(Borrower, "write")
        with pytest.raises(TypeError):
            Borrower().write(b"")  # the descriptor does not apply to it

        class Recorder:
            def __init__(self):
                self.calls = []

            def is_closing(self):
                self.calls.append("is_closing")
                return "from the property's core"

        rec = Recorder()

        class WithProperty(StreamTransport):
            @property
            def _core(self):
                return rec

        t = WithProperty.__new__(WithProperty)
        StreamTransport._core.__set__(t, object())  # the base slot holds something else
        assert t.is_closing() == "from the property's core"
        assert rec.calls == ["is_closing"]

    run_isolated(FLAVORS["ferroloop"], body)


def test_signal_handlers_run_while_the_loop_is_idle_in_its_poll(flavor):
    """A plain signal.signal() handler (SIGALRM from a timer at a random
    moment, 2,000 times) runs while the loop is idle in its poll, and a
    loop.stop() it calls ends run_forever: every trial ends by the handler,
    none by the safety-net timer. (Stock asyncio's selector loop runs the
    handler inside its poll but is not woken by it without a wakeup fd: each
    trial would wait for the safety net, so only ferroloop runs this.)"""
    if not flavor.is_ferroloop:
        pytest.skip("asyncio's selector loop is not woken by a plain signal handler (no wakeup fd)")
    import random

    def body(loop):
        by_handler = by_timer = 0
        ended = []

        def handler(signum, frame):
            ended.append("handler")
            loop.stop()

        def safety_net():
            ended.append("timer")
            loop.stop()

        old = signal.signal(signal.SIGALRM, handler)
        try:
            for _ in range(2000):
                ended.clear()
                signal.setitimer(signal.ITIMER_REAL, random.uniform(0.00005, 0.002))
                h = loop.call_later(5, safety_net)
                loop.run_forever()
                h.cancel()
                signal.setitimer(signal.ITIMER_REAL, 0)
                if ended[:1] == ["handler"]:
                    by_handler += 1
                else:
                    by_timer += 1
        finally:
            signal.signal(signal.SIGALRM, old)
        assert (by_handler, by_timer) == (2000, 0)

    run_isolated(flavor, body, timeout=120)
