"""Transports besides TCP/Unix streams that the spec describes: UDP, pipes, subprocesses."""

from __future__ import annotations

import asyncio
import os
import sys

from conftest import run

def test_udp_echo(loop):
    """The spec's UDP echo client and server, on one loop."""

    class EchoServer(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data.upper(), addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = loop.create_future()

        def datagram_received(self, data, addr):
            self.got.set_result((data, addr))

    async def main():
        srv_tr, _ = await loop.create_datagram_endpoint(EchoServer, local_addr=("127.0.0.1", 0))
        addr = srv_tr.get_extra_info("sockname")
        cl_tr, cl = await loop.create_datagram_endpoint(Client, remote_addr=addr)
        assert isinstance(cl_tr, asyncio.BaseTransport)
        cl_tr.sendto(b"hello")
        data, from_addr = await cl.got
        assert data == b"HELLO"
        assert from_addr == addr
        cl_tr.close()
        srv_tr.close()

    run(loop, main())


def test_subprocess_exec(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(b"piped")
        assert out == b"PIPED"
        assert proc.returncode == 0

    run(loop, main())


def test_read_write_pipes(loop):
    async def main():
        rfd, wfd = os.pipe()
        rfile, wfile = os.fdopen(rfd, "rb", 0), os.fdopen(wfd, "wb", 0)
        reader = asyncio.StreamReader()
        rtr, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
        wtr, _ = await loop.connect_write_pipe(asyncio.Protocol, wfile)
        assert isinstance(rtr, asyncio.ReadTransport)
        assert isinstance(wtr, asyncio.WriteTransport)
        wtr.write(b"through a pipe")
        wtr.close()
        assert await reader.read() == b"through a pipe"
        rtr.close()

    run(loop, main())
