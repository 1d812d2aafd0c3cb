"""asyncio streams, servers, and the ways to make a TCP transport."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

from conftest import run, run_isolated, tcp_pair

MiB = 1 << 20


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        # Everything was echoed: close (as returning None would). A server
        # connection left half-open would hang Server.wait_closed(), which
        # since Python 3.12 waits for the server's connections to end.
        self.transport.write_eof()
        self.transport.close()


class Collect(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


# ----------------------------------------------------------------------------- streams


async def echo_handler(reader, writer):
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_streams_echo_1mib_with_drain(loop):
    payload = os.urandom(MiB)

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send():
            for i in range(0, len(payload), 10000):
                writer.write(payload[i : i + 10000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        got = await reader.read()
        await sender
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    got = run(loop, main())
    assert len(got) == len(payload)
    assert got == payload


def test_streams_drain_blocks_until_peer_reads(loop):
    async def main():
        gate = asyncio.Event()
        received = bytearray()

        async def slow_handler(reader, writer):
            await gate.wait()
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                received.extend(data)
            writer.close()

        server = await asyncio.start_server(slow_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(high=65536)
        writer.write(b"z" * (16 * MiB))
        drain = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.1)
        assert not drain.done()  # the peer is not reading
        gate.set()
        await drain
        writer.close()
        await writer.wait_closed()
        for _ in range(200):
            if len(received) == 16 * MiB:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return len(received)

    assert run(loop, main()) == 16 * MiB


def test_streams_readexactly_readline_readuntil(loop):
    async def handler(reader, writer):
        writer.write(b"line one\nline two\n")
        writer.write(b"0123456789")
        writer.write(b"header: value\r\n\r\nbody")
        writer.write(b"short")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readline() == b"line one\n"
        assert await reader.readline() == b"line two\n"
        assert await reader.readexactly(10) == b"0123456789"
        assert await reader.readuntil(b"\r\n\r\n") == b"header: value\r\n\r\n"
        assert await reader.readexactly(4) == b"body"
        with pytest.raises(asyncio.IncompleteReadError) as ei:
            await reader.readexactly(100)
        assert ei.value.partial == b"short"
        assert await reader.readline() == b""
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_streams_many_concurrent_clients(flavor):
    def body(loop):
        async def main():
            server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]

            async def client(i):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                msg = f"client {i}\n".encode() * 100
                writer.write(msg)
                writer.write_eof()
                got = await reader.read()
                writer.close()
                await writer.wait_closed()
                return got == msg

            results = await asyncio.gather(*(client(i) for i in range(100)))
            server.close()
            await server.wait_closed()
            return results

        assert all(run(loop, main()))

    run_isolated(flavor, body)


def test_streams_get_extra_info(loop):
    async def main():
        peers = []

        async def handler(reader, writer):
            peers.append(writer.get_extra_info("peername"))
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.get_extra_info("peername") == ("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert await reader.read() == b""
        assert peers == [writer.get_extra_info("sockname")]
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_streams(loop, tmp_path):
    path = str(tmp_path / "sock")

    async def main():
        server = await asyncio.start_unix_server(echo_handler, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"over unix" * 10000)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    assert run(loop, main()) == b"over unix" * 10000


def test_unix_server_close_removes_its_socket_file(loop, tmp_path):
    """Python 3.13's create_unix_server (cleanup_socket=True, the default)
    unlinks the socket's path when the server closes, unless the path is no
    longer that socket's; cleanup_socket=False, and Python before 3.13, leave
    the file."""
    cleans = sys.version_info >= (3, 13)

    async def main():
        path = str(tmp_path / "a.sock")
        server = await loop.create_unix_server(asyncio.Protocol, path)
        assert os.path.exists(path)
        server.close()
        await server.wait_closed()
        assert os.path.exists(path) is not cleans
        if os.path.exists(path):
            os.unlink(path)
        if cleans:
            kept = str(tmp_path / "kept.sock")
            server = await loop.create_unix_server(asyncio.Protocol, kept, cleanup_socket=False)
            server.close()
            await server.wait_closed()
            assert os.path.exists(kept)
            # A path replaced meanwhile (another inode) is not removed.
            replaced = str(tmp_path / "replaced.sock")
            server = await loop.create_unix_server(asyncio.Protocol, replaced)
            os.unlink(replaced)
            open(replaced, "w").close()
            server.close()
            await server.wait_closed()
            assert os.path.exists(replaced)

    run(loop, main())


# ----------------------------------------------------------------------------- servers


def test_create_server_sockets_and_lifecycle(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert server.is_serving()
        socks = server.sockets
        assert isinstance(socks, tuple)
        assert len(socks) == 1
        assert all(isinstance(s, asyncio.trsock.TransportSocket) for s in socks)
        host, port = socks[0].getsockname()
        assert host == "127.0.0.1" and port > 0
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        writer.close()
        await writer.wait_closed()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)

    run(loop, main())


def test_create_server_start_serving_false(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        port = server.sockets[0].getsockname()[1]
        # Bound, but listen() is only called by start_serving().
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # idempotent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"early")
        assert await reader.readexactly(5) == b"early"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_serve_forever(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
            await server.serve_forever()
        # The client closes first: since Python 3.12, serve_forever() awaits
        # wait_closed() once cancelled, which waits for the connections to end.
        writer.close()
        await writer.wait_closed()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()

    run(loop, main())


def test_async_with_server(loop):
    async def main():
        async with await loop.create_server(Echo, "127.0.0.1", 0) as server:
            assert server.is_serving()
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.close()
            await writer.wait_closed()
        assert not server.is_serving()
        await server.wait_closed()

    run(loop, main())


def test_create_server_with_sock_and_reuse_port(loop):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        server = await loop.create_server(Echo, sock=lsock)
        assert server.sockets[0].fileno() == lsock.fileno()
        port = lsock.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"sock=")
        assert await reader.readexactly(5) == b"sock="
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert lsock.fileno() == -1  # the server closed it

        s1 = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        s2 = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        assert s2.sockets[0].getsockname()[1] == port
        for s in (s1, s2):
            s.close()
            await s.wait_closed()

    run(loop, main())


def test_create_server_address_in_use(loop):
    async def main():
        s1 = await loop.create_server(Echo, "127.0.0.1", 0)
        port = s1.sockets[0].getsockname()[1]
        with pytest.raises(OSError) as ei:
            await loop.create_server(Echo, "127.0.0.1", port)
        assert ei.value.errno == 98
        assert "error while attempting to bind on address" in str(ei.value)
        s1.close()
        await s1.wait_closed()

    run(loop, main())


def test_create_server_multiple_hosts(loop):
    async def main():
        server = await loop.create_server(Echo, ["127.0.0.1", "127.0.0.2"], 0)
        socks = server.sockets
        assert isinstance(socks, tuple) and len(socks) == 2
        assert {s.getsockname()[0] for s in socks} == {"127.0.0.1", "127.0.0.2"}
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_close_keeps_connections_and_wait_closed(loop):
    async def main():
        lost = loop.create_future()

        class P(Echo):
            def eof_received(self):
                return None  # close

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await loop.create_server(P, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        server.close()
        # Existing connections survive Server.close().
        writer.write(b"b")
        assert await reader.readexactly(1) == b"b"
        writer.close()
        await writer.wait_closed()
        await lost
        await asyncio.wait_for(server.wait_closed(), 5)

    run(loop, main())


# ----------------------------------------------------------------------------- create_connection variants


def test_create_connection_host_port(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collect(loop), "127.0.0.1", port)
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        tr.write(b"hello")
        tr.write_eof()
        await pr.lost
        assert bytes(pr.data) == b"hello"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_refused(loop):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main():
        with pytest.raises(ConnectionRefusedError) as ei:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        assert ei.value.errno == 111

    run(loop, main())


def test_create_connection_sock(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        tr, pr = await loop.create_connection(lambda: Collect(loop), sock=s)
        assert s.gettimeout() == 0  # made non-blocking
        assert tr.get_extra_info("socket").fileno() == s.fileno()
        tr.write(b"via sock")
        tr.write_eof()
        await pr.lost
        assert bytes(pr.data) == b"via sock"
        assert s.fileno() == -1  # closed with the transport
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_argument_errors(loop):
    async def main():
        s = socket.socket()
        try:
            with pytest.raises(ValueError, match="host/port and sock can not be specified at the same time"):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, sock=s)
            with pytest.raises(ValueError, match="host and port was not specified and no sock specified"):
                await loop.create_connection(asyncio.Protocol)
            with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, server_hostname="x")
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with pytest.raises(ValueError, match="A Stream Socket was expected"):
                await loop.create_connection(asyncio.Protocol, sock=u)
            u.close()
        finally:
            s.close()

    run(loop, main())


def test_create_connection_local_addr(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: Collect(loop), "127.0.0.1", port, local_addr=("127.0.0.1", local_port)
        )
        assert tr.get_extra_info("sockname") == ("127.0.0.1", local_port)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_happy_eyeballs(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: Collect(loop), "127.0.0.1", port, happy_eyeballs_delay=0.05, interleave=1
        )
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        tr.write(b"eyeballs")
        tr.write_eof()
        await pr.lost
        assert bytes(pr.data) == b"eyeballs"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_happy_eyeballs_first_address_fails(loop):
    """Two addresses; the first refuses, the staggered race connects to the second."""

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
            dead_port = probe.getsockname()[1]

        real_getaddrinfo = loop.getaddrinfo

        async def fake_getaddrinfo(host, p, **kw):
            if host == "two.example":
                return [
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", dead_port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                ]
            return await real_getaddrinfo(host, p, **kw)

        loop.getaddrinfo = fake_getaddrinfo
        try:
            tr, pr = await loop.create_connection(lambda: Collect(loop), "two.example", port, happy_eyeballs_delay=0.05)
        finally:
            del loop.getaddrinfo
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_connect_accepted_socket(loop):
    async def main():
        a, b = tcp_pair()
        try:
            tr, pr = await loop.connect_accepted_socket(lambda: Collect(loop), b)
            assert isinstance(tr, asyncio.Transport)
            assert tr.get_extra_info("peername") == a.getsockname()
            a.sendall(b"accepted")
            a.shutdown(socket.SHUT_WR)
            await pr.lost
            assert bytes(pr.data) == b"accepted"
        finally:
            a.close()

    run(loop, main())


# ----------------------------------------------------------------------------- sendfile


@pytest.mark.parametrize("offset,count", [(0, None), (12345, None), (1000, 300000)])
def test_sendfile_over_tcp_transport(loop, tmp_path, offset, count):
    payload = os.urandom(3 * MiB + 17)
    path = tmp_path / "data.bin"
    path.write_bytes(payload)
    expected = payload[offset : None if count is None else offset + count]

    async def main():
        received = loop.create_future()

        class Sink(asyncio.Protocol):
            def __init__(self):
                self.buf = bytearray()

            def data_received(self, data):
                self.buf += data

            def eof_received(self):
                received.set_result(bytes(self.buf))

        server = await loop.create_server(Sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collect(loop), "127.0.0.1", port)
        tr.write(b"")  # nothing
        with open(path, "rb") as f:
            sent = await loop.sendfile(tr, f, offset, count)
            assert sent == len(expected)
            assert f.tell() == offset + sent
        tr.write_eof()
        got = await received
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
        return got

    got = run(loop, main())
    assert len(got) == len(expected)
    assert got == expected


def test_sock_sendfile(loop, tmp_path):
    payload = os.urandom(MiB + 3)
    path = tmp_path / "data.bin"
    path.write_bytes(payload)

    async def main():
        a, b = tcp_pair()
        a.setblocking(False)
        try:
            with open(path, "rb") as f:
                reader = loop.run_in_executor(None, lambda: (b.settimeout(10), _recv_exact(b, len(payload)))[1])
                sent = await loop.sock_sendfile(a, f)
            assert sent == len(payload)
            return await reader
        finally:
            a.close()
            b.close()

    assert run(loop, main()) == payload


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def test_sock_sendfile_at_eof_file_position(loop, tmp_path):
    """Nothing left to send from ``offset``: asyncio's native sock_sendfile
    leaves the file at ``offset`` where its position helper seeks always
    (newer 3.13 releases, 3.14+), and untouched where it seeks only after
    sending something."""
    from asyncio import unix_events

    always_seeks = unix_events._UnixSelectorEventLoop._sock_sendfile_update_filepos.__code__.co_argcount == 3
    payload = b"x" * 1000
    path = tmp_path / "data.bin"
    path.write_bytes(payload)

    async def main():
        a, b = tcp_pair()
        a.setblocking(False)
        try:
            with open(path, "rb") as f:
                f.seek(123)
                sent = await loop.sock_sendfile(a, f, len(payload))
                return sent, f.tell()
        finally:
            a.close()
            b.close()

    assert run(loop, main()) == (0, len(payload) if always_seeks else 123)
