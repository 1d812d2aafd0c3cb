"""hypercorn serving asgi_app.app on ferroloop, as the README shows it:
`python hypercorn_serve.py HOST:PORT` (python/tests/test_hypercorn.py).
SIGTERM or SIGINT: hypercorn's graceful shutdown."""

import asyncio
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

import ferroloop
from asgi_app import app

config = Config()
config.bind = [sys.argv[1]]

if sys.version_info >= (3, 12):
    asyncio.run(serve(app, config), loop_factory=ferroloop.new_event_loop)
else:
    # asyncio.run() takes loop_factory from 3.12 on; asyncio.Runner has it in 3.11.
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        runner.run(serve(app, config))
