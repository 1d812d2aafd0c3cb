"""websockets echo server for the server cells (the ``websockets`` package's
asyncio API, ``websockets.asyncio.server.serve``), on any asyncio loop.

    python ws_echo.py --loop ferroloop|uvloop|asyncio|rloop --port PORT

Every message received is sent back as it came (text or binary). The loop
comes from ``asyncio.Runner(loop_factory=...)``, as a user picks one on
Python 3.11 (``asyncio.run(..., loop_factory=...)`` from 3.12). The
package's defaults otherwise (compression is offered to clients that ask for
it; the bench's client does not). Exits on SIGTERM or SIGINT.
"""

import argparse
import asyncio

from websockets.asyncio.server import serve

from echo import new_loop, stop_on_signals, unsupported


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(host, port):
    stop = stop_on_signals(asyncio.get_running_loop())
    async with serve(echo, host, port, backlog=1024):
        await stop.wait()


def run():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loop", default="asyncio", choices=["ferroloop", "uvloop", "asyncio", "rloop"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    try:
        runner = asyncio.Runner(loop_factory=lambda: new_loop(args.loop))
        runner.get_loop()
    except ImportError as e:
        unsupported(f"{args.loop} is not installed ({e})")
    with runner:
        runner.run(main(args.host, args.port))


if __name__ == "__main__":
    run()
