"""A stream connection costs one file descriptor, as on asyncio: the engine
drives the Python socket's own descriptor (no duplicate) and the descriptor
is closed once, by the socket object, after ``connection_lost``."""

from __future__ import annotations

import asyncio
import os

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
