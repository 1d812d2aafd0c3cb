"""A stream connection costs one file descriptor, as on asyncio: the engine
drives the transport's own descriptor (no duplicate) and the descriptor is
closed once, by the transport, after ``connection_lost`` (through its socket
object, or bare for an accepted connection whose object was never made)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import tempfile
import warnings

import pytest

import ferroloop

N = 40


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Client(asyncio.Protocol):
    def __init__(self, loop):
        self.got = bytearray()
        self.lost = loop.create_future()

    def data_received(self, data):
        self.got += data

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_one_fd_per_connection_and_all_closed_after(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = open_fds()
        conns = [await loop.create_connection(lambda: Client(loop), "127.0.0.1", port) for _ in range(N)]
        # Each connection has a client and a server side in this process.
        for i in range(20):
            await asyncio.sleep(0.01)
            if open_fds() - base >= 2 * N:
                break
        during = open_fds() - base
        for i, (tr, pr) in enumerate(conns):
            tr.write(b"ping %d" % i)
        for i, (tr, pr) in enumerate(conns):
            while bytes(pr.got) != b"ping %d" % i:
                await asyncio.sleep(0.005)
        fds = {tr.get_extra_info("socket").fileno() for tr, _ in conns}
        assert len(fds) == N and -1 not in fds
        for tr, pr in conns:
            tr.close()
        for tr, pr in conns:
            assert await pr.lost is None
            assert tr.get_extra_info("socket").fileno() == -1
        if isinstance(loop, ferroloop.Loop):
            # ferroloop's fd table holds transports strongly until their
            # connection_lost: none of the closed ones may stay in it.
            assert not fds & set(loop._transports)
        server.close()
        await server.wait_closed()
        for i in range(50):
            if open_fds() <= base:
                break
            await asyncio.sleep(0.01)
        return during, open_fds() - base

    during, after = loop.run_until_complete(main())
    assert during == 2 * N
    assert after <= 0


def test_abort_closes_the_one_fd(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = open_fds()
        tr, pr = await loop.create_connection(lambda: Client(loop), "127.0.0.1", port)
        sock = tr.get_extra_info("socket")
        tr.abort()
        assert await pr.lost is None
        assert sock.fileno() == -1
        server.close()
        await server.wait_closed()
        return base

    base = loop.run_until_complete(main())
    loop.run_until_complete(asyncio.sleep(0.05))
    assert open_fds() <= base


class Keep(asyncio.Protocol):
    """Server side: records its transport and when it is lost."""

    def __init__(self, made, lost):
        self.made = made
        self.lost = lost

    def connection_made(self, transport):
        self.made.append(transport)

    def connection_lost(self, exc):
        self.lost.append(exc)


def test_accepted_transports_socket_extra_made_on_request_and_after_close(loop):
    """An accepted connection's ``socket`` extra info is the connection's
    socket when asked for during the connection, and a closed socket of the
    same family and type when asked for only after it closed (ferroloop
    keeps just the descriptor until asked)."""

    async def main():
        made, lost = [], []
        server = await loop.create_server(lambda: Keep(made, lost), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await loop.create_connection(lambda: Client(loop), "127.0.0.1", port) for _ in range(3)]
        while len(made) < 3:
            await asyncio.sleep(0.005)
        asked, later, sent = made
        sock = asked.get_extra_info("socket")
        assert sock is asked.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert sock.fileno() >= 0
        assert sock.getsockname() == asked.get_extra_info("sockname")
        assert sock.getpeername() == asked.get_extra_info("peername")
        assert os.get_blocking(sock.fileno()) is False
        # The descriptor is the one the transport drives: data still flows.
        asked.write(b"via asked")
        ctr, cpr = next((t, p) for t, p in clients if t.get_extra_info("sockname") == sock.getpeername())
        while bytes(cpr.got) != b"via asked":
            await asyncio.sleep(0.005)
        # sendfile() on an accepted transport uses its socket.
        with tempfile.TemporaryFile() as f:
            f.write(b"file data " * 1000)
            f.flush()
            f.seek(0)
            assert await loop.sendfile(sent, f) == 10_000
        str_, spr = next((t, p) for t, p in clients if t.get_extra_info("sockname") == sent.get_extra_info("peername"))
        while len(spr.got) < 10_000:
            await asyncio.sleep(0.005)
        assert bytes(spr.got) == b"file data " * 1000
        for tr in made:
            tr.close()
        while len(lost) < 3:
            await asyncio.sleep(0.005)
        assert sock.fileno() == -1
        closed = later.get_extra_info("socket")
        assert closed is not None and closed.fileno() == -1
        assert closed.family == socket.AF_INET and closed.type == socket.SOCK_STREAM
        for tr, pr in clients:
            assert await pr.lost is None
            tr.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_idle_accepted_connections_hold_no_socket_object(loop, flavor):
    """ferroloop keeps an accepted connection's descriptor, not a Python
    socket object (memory per idle connection); asyncio keeps both."""

    def live_sockets():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, socket.socket) and o.fileno() != -1)

    async def main():
        made, lost = [], []
        server = await loop.create_server(lambda: Keep(made, lost), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = live_sockets()
        clients = [await loop.create_connection(lambda: Client(loop), "127.0.0.1", port) for _ in range(N)]
        while len(made) < N:
            await asyncio.sleep(0.005)
        during = live_sockets() - base
        for tr in made:
            tr.close()
        for tr, pr in clients:
            assert await pr.lost is None
            tr.close()
        server.close()
        await server.wait_closed()
        return during

    base = open_fds()
    during = loop.run_until_complete(main())
    loop.run_until_complete(asyncio.sleep(0.05))
    assert open_fds() <= base
    # The client sides' sockets always; the server sides' only on asyncio.
    # A deliberate difference, invisible through asyncio's API (the object
    # is made when asked for): memory per idle connection.
    assert during == (N if flavor.is_ferroloop else 2 * N)


def socket_inode(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def test_unclosed_accepted_transport_closes_its_fd_even_when_warnings_are_errors(loop):
    """An accepted connection's transport collected without close() warns
    (ResourceWarning) and closes its descriptor; with the warning turned
    into an error, the descriptor is still closed."""

    async def main():
        made = []
        server = await loop.create_server(lambda: Keep(made, []), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ctr, cpr = await loop.create_connection(lambda: Client(loop), "127.0.0.1", port)
        while not made:
            await asyncio.sleep(0.005)
        fd = made[0]._sock_fd
        server.close()
        return fd, socket_inode(fd), ctr._sock_fd

    fd, inode, cfd = loop.run_until_complete(main())
    cinode = socket_inode(cfd)
    assert inode is not None and inode.startswith("socket:")
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            # The loop held the transports (its fd table, the engine):
            # closing the loop and collecting lets go of them without close().
            loop.close()
            for _ in range(3):
                gc.collect()
    finally:
        sys.unraisablehook = old_hook
        # The client side is not under test (asyncio leaves its descriptor
        # open when the warning raises).
        if cinode is not None and socket_inode(cfd) == cinode:
            os.close(cfd)
    assert socket_inode(fd) != inode, "the accepted connection's descriptor is still open"


def test_server_closed_by_the_protocol_factory_drops_the_connection(loop):
    """A protocol factory that closes the server: the accepted connection is
    dropped (nothing polled, no connection_made), as on asyncio, and a
    descriptor that reuses its number is left alone."""
    events = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            events.append("made")
            loop.call_later(0.05, transport.write, b"from the dropped connection")

        def data_received(self, data):
            events.append("data")

    async def main():
        holder = {}

        def factory():
            holder["server"].close()
            return P()

        server = holder["server"] = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        try:
            await asyncio.sleep(0.05)  # accepted (and dropped)
            a, b = socket.socketpair()
            try:
                b.send(b"for a")
                await asyncio.sleep(0.15)
                a.setblocking(False)
                assert a.recv(100) == b"for a"
                with pytest.raises(BlockingIOError):
                    a.recv(100)
            finally:
                a.close()
                b.close()
        finally:
            c.close()
        await server.wait_closed()

    # The accept callback's next accept() on the closed listener fails
    # (EBADF), which asyncio reports to the exception handler.
    loop.set_exception_handler(lambda loop, context: None)
    loop.run_until_complete(main())
    assert events == []
    if isinstance(loop, ferroloop.Loop):
        assert loop._transports == {}


def test_subclass_transport_factory_keeps_the_accepted_socket(flavor):
    """A loop subclass whose _make_socket_transport keeps the accepted socket
    object finds it open and the same as get_extra_info('socket') shows."""
    kept = []

    class L(flavor.loop_class):
        # **kwargs: asyncio 3.15 passes context= too.
        def _make_socket_transport(self, sock, protocol, waiter=None, **kwargs):
            kept.append(sock)
            return super()._make_socket_transport(sock, protocol, waiter, **kwargs)

    loop = L()
    made = []

    async def main():
        server = await loop.create_server(lambda: Keep(made, []), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ctr, cpr = await loop.create_connection(lambda: Client(loop), "127.0.0.1", port)
        while not made:
            await asyncio.sleep(0.005)
        accepted = [s for s in kept if s.getsockname() == ("127.0.0.1", port)]
        assert len(accepted) == 1 and accepted[0].fileno() != -1
        assert made[0].get_extra_info("socket").fileno() == accepted[0].fileno()
        made[0].close()
        ctr.close()
        await cpr.lost
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
