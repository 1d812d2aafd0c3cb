"""What asyncio changed between 3.11 and 3.15 in servers and connections,
which ferroloop now makes itself: each test states the running version's
behaviour and runs on both loops (the ``loop`` fixture), or compares a trace
of both loops directly."""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import sys
import tempfile

import pytest

import ferroloop
from conftest import run, tcp_pair

VAR = contextvars.ContextVar("VAR", default="unset")


def _server_context_trace(loop):
    """Which value of VAR a server connection's factory and callbacks see,
    with VAR set differently at create_server, at start_serving and after."""
    seen = []

    class P(asyncio.Protocol):
        def __init__(self):
            seen.append(("factory", VAR.get()))

        def connection_made(self, transport):
            seen.append(("made", VAR.get()))
            self.transport = transport

        def data_received(self, data):
            seen.append(("data", VAR.get()))
            self.transport.write(data)
            self.transport.close()

        def connection_lost(self, exc):
            seen.append(("lost", VAR.get()))

    async def main():
        VAR.set("at create_server")
        server = await loop.create_server(P, "127.0.0.1", 0, start_serving=False)
        VAR.set("at start_serving")
        await server.start_serving()
        VAR.set("after")
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"x")
        assert await r.read() == b"x"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        seen.append(("caller", VAR.get()))

    # A fresh context per run: the two loops start from the same state.
    contextvars.Context().run(loop.run_until_complete, main())
    return seen


def test_server_connection_context_as_asyncio():
    """3.15: the server's context is the one at create_server, each
    connection runs in a copy; before, a copy of the one at start_serving."""
    stock = asyncio.new_event_loop()
    ferro = ferroloop.new_event_loop()
    try:
        expected = _server_context_trace(stock)
        got = _server_context_trace(ferro)
    finally:
        stock.close()
        ferro.close()
    first = "at create_server" if sys.version_info >= (3, 15) else "at start_serving"
    assert expected[0] == ("factory", first)
    assert got == expected


def _socket_left_open_after_factory_error(loop):
    a, b = tcp_pair()

    def factory():
        raise ZeroDivisionError

    try:
        with pytest.raises(ZeroDivisionError):
            loop.run_until_complete(loop.create_connection(factory, sock=a))
        return a.fileno() != -1
    finally:
        a.close()
        b.close()
        loop.close()


def test_transport_error_closes_the_socket_as_asyncio():
    """gh-153133 (3.15, later 3.14 releases): a socket whose transport is
    never made (the protocol factory raised) is closed; before, it stayed
    open. Whichever this release does, ferroloop does the same."""
    stock = _socket_left_open_after_factory_error(asyncio.new_event_loop())
    assert _socket_left_open_after_factory_error(ferroloop.new_event_loop()) == stock
    if sys.version_info >= (3, 15):
        assert not stock


@pytest.mark.parametrize(
    "call",
    [
        ("create_server", "keep_alive", (3, 13)),
        ("create_unix_server", "cleanup_socket", (3, 13)),
        ("create_connection", "all_errors", (3, 12)),
    ],
    ids=lambda c: c[1],
)
def test_keyword_arguments_of_later_versions(loop, call):
    """A keyword argument a version's asyncio lacks is its TypeError there,
    and works from the version that added it."""
    method, name, since = call
    listener = socket.create_server(("127.0.0.1", 0))
    with tempfile.TemporaryDirectory() as d, listener:
        args = {
            "create_server": (asyncio.Protocol, "127.0.0.1", 0),
            "create_unix_server": (asyncio.Protocol, os.path.join(d, "s")),
            "create_connection": (asyncio.Protocol, *listener.getsockname()),
        }[method]
        if sys.version_info < since:
            # An async def's unknown keyword: at the call, not at the await.
            with pytest.raises(TypeError, match=name):
                getattr(loop, method)(*args, **{name: True})
            return
        result = loop.run_until_complete(getattr(loop, method)(*args, **{name: True}))
        if method == "create_connection":
            result[0].close()
        else:
            result.close()
            run(loop, result.wait_closed())


