"""Hello-world ASGI app for the server cells, served by uvicorn:

    uvicorn --app-dir bench/servers hello:app --http httptools --loop ferroloop:new_event_loop ...

Every request is answered 200 with a text/plain body of ``BENCH_BODY`` bytes
(environment variable; default 13, ``Hello, world!``). ``body(n)`` is that
body, shared with the aiohttp server.
"""

import os

GREETING = b"Hello, world!"


def body(size: int) -> bytes:
    """``Hello, world!`` for 13 bytes; else that line repeated up to `size` bytes."""
    if size == len(GREETING):
        return GREETING
    line = GREETING + b"\n"
    return (line * (size // len(line) + 1))[:size]


BODY = body(int(os.environ.get("BENCH_BODY", "13")))
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(START)
    await send(RESPONSE)
