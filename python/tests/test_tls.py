"""TLS: asyncio's SSLProtocol over the loop's TCP transport (BufferedProtocol + set_protocol).

Each test runs in a forked child (``run_isolated``): a crash of the loop under
test must not end the whole pytest run. The child runs the cyclic GC often, so
that lifetime bugs show up deterministically rather than once in a while.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading

import pytest

from conftest import run, run_isolated


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (`make deps` installs it)")
    d = tmp_path_factory.mktemp("certs")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def contexts(certs):
    cert, key = certs
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return server, client


def test_tls_streams_echo(flavor, certs):
    def body(loop):
        sctx, cctx = contexts(certs)
        payload = os.urandom(1 << 20)

        async def handler(reader, writer):
            n = int.from_bytes(await reader.readexactly(4), "big")
            data = await reader.readexactly(n)
            writer.write(data[::-1])
            await writer.drain()
            await reader.read()
            writer.close()

        async def main():
            server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=sctx)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx, server_hostname="localhost")
            writer.write(len(payload).to_bytes(4, "big") + payload)
            await writer.drain()
            got = await reader.readexactly(len(payload))
            assert got == payload[::-1]
            tr = writer.transport
            assert isinstance(tr, asyncio.Transport)
            assert tr.can_write_eof() is False
            assert tr.get_extra_info("sslcontext") is cctx
            assert isinstance(tr.get_extra_info("ssl_object"), ssl.SSLObject)
            assert tr.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
            assert tr.get_extra_info("cipher") is not None
            assert tr.get_extra_info("peername") == ("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

        run(loop, main())

    run_isolated(flavor, body, gc_threshold=20)


def test_tls_start_tls_upgrade(flavor, certs):
    def body(loop):
        sctx, cctx = contexts(certs)

        async def handler(reader, writer):
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"OK\n")
            await writer.drain()
            await writer.start_tls(sctx)
            line = await reader.readline()
            writer.write(line.upper())
            await writer.drain()
            writer.close()

        async def main():
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"OK\n"
            await writer.start_tls(cctx, server_hostname="localhost")
            assert writer.get_extra_info("ssl_object") is not None
            writer.write(b"secret\n")
            assert await reader.readline() == b"SECRET\n"
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
            server.close()
            await server.wait_closed()

        run(loop, main())

    run_isolated(flavor, body, gc_threshold=20)


def test_tls_server_against_blocking_ssl_client(flavor, certs):
    """The loop's TLS server, and a peer that is plain blocking ssl in a thread."""

    def body(loop):
        sctx, cctx = contexts(certs)

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

        async def main():
            server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=sctx)
            port = server.sockets[0].getsockname()[1]
            result = {}

            def client():
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with cctx.wrap_socket(raw, server_hostname="localhost") as s:
                        for i in range(5):
                            msg = b"line %d\n" % i
                            s.sendall(msg)
                            got = b""
                            while len(got) < len(msg):
                                got += s.recv(100)
                            result.setdefault("got", []).append(got)

            th = threading.Thread(target=client)
            th.start()
            while th.is_alive():
                await asyncio.sleep(0.01)
            server.close()
            await server.wait_closed()
            return result["got"]

        assert run(loop, main()) == [b"line %d\n" % i for i in range(5)]

    run_isolated(flavor, body, gc_threshold=20)


def test_tls_writes_after_peer_reset_raise_connection_reset(flavor, certs):
    """The peer resets the connection under a TLS stream: writing goes on
    failing with ConnectionResetError (SSLProtocol hears connection_lost),
    never hangs. (CPython's test_sslproto test_connection_lost_when_busy
    checks this over a mock socket.)"""

    def body(loop):
        sctx, cctx = contexts(certs)

        async def main():
            aborted = loop.create_future()

            async def handler(reader, writer):
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # RST
                aborted.set_result(None)

            server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=sctx)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx, server_hostname="localhost")
            await aborted
            with pytest.raises(ConnectionError):
                for _ in range(1000):
                    writer.write(b"x" * 1000)
                    await writer.drain()
                    await asyncio.sleep(0.001)
            with pytest.raises(ConnectionResetError):
                writer.write(b"again")
                await writer.drain()
            assert writer.transport.is_closing()
            writer.close()
            server.close()
            await server.wait_closed()

        run(loop, main())

    run_isolated(flavor, body)
