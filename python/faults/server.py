"""The server side of the fault suite (run.py), on one event loop.

    python server.py --loop ferroloop|asyncio|uvloop --mode echo|produce

echo: every byte back. produce: on the first bytes received, write 256 KiB
chunks "while not paused" (asyncio's producer pattern), again on each
resume_writing, until 64 MiB were written. Counts SIGUSR1s (a loop signal
handler). Prints ``LISTENING <port>``; on SIGTERM prints one JSON line of
what it saw (connections made and lost, errors by type, signals, RSS and
open descriptors) and exits.
"""

import argparse
import asyncio
import json
import os
import signal
import sys


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds():
    return len(os.listdir("/proc/self/fd"))


STATS = {"made": 0, "lost": 0, "errors": {}, "signals": 0, "paused": 0, "max_buffer": 0}
CHUNK = b"p" * (256 * 1024)
PRODUCE_TOTAL = 64 << 20


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        STATS["made"] += 1
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        STATS["lost"] += 1
        if exc is not None:
            name = type(exc).__name__
            STATS["errors"][name] = STATS["errors"].get(name, 0) + 1


class Producer(Echo):
    def connection_made(self, transport):
        super().connection_made(transport)
        self.paused = False
        self.sent = 0
        self.started = False

    def data_received(self, data):
        if not self.started:
            self.started = True
            self.produce()

    def produce(self):
        t = self.transport
        while not self.paused and self.sent < PRODUCE_TOTAL and not t.is_closing():
            t.write(CHUNK)
            self.sent += len(CHUNK)
            STATS["max_buffer"] = max(STATS["max_buffer"], t.get_write_buffer_size())
        if self.sent >= PRODUCE_TOTAL and not t.is_closing():
            t.write_eof()

    def pause_writing(self):
        STATS["paused"] += 1
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self.produce()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="ferroloop")
    ap.add_argument("--mode", default="echo")
    args = ap.parse_args()
    if args.loop == "ferroloop":
        import ferroloop
        factory = ferroloop.new_event_loop
    elif args.loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    loop = factory()
    proto = Producer if args.mode == "produce" else Echo
    server = loop.run_until_complete(loop.create_server(proto, "127.0.0.1", 0, backlog=4096))
    done = loop.create_future()

    def on_usr1():
        STATS["signals"] += 1

    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    loop.add_signal_handler(signal.SIGTERM, lambda: done.done() or done.set_result(None))
    STATS["rss_start_kib"] = rss_kib()
    STATS["fds_start"] = open_fds()
    print("LISTENING", server.sockets[0].getsockname()[1], flush=True)
    loop.run_until_complete(done)
    STATS["rss_end_kib"] = rss_kib()
    STATS["fds_end"] = open_fds()
    print(json.dumps(STATS), flush=True)
    server.close()
    loop.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
