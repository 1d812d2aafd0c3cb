"""Differential fuzzing of transport operation sequences: the same random
sequence of operations on a TCP transport (from outside callbacks and from
inside data_received), with a peer that sends, half-closes or resets, run on
stock asyncio and on ferroloop; the protocol's callback traces and the bytes
each side received must be the same.

    python fuzz.py [--seeds N] [--first K]      (run.py's `fuzz` scenario)

A trace is the protocol's events with consecutive data_received merged (how
reads are cut is the kernel's business), pause/resume_writing included, and
eof_received once (asyncio repeats it after resume_reading at EOF, against
the spec's state machine; ferroloop calls it once); the peer's bytes are
compared whole. Each seed prints on a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sys

OPS = ("write", "writelines", "pause_reading", "resume_reading", "write_eof", "close", "abort",
       "limits", "peer_send", "peer_shutdown", "peer_reset", "in_callback")


class Tracer(asyncio.Protocol):
    def __init__(self, on_data=None):
        self.events = []
        self.on_data = on_data
        self.lost = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        if self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + len(data))
        else:
            self.events.append(("data", len(data)))
        if self.on_data is not None:
            op, self.on_data = self.on_data, None
            op(self.transport)

    def eof_received(self):
        # asyncio calls eof_received again after each resume_reading that
        # follows an EOF (it reads the EOF again); the spec's state machine,
        # which ferroloop keeps, has it once: the trace counts it once.
        if "eof" not in self.events:
            self.events.append("eof")
        return True  # keep the transport half-open

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))


def plan(seed):
    rnd = random.Random(seed)
    ops = []
    for _ in range(rnd.randint(3, 12)):
        op = rnd.choice(OPS)
        if op in ("write", "peer_send"):
            ops.append((op, rnd.choice([1, 100, 70_000, 300_000])))
        elif op == "writelines":
            ops.append((op, rnd.randint(1, 5)))
        elif op == "limits":
            ops.append((op, rnd.choice([0, 1000, 65536, 1 << 20])))
        elif op == "in_callback":
            ops.append((op, rnd.choice(["write", "pause_reading", "close", "write_eof"])))
        else:
            ops.append((op, None))
    return ops


async def settle(loop):
    for _ in range(3):
        await asyncio.sleep(0.005)


def apply(tr, op, arg):
    if tr.is_closing() and op not in ("write",):
        return
    try:
        if op == "write":
            tr.write(b"w" * arg)
        elif op == "writelines":
            tr.writelines([b"l" * 1000] * arg)
        elif op == "pause_reading":
            tr.pause_reading()
        elif op == "resume_reading":
            tr.resume_reading()
        elif op == "write_eof":
            if tr.can_write_eof():
                tr.write_eof()
        elif op == "close":
            tr.close()
        elif op == "abort":
            tr.abort()
        elif op == "limits":
            tr.set_write_buffer_limits(high=arg)
    except RuntimeError as exc:  # write after write_eof: asyncio's RuntimeError, on both
        return f"RuntimeError: {exc}"
    return None


async def run_plan(loop, ops):
    listener = socket.create_server(("127.0.0.1", 0))
    peer_holder = {}
    proto = Tracer()
    tr, _ = await loop.create_connection(lambda: proto, *listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    peer.setblocking(False)
    errors = []
    for op, arg in ops:
        if op == "peer_send":
            try:
                peer.send(b"p" * min(arg, 60_000))
            except OSError:
                pass
        elif op == "peer_shutdown":
            try:
                peer.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        elif op == "peer_reset":
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            peer.close()
            peer = None
            await settle(loop)
            break
        elif op == "in_callback":
            proto.on_data = lambda t, a=arg: apply(t, a, 300_000 if a == "write" else None)
            try:
                peer.send(b"c")
            except OSError:
                pass
        else:
            err = apply(tr, op, arg)
            if err:
                errors.append(err)
        await settle(loop)
    # The peer reads everything, then closes: the end of every run.
    got = 0
    if peer is not None:
        for _ in range(400):
            try:
                chunk = peer.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                if tr.is_closing() and not tr.get_write_buffer_size() and proto.lost is None and \
                        any(isinstance(e, tuple) and e[0] == "lost" for e in proto.events):
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            got += len(chunk)
        peer.close()
    if not tr.is_closing():
        tr.close()
    await settle(loop)
    await asyncio.sleep(0.02)
    return proto.events, got, errors


def run_on(factory, ops):
    loop = factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(run_plan(loop, ops), 20))
    finally:
        loop.close()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first", type=int, default=0)
    args = ap.parse_args(argv)
    import ferroloop

    diffs = 0
    for seed in range(args.first, args.first + args.seeds):
        ops = plan(seed)
        stock = run_on(asyncio.new_event_loop, ops)
        ferro = run_on(ferroloop.new_event_loop, ops)
        if stock != ferro:
            diffs += 1
            print(f"seed {seed}: {ops}\n  asyncio:   {stock}\n  ferroloop: {ferro}")
    print(f"fuzz: {args.seeds} sequences, {diffs} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
