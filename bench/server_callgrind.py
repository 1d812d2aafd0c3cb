#!/usr/bin/env python3
"""Instructions per request of the uvicorn hello server (bench/servers/hello.py,
httptools) or the aiohttp.web one, or per connection of the protocol echo server under churn
(bench/servers/echo.py), on each loop, under callgrind: the profiles behind
the server cells (docs/benchmarks.md, "Real servers").

    python3 bench/server_callgrind.py                      # uvicorn on ferroloop, uvloop, asyncio
    python3 bench/server_callgrind.py --cell aiohttp       # aiohttp.web hello (bench/servers/aiohttp_hello.py)
    python3 bench/server_callgrind.py --cell churn         # connect, echo 100 B, close
    python3 bench/server_callgrind.py --loops ferroloop --top 40

Each loop's server runs twice under ``valgrind --tool=callgrind``, answering
N1 and then N2 keep-alive requests sent one at a time on one connection (or
N1 and N2 connections, one after the other, each echoing one 100-byte
message); the difference of the two runs' instruction counts over N2 - N1 is
the figure (start-up and shut-down cancel out). ``--top`` prints the functions whose
exclusive instructions per request differ most from uvloop's. Uses the bench
venv (``bench/.venv``, made by ``bench/run.py``) unless ``--python`` says
otherwise. Counts are user space only and do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPS = {"ferroloop": "ferroloop:new_event_loop", "uvloop": "uvloop", "asyncio": "asyncio"}
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(cell: str, python: str, loop: str, port: int) -> list[str]:
    if cell == "aiohttp":
        return [python, os.path.join(HERE, "servers", "aiohttp_hello.py"), "--loop", loop, "--port", str(port)]
    if cell == "churn":
        return [python, os.path.join(HERE, "servers", "echo.py"), "--loop", loop, "--mode", "protocol",
                "--tcp", f"127.0.0.1:{port}"]
    return [python, "-m", "uvicorn", "--app-dir", os.path.join(HERE, "servers"), "hello:app", "--http", "httptools",
            "--loop", LOOPS[loop], "--port", str(port), "--log-level", "warning", "--no-access-log", "--lifespan", "off"]


def churn(port: int, n: int) -> None:
    """`n` connections one after the other, each echoing 100 bytes, then closed."""
    payload = b"x" * 100
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = c.recv(4096)
                if not chunk:
                    raise SystemExit("churn: the server closed early")
                got += chunk


def serve_and_count(cell: str, python: str, loop: str, n: int, out: str) -> None:
    """Run the server under callgrind, send `n` requests (connections), stop it."""
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *server_argv(cell, python, loop, port)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{loop}: the server did not start")
                time.sleep(0.2)
        if cell == "churn":
            sock.close()
            churn(port, n)
            return
        with sock, sock.makefile("rb") as f:
            for _ in range(n):
                sock.sendall(REQUEST)
                status = f.readline()
                if not status.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"{loop}: unexpected answer {status!r}")
                length = 0
                while (line := f.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                f.read(length)
    finally:
        proc.send_signal(2)
        proc.wait(120)


def profile(path: str) -> tuple[int, collections.Counter]:
    """Total instructions and exclusive instructions per function."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    fns: collections.Counter = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(\S.*)", line)
        # A function line names its file (path:function); skip calls ("=>")
        # and the annotation's own summary lines.
        if m and "PROGRAM TOTALS" not in line and not m.group(2).startswith("=>") and ":" in m.group(2):
            name = re.sub(r"\s*\[.*\]$", "", m.group(2))
            fns[re.sub(r"'\d+", "", name)] += int(m.group(1).replace(",", ""))
    return total, fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="uvicorn", choices=["uvicorn", "aiohttp", "churn"])
    ap.add_argument("--loops", default="ferroloop,uvloop,asyncio")
    ap.add_argument("--python", default=os.path.join(HERE, ".venv", "bin", "python"))
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=3000)
    ap.add_argument("--top", type=int, default=0, help="print this many functions against uvloop")
    args = ap.parse_args()
    loops = args.loops.split(",")
    per_fn = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loop in loops:
            outs = []
            for n in (args.n1, args.n2):
                out = os.path.join(tmp, f"{loop}.{n}.cg")
                serve_and_count(args.cell, args.python, loop, n, out)
                outs.append(profile(out))
            (t1, f1), (t2, f2) = outs
            span = args.n2 - args.n1
            per_fn[loop] = {k: (f2[k] - f1.get(k, 0)) / span for k in f2}
            unit = "connection" if args.cell == "churn" else "request"
            print(f"{loop:10s} {(t2 - t1) / span:10,.0f} instructions per {unit}", flush=True)
    if args.top and "uvloop" in per_fn:
        for loop in loops:
            if loop == "uvloop":
                continue
            a, b = per_fn[loop], per_fn["uvloop"]
            keys = sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))
            print(f"\n{loop} against uvloop, exclusive instructions per {args.cell} unit (largest differences):")
            for k in keys[: args.top]:
                print(f"{a.get(k, 0) - b.get(k, 0):+9,.0f}  {a.get(k, 0):9,.0f} {b.get(k, 0):9,.0f}  {k[-100:]}")


if __name__ == "__main__":
    sys.exit(main())