def test_unix_server_socket_file_removed_on_close_since_3_13(loop):
    """3.13's create_unix_server(cleanup_socket=True, the default) unlinks
    its socket file on close; before, the file stayed."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sock")
        server = loop.run_until_complete(loop.create_unix_server(asyncio.Protocol, path))
        assert os.path.exists(path)
        server.close()
        run(loop, server.wait_closed())
        assert os.path.exists(path) == (sys.version_info < (3, 13))


def test_server_is_asyncio_server(loop):
    server = loop.run_until_complete(loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
    try:
        assert isinstance(server, asyncio.Server)
        assert isinstance(server.sockets, tuple)
    finally:
        server.close()
        run(loop, server.wait_closed())


def test_accept_out_of_file_descriptors_pauses_then_recovers(flavor):
    """EMFILE on accept: the exception handler gets asyncio's context
    (message, exception, socket), accepting pauses (asyncio's one second),
    then what waited in the backlog is accepted. In a forked child: the
    descriptor limit is process-wide."""
    from conftest import run_isolated
    import errno
    import resource
    import time

    def body(loop):
        reports = []
        made = []
        loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport)

        async def main():
            # Listening already (asyncio listens only once serving starts).
            listener = socket.create_server(("127.0.0.1", 0))
            server = await loop.create_server(P, sock=listener, start_serving=False)
            addr = listener.getsockname()
            clients = [socket.create_connection(addr) for _ in range(3)]
            saved = resource.getrlimit(resource.RLIMIT_NOFILE)
            fillers = []
            try:
                # Every descriptor number below the soft limit taken.
                while True:
                    try:
                        fillers.append(os.open("/dev/null", os.O_RDONLY))
                    except OSError as exc:
                        assert exc.errno == errno.EMFILE
                        break
                    if len(fillers) > 100000:
                        raise AssertionError("no descriptor limit")
                    if len(fillers) == 1:
                        resource.setrlimit(resource.RLIMIT_NOFILE, (fillers[0] + 64, saved[1]))
                await server.start_serving()
                deadline = time.monotonic() + 5
                while not reports and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            finally:
                for fd in fillers:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, saved)
            freed = time.monotonic()
            assert reports, "no report of the accept failure"
            ctx = reports[0]
            assert ctx["message"] == "socket.accept() out of system resource"
            assert isinstance(ctx["exception"], OSError) and ctx["exception"].errno == errno.EMFILE
            assert ctx["socket"].getsockname() == addr
            await asyncio.sleep(0.3)
            assert made == [], "accepted again before the retry delay"
            deadline = time.monotonic() + 5
            while len(made) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(made) == 3
            assert time.monotonic() - freed >= 0.5
            for t in made:
                t.close()
            for c in clients:
                c.close()
            server.close()
            await server.wait_closed()

        loop.run_until_complete(main())

    run_isolated(flavor, body)


def test_datagram_endpoint_socket_types(loop):
    """sock= of create_datagram_endpoint: a stream socket is refused on
    every version; a SOCK_SEQPACKET one is taken from 3.13 (before: only
    SOCK_DGRAM, 'A UDP Socket was expected')."""
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with stream, pytest.raises(ValueError, match="expected"):
        loop.run_until_complete(loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=stream))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        coro = loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=a)
        if sys.version_info < (3, 13):
            with pytest.raises(ValueError, match="A UDP Socket was expected"):
                loop.run_until_complete(coro)
        else:
            transport, _ = loop.run_until_complete(coro)
            transport.close()
            run(loop, asyncio.sleep(0))


def test_wait_closed_with_a_connection_left(loop):
    """Server.wait_closed() after close() with a connection still open: it
    waits for the connection from 3.12.1, returns at once on 3.11."""
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    async def main():
        server = await loop.create_server(P, "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname())
        try:
            while not made:
                await asyncio.sleep(0.005)
            server.close()
            waiter = asyncio.ensure_future(server.wait_closed())
            await asyncio.sleep(0.05)
            assert waiter.done() == (sys.version_info < (3, 12))
            made[0].close()
            await asyncio.wait_for(waiter, 5)
        finally:
            client.close()

    run(loop, main())
