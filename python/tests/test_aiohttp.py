"""A real library on the loop: aiohttp's client and server talking to each other."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from conftest import run, run_isolated

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is not installed (`make deps` installs it)")
from aiohttp import web  # noqa: E402


def make_app():
    async def hello(request):
        return web.Response(text="Hello, " + request.match_info.get("name", "world"))

    async def echo(request):
        body = await request.read()
        return web.Response(body=body, headers={"X-Sha256": hashlib.sha256(body).hexdigest()})

    async def stream(request):
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        for i in range(64):
            await resp.write(bytes([i]) * 16384)
        await resp.write_eof()
        return resp

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close":
                    await sock.close()
                else:
                    await sock.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    async def slow(request):
        await asyncio.sleep(0.6)
        return web.Response(text="too late")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/", hello)
    app.router.add_get("/hello/{name}", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws)
    app.router.add_get("/slow", slow)
    return app


async def serve():
    runner = web.AppRunner(make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def test_aiohttp_client_server(loop, flavor):
    body = os.urandom(3 << 20)

    async def main():
        assert isinstance(asyncio.get_running_loop(), flavor.loop_class)
        runner, base = await serve()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/") as r:
                    assert r.status == 200
                    assert await r.text() == "Hello, world"
                # Keep-alive: sequential requests reuse the pooled connection.
                for i in range(10):
                    assert await fetch_text(session, f"{base}/hello/seq{i}") == f"Hello, seq{i}"
                async with session.post(base + "/echo", data=body) as r:
                    got = await r.read()
                    assert got == body
                    assert r.headers["X-Sha256"] == hashlib.sha256(body).hexdigest()
                async with session.get(base + "/stream") as r:
                    chunks = []
                    async for chunk in r.content.iter_chunked(10000):
                        chunks.append(chunk)
                    assert b"".join(chunks) == b"".join(bytes([i]) * 16384 for i in range(64))
                async with session.get(base + "/missing") as r:
                    assert r.status == 404
                with pytest.raises(asyncio.TimeoutError):
                    async with session.get(base + "/slow", timeout=aiohttp.ClientTimeout(total=0.2)) as r:
                        await r.text()
        finally:
            await runner.cleanup()

    run(loop, main(), timeout=50)


def test_aiohttp_concurrent_requests(flavor):
    def body(loop):
        async def main():
            runner, base = await serve()
            try:
                async with aiohttp.ClientSession() as session:
                    names = [f"n{i}" for i in range(50)]
                    texts = await asyncio.gather(*(fetch_text(session, f"{base}/hello/{n}") for n in names))
                    assert texts == [f"Hello, {n}" for n in names]
            finally:
                await runner.cleanup()

        run(loop, main(), timeout=30)

    run_isolated(flavor, body)


async def fetch_text(session, url):
    async with session.get(url) as r:
        return await r.text()


def test_aiohttp_websocket(loop):
    async def main():
        runner, base = await serve()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(base + "/ws") as ws:
                    for i in range(20):
                        await ws.send_str(f"msg {i}")
                        assert (await ws.receive_str()) == f"MSG {i}"
                    await ws.send_bytes(b"\x01\x02\x03" * 1000)
                    assert (await ws.receive_bytes()) == (b"\x01\x02\x03" * 1000)[::-1]
                    await ws.send_str("close")
                    msg = await ws.receive()
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        finally:
            await runner.cleanup()

    run(loop, main(), timeout=30)


def test_aiohttp_connection_refused(loop):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main():
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorError) as ei:
                await session.get(f"http://127.0.0.1:{port}/")
            assert isinstance(ei.value.os_error, ConnectionRefusedError)

    run(loop, main())


def test_aiohttp_server_against_raw_stream_client(loop):
    """aiohttp's server parsing a request that arrives byte by byte."""

    async def main():
        runner, base = await serve()
        try:
            port = int(base.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = b"GET /hello/bytes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            for b in request:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(0)
            response = await reader.read()
            writer.close()
            await writer.wait_closed()
            assert response.startswith(b"HTTP/1.1 200 OK\r\n")
            assert response.endswith(b"\r\n\r\nHello, bytes")
        finally:
            await runner.cleanup()

    run(loop, main())
