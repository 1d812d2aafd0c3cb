#!/usr/bin/env python3
"""The fault suite: servers on ferroloop, stock asyncio and uvloop put through
what breaks servers, side by side, with figures (`make faults`; `--quick`,
as CI runs it, with smaller counts).

    conns    N connections at once, each echoing 4 KiB of its own bytes: all
             byte-exact, every connection made and lost, descriptors back
    resets   clients that reset (RST) while the server writes to them
             (producer pattern): every connection lost, no crash, descriptors back
    churn    connect / echo / close cycles: server RSS and descriptors flat
    signals  a storm of SIGUSR1 (a loop signal handler) during echo traffic:
             every echo byte-exact, the handler ran, the server alive
    slow     a slow reader of a 64 MiB producer: the server's write buffer
             stays within the high-water mark plus one chunk, all bytes arrive
    fuzz     random sequences of transport operations (fuzz.py), on stock
             asyncio and on ferroloop: the same callback traces and bytes

The server runs in its own process (server.py); the clients here, on stock
asyncio. Exit status 1 if a check fails on ferroloop (the other loops are
shown for comparison; their failures are printed, not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPS = ("ferroloop", "asyncio", "uvloop")


class Server:
    def __init__(self, loop, mode="echo"):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "server.py"), "--loop", loop, "--mode", mode],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "LISTENING":
            self.proc.kill()
            raise RuntimeError(f"{loop} server did not start")
        self.port = int(line[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        lines = [l for l in out.splitlines() if l.startswith("{")]
        stats = json.loads(lines[-1]) if lines else {}
        stats["returncode"] = self.proc.returncode
        return stats


def pattern(i, n):
    return (struct.pack(">I", i) * (n // 4 + 1))[:n]


async def echo_once(port, i, size=4096):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    data = pattern(i, size)
    w.write(data)
    got = await r.readexactly(size)
    w.close()
    await w.wait_closed()
    return got == data


async def settle(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def scenario_conns(loop, n):
    srv = Server(loop)

    async def main():
        sem = asyncio.Semaphore(n)

        async def one(i):
            async with sem:
                return await echo_once(srv.port, i)

        results = await asyncio.gather(*[one(i) for i in range(n)], return_exceptions=True)
        return sum(1 for r in results if r is True), [r for r in results if r is not True][:3]

    t0 = time.monotonic()
    ok, bad = asyncio.run(main())
    secs = time.monotonic() - t0
    time.sleep(0.5)
    st = srv.stop()
    checks = {
        "byte-exact": ok == n,
        "all made and lost": st.get("made") == n and st.get("lost") == n,
        "descriptors back": st.get("fds_end") == st.get("fds_start"),
        "clean exit": st.get("returncode") == 0,
    }
    figures = f"{ok}/{n} byte-exact in {secs:.1f} s; RSS +{st.get('rss_end_kib', 0) - st.get('rss_start_kib', 0)} KiB"
    return checks, figures + (f"; first failures {bad}" if bad else "")


def scenario_resets(loop, n):
    srv = Server(loop, "produce")

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"go")
        await r.readexactly(64 * 1024)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()  # with SO_LINGER 0: a reset

    async def main():
        for start in range(0, n, 50):
            await asyncio.gather(*[one() for _ in range(min(50, n - start))])

    asyncio.run(main())
    time.sleep(1.0)
    st = srv.stop()
    errors = st.get("errors", {})
    checks = {
        "all made and lost": st.get("made") == n and st.get("lost") == n,
        "descriptors back": st.get("fds_end") == st.get("fds_start"),
        "clean exit": st.get("returncode") == 0,
    }
    return checks, f"{n} resets; connection_lost errors {errors}"


def scenario_churn(loop, n):
    srv = Server(loop)

    async def main():
        ok = 0
        for start in range(0, n, 50):
            res = await asyncio.gather(*[echo_once(srv.port, i, 64) for i in range(start, min(n, start + 50))])
            ok += sum(res)
        return ok

    t0 = time.monotonic()
    ok = asyncio.run(main())
    secs = time.monotonic() - t0
    time.sleep(0.5)
    st = srv.stop()
    growth = st.get("rss_end_kib", 0) - st.get("rss_start_kib", 0)
    checks = {
        "byte-exact": ok == n,
        "descriptors back": st.get("fds_end") == st.get("fds_start"),
        # Flat: not growing with the number of cycles (allocator slack allowed).
        "RSS flat": growth < 16 * 1024,
        "clean exit": st.get("returncode") == 0,
    }
    return checks, f"{n} cycles in {secs:.1f} s ({n / secs:,.0f}/s, client included); server RSS +{growth} KiB"


def scenario_signals(loop, n):
    srv = Server(loop)
    stop = False

    async def pinger(i):
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        count = 0
        while not stop:
            data = pattern(i * 100003 + count, 512)
            w.write(data)
            if await r.readexactly(512) != data:
                raise AssertionError("echo corrupted")
            count += 1
        w.close()
        return count

    async def main():
        nonlocal stop
        tasks = [asyncio.ensure_future(pinger(i)) for i in range(20)]
        await asyncio.sleep(0.2)
        for k in range(n):
            os.kill(srv.proc.pid, signal.SIGUSR1)
            if k % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        stop = True
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    st = srv.stop()
    pings = sum(r for r in results if isinstance(r, int))
    failed = [r for r in results if not isinstance(r, int)]
    checks = {
        "echo byte-exact": not failed,
        "handler ran": st.get("signals", 0) > 0,
        "clean exit": st.get("returncode") == 0,
    }
    return checks, f"{n} signals sent, {st.get('signals')} handled (coalesced); {pings} echoes during the storm"


def scenario_slow(loop, total_mib):
    srv = Server(loop, "produce")
    total = 64 << 20

    async def main():
        r, w = await asyncio.open_connection("127.0.0.1", srv.port, limit=64 * 1024)
        w.write(b"go")
        got = 0
        while True:
            chunk = await r.read(256 * 1024)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(0.0005)
        w.close()
        return got

    t0 = time.monotonic()
    got = asyncio.run(main())
    secs = time.monotonic() - t0
    st = srv.stop()
    growth = st.get("rss_end_kib", 0) - st.get("rss_start_kib", 0)
    checks = {
        "all bytes": got == total,
        "buffer bounded": st.get("max_buffer", 1 << 40) <= 64 * 1024 + 256 * 1024,
        "clean exit": st.get("returncode") == 0,
    }
    return checks, (f"{got >> 20} MiB in {secs:.1f} s; max write buffer {st.get('max_buffer', 0):,} B, "
                    f"pause_writing x{st.get('paused')}; server RSS +{growth} KiB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts (CI)")
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = min(10000, (hard - 200) // 2)
    counts = {
        "conns": 1000 if args.quick else conns,
        "resets": 50 if args.quick else 500,
        "churn": 5000 if args.quick else 200000,
        "signals": 2000 if args.quick else 20000,
        "slow": 64,
        "fuzz": 30 if args.quick else 300,
    }
    scenarios = {"conns": scenario_conns, "resets": scenario_resets, "churn": scenario_churn,
                 "signals": scenario_signals, "slow": scenario_slow}
    only = [s for s in args.only.split(",") if s] or [*scenarios, "fuzz"]
    loops = []
    for name in args.loops.split(","):
        try:
            __import__(name if name != "asyncio" else "asyncio")
            loops.append(name)
        except ImportError:
            print(f"faults: {name} not installed: skipped")
    failed = 0
    print(f"faults on Python {sys.version.split()[0]} ({'quick' if args.quick else 'full'}; descriptor limit {hard})")
    for name in only:
        print(f"\n== {name} ({counts[name]})")
        if name == "fuzz":
            # Differential by itself: asyncio against ferroloop, seed by seed.
            t0 = time.monotonic()
            rc = subprocess.call([sys.executable, os.path.join(HERE, "fuzz.py"), "--seeds", str(counts[name])])
            failed += rc != 0
            print(f"  {'ferroloop':10} {'ok' if rc == 0 else 'FAILED: traces differ':28} [{time.monotonic() - t0:.1f} s]")
            continue
        for loop in loops:
            t0 = time.monotonic()
            try:
                checks, figures = scenarios[name](loop, counts[name])
            except Exception as exc:  # a crash of the scenario is a failed check
                checks, figures = {"ran": False}, f"{type(exc).__name__}: {exc}"
            bad = [k for k, ok in checks.items() if not ok]
            if bad and loop == "ferroloop":
                failed += 1
            verdict = "ok" if not bad else "FAILED: " + ", ".join(bad)
            print(f"  {loop:10} {verdict:28} {figures} [{time.monotonic() - t0:.1f} s]", flush=True)
    print(f"\nfaults: {'FAILED' if failed else 'ok'} ({failed} ferroloop scenario(s) failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
