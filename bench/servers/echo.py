"""Echo server for the benchmarks, on any asyncio event loop.

    python echo.py --loop ferroloop|uvloop|asyncio|rloop --mode protocol|buffered|streams
                   [--tcp 127.0.0.1:0 | --unix PATH] [--tls CERT,KEY [--tls-impl ssl|rustls]]

The three modes are the ones of uvloop's own echo benchmark
(examples/bench/echoserver.py), each written the idiomatic way:

* protocol: an ``asyncio.Protocol`` whose ``data_received`` writes the bytes back;
* buffered: an ``asyncio.BufferedProtocol`` that lends the transport a 256 KiB
  ``bytearray`` in ``get_buffer`` and writes a copy of the filled part back in
  ``buffer_updated`` (a copy, because the next read reuses the buffer);
* streams: ``asyncio.start_server``, one task per connection:
  ``await reader.read(...)``, ``writer.write(data)``, ``await writer.drain()``.

``--tls``: serve TLS with that certificate and key, through an
``ssl.SSLContext`` (``--tls-impl ssl``, any loop) or, on ferroloop, through
its rustls fast path ``ferroloop.TLSContext`` (``--tls-impl rustls``).

Prints ``LISTENING tcp:HOST:PORT`` or ``LISTENING unix:PATH`` once serving (the
driver waits for it), and exits with status 0 on SIGTERM or SIGINT. A loop or
mode the installed package cannot run exits with status 3 and a line
``UNSUPPORTED <reason>`` on stdout, so that the driver can record it.
"""

import argparse
import asyncio
import os
import resource
import signal
import sys

STREAM_READ = 256 * 1024
BUFFER = 256 * 1024


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(BUFFER)
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        self.transport.write(self.buffer[:nbytes])

    def connection_lost(self, exc):
        self.transport = None


async def echo_streams(reader, writer):
    try:
        while True:
            data = await reader.read(STREAM_READ)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def new_loop(name):
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    if name == "rloop":
        import rloop

        return rloop.new_event_loop()
    raise SystemExit(f"unknown loop {name!r}")


def unsupported(reason):
    print(f"UNSUPPORTED {reason}", flush=True)
    sys.exit(3)


def stop_on_signals(loop):
    """An ``asyncio.Event`` set on SIGTERM or SIGINT (the driver stops servers with SIGTERM)."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, AttributeError):
            # Fallback for a loop without signal support: exit from the Python handler.
            signal.signal(sig, lambda *_: os._exit(0))
    return stop


def tls_context(args):
    if not args.tls:
        return None
    cert, _, key = args.tls.partition(",")
    if args.tls_impl == "rustls":
        if args.loop != "ferroloop":
            unsupported(f"{args.loop}: the rustls TLS path is ferroloop's")
        import ferroloop

        return ferroloop.TLSContext.server(cert, key)
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(args):
    loop = asyncio.get_running_loop()
    tls = tls_context(args)
    stop = stop_on_signals(loop)

    try:
        if args.unix:
            try:
                os.unlink(args.unix)
            except FileNotFoundError:
                pass
            if args.mode == "streams":
                server = await asyncio.start_unix_server(echo_streams, args.unix, backlog=1024, ssl=tls)
            else:
                factory = EchoProtocol if args.mode == "protocol" else EchoBufferedProtocol
                server = await loop.create_unix_server(factory, args.unix, backlog=1024, ssl=tls)
            where = f"unix:{args.unix}"
        else:
            host, _, port = args.tcp.rpartition(":")
            if args.mode == "streams":
                server = await asyncio.start_server(echo_streams, host, int(port), backlog=1024, ssl=tls)
            else:
                factory = EchoProtocol if args.mode == "protocol" else EchoBufferedProtocol
                server = await loop.create_server(factory, host, int(port), backlog=1024, ssl=tls)
            sockname = server.sockets[0].getsockname()
            where = f"tcp:{sockname[0]}:{sockname[1]}"
    except NotImplementedError as e:
        unsupported(f"{args.loop}: {'unix' if args.unix else 'tcp'} server not implemented ({e})")

    print(f"LISTENING {where}", flush=True)
    await stop.wait()
    server.close()
    if args.unix:
        try:
            os.unlink(args.unix)
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loop", default="asyncio", choices=["ferroloop", "uvloop", "asyncio", "rloop"])
    p.add_argument("--mode", default="protocol", choices=["protocol", "buffered", "streams"])
    p.add_argument("--tcp", default="127.0.0.1:0")
    p.add_argument("--unix")
    p.add_argument("--tls", help="CERT,KEY: serve TLS")
    p.add_argument("--tls-impl", default="ssl", choices=["ssl", "rustls"])
    p.add_argument(
        "--gc",
        default="on",
        choices=["on", "off"],
        help="off: gc.disable() before serving (a diagnostic, never the default)",
    )
    args = p.parse_args()
    if args.gc == "off":
        import gc

        gc.disable()
    # As the Rust binaries do: 65,536 where allowed (root), else soft = hard.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard < 65536:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        loop = new_loop(args.loop)
    except ImportError as e:
        unsupported(f"{args.loop} is not installed ({e})")
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
