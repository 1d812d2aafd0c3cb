"""aiohttp.web hello-world server for the server cells, on any asyncio loop.

    python aiohttp_hello.py --loop ferroloop|uvloop|asyncio|rloop --port PORT [--body 13]

``GET /`` answers 200 with a text/plain body of ``--body`` bytes (the same
bytes as the ASGI app's). The loop is handed to ``web.run_app(app, loop=...)``,
as a user picks one; no access log. Exits on SIGTERM (run_app's handlers).
"""

import argparse

from aiohttp import web

from echo import new_loop, unsupported
from hello import body


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loop", default="asyncio", choices=["ferroloop", "uvloop", "asyncio", "rloop"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--body", type=int, default=13)
    args = p.parse_args()
    data = body(args.body)

    async def hello(request):
        return web.Response(body=data, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", hello)
    try:
        loop = new_loop(args.loop)
    except ImportError as e:
        unsupported(f"{args.loop} is not installed ({e})")
    web.run_app(app, host=args.host, port=args.port, loop=loop, access_log=None, print=None)


if __name__ == "__main__":
    main()
