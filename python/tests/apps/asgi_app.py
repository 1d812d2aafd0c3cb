"""A small ASGI app for the server tests (python/tests/test_uvicorn.py,
test_gunicorn.py, test_hypercorn.py): which loop runs it, which process, a
streamed body, a response held open until the test lets it end, and a
websocket echo."""

import asyncio
import os
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo:" + (message.get("text") or "")})
    path = scope["path"]
    if path == "/loop":
        loop = asyncio.get_running_loop()
        body = f"{type(loop).__module__}.{type(loop).__qualname__}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(5):
            await send({"type": "http.response.body", "body": b"chunk%d;" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"end"})
    elif path == "/pid":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": f"{os.getpid()} {os.getppid()}".encode()})
    elif path == "/hold":
        # The first part at once, the rest once the file named by ?until= exists:
        # a request still in flight for as long as the test wants.
        until = parse_qs(scope["query_string"].decode())["until"][0]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"begin;", "more_body": True})
        for _ in range(1000):
            if os.path.exists(until):
                break
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"done" if os.path.exists(until) else b"gave up"})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
