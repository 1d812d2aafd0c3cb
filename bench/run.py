#!/usr/bin/env python3
"""Benchmark driver: ferroloop against tokio, a raw mio loop, uvloop, stock
asyncio and rloop, all measured in the same run.

    python3 bench/run.py            # the full matrix (about 16 minutes, 6 of them the server cells)
    QUICK=1 python3 bench/run.py    # a subset (about 3 minutes); or --quick
    python3 bench/run.py --smoke    # correctness only: every server echoes byte-exact

What it does:

1. Set-up: ``cargo build --release -p ferroloop-bench`` (the load generator and
   the Rust echo servers); a virtualenv ``bench/.venv`` with uvloop, rloop,
   matplotlib and maturin from PyPI (rloop is optional: when it cannot be
   installed it is recorded as unavailable); ferroloop's Python face built
   with maturin in release mode, as the Makefile's ``develop`` target does,
   but as a wheel installed into bench/.venv, so that the run measures a
   fixed build and does not touch the tree's own .venv.
2. Every echo server runs pinned to CPU 0 (``taskset -c 0``), the load
   generator pinned to CPU 1. For each workload cell, rounds of runs go over
   all servers in turn (a rotated order each round), so that drift in the
   machine's load hits every server alike; each run has its own warm-up.
   Ping-pong cells interleave finely: every server's load generator opens
   and primes its connections once for the cell (``loadgen --commands``),
   then a round is one short window per server (0.2 s after 0.05 s of
   warm-up, 15 rounds in the full matrix), so that each server is measured
   in many windows spread over the same minute as its peers, and the
   machine's slow and fast spells (this VM has spells where everything runs
   1.5x slower, lasting from under a second to minutes) fall on all of
   them alike.
3. The headline figure is the server's CPU time per message: the scheduler's
   run time of the server process (/proc/PID/schedstat, ns) across the
   measured window, divided by the messages echoed in it (utime+stime from
   /proc/PID/stat beside it); medians over the rounds. Throughput, latency
   p50/p99 and the user-space share sit beside it. Ratios: Python servers
   against uvloop in the same mode; ferroloop's Rust face against tokio and
   the raw mio loop; and, for the goals, ferroloop's ratios paired by round
   (per round the ratio of two servers' windows, then the median over
   rounds), which cancels the machine's drift between rounds.
4. TLS cells (Python face, Protocol mode): 1 KiB echo over TLS 1.3 on 50
   connections, and handshakes (each connection echoes one message, closes
   and reconnects: CPU per handshake), for uvloop and stock asyncio with an
   ``ssl.SSLContext``, and ferroloop with an ``ssl.SSLContext`` (asyncio's
   SSLProtocol on the engine) and with its rustls fast path
   (``ferroloop.TLSContext``). ECDSA P-256 certificate made with openssl.
5. Extra cells: a bulk transfer (1 GiB, MB/s), idle connections (RSS growth
   per connection over 10,000 connections, each server in a fresh process),
   and instructions per message under callgrind (user space only; ``perf
   stat`` counters are not available on this VM; callgrind counts the same
   on a loaded machine).
6. Server cells (bench/servers.py, ids ``srv-*``): uvicorn with httptools and
   aiohttp.web under wrk (13 B and 10 KiB bodies, 50 keep-alive connections),
   a websockets echo server (1 KiB messages), and connection churn against
   the protocol echo server, on each Python loop; CPU per request, req/s,
   p99, paired ratios against uvloop. wrk is the Debian package, installed
   with apt-get when missing.
7. Writes bench/results/<timestamp>.json (every run), bench/results/latest.md
   (tables), bench/results/latest.png (chart), and, for a full run, the
   results section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# bench/servers.py (the server cells) imports this module as `run`: one module, even when run as a script.
sys.modules.setdefault("run", sys.modules[__name__])

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = BENCH / ".venv"
VPY = VENV / "bin" / "python"
RESULTS = BENCH / "results"
WORK = BENCH / "target"  # wheels, logs, callgrind files (ignored by git)
DOCS = ROOT / "docs" / "benchmarks.md"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
LOADGEN = TARGET / "loadgen"

SERVER_CPU = "0"
LOADGEN_CPU = "1"

# Packages of the bench venv. rloop is optional (recorded as unavailable if it fails).
VENV_REQUIRED = ["maturin>=1.5,<2", "uvloop", "matplotlib", "uvicorn", "httptools", "aiohttp", "websockets"]
VENV_OPTIONAL = ["rloop"]

MIB = 1024 * 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Spec:
    """One echo server under test."""

    face: str  # "rust" or "python"
    impl: str  # ferroloop, tokio, mio, uvloop, asyncio, rloop
    mode: str  # protocol, buffered, streams, or "" (tokio/mio have one way)
    tls: str = ""  # "": plain; "ssl": an ssl.SSLContext; "rustls": ferroloop.TLSContext

    @property
    def key(self) -> str:
        prefix = "rs" if self.face == "rust" else "py"
        return f"{prefix}:{self.impl}" + (f"/{self.mode}" if self.mode else "") + (f"+{self.tls}" if self.tls else "")

    def argv(self, endpoint: list[str], py_gc: str = "on") -> list[str]:
        if self.face == "rust":
            argv = [str(TARGET / f"echo-{self.impl}")]
            if self.mode:
                argv += ["--mode", self.mode]
            return argv + endpoint
        argv = [str(VPY), str(BENCH / "servers" / "echo.py"), "--loop", self.impl, "--mode", self.mode]
        if self.tls:
            cert, key = tls_files()
            argv += ["--tls", f"{cert},{key}", "--tls-impl", self.tls]
        if py_gc != "on":
            argv += ["--gc", py_gc]
        return argv + endpoint


RUST_SPECS = [
    Spec("rust", "ferroloop", "protocol"),
    Spec("rust", "ferroloop", "buffered"),
    Spec("rust", "tokio", ""),
    Spec("rust", "mio", ""),
]
PY_LOOPS = ["ferroloop", "uvloop", "asyncio", "rloop"]
PY_MODES = ["protocol", "buffered", "streams"]
PY_SPECS = [Spec("python", lp, m) for lp in PY_LOOPS for m in PY_MODES]
ALL_SPECS = RUST_SPECS + PY_SPECS
TLS_SPECS = [
    Spec("python", "uvloop", "protocol", "ssl"),
    Spec("python", "asyncio", "protocol", "ssl"),
    Spec("python", "ferroloop", "protocol", "ssl"),
    Spec("python", "ferroloop", "protocol", "rustls"),
]


def tls_files() -> tuple[Path, Path]:
    """The TLS servers' certificate and key (ECDSA P-256, made once with openssl)."""
    d = WORK / "tls"
    cert, key = d / "cert.pem", d / "key.pem"
    if not (cert.exists() and key.exists()):
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "3650", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost", "-addext", "basicConstraints=critical,CA:FALSE"],
            check=True, capture_output=True)
    return cert, key


class ServerError(Exception):
    pass


class Unsupported(Exception):
    pass


class Server:
    """A running echo server, pinned to SERVER_CPU."""

    def __init__(self, spec: Spec, transport: str = "tcp", py_gc: str = "on", wrap: list[str] | None = None,
                 ready_timeout: float = 30.0):
        self.spec = spec
        self.transport = transport
        self.sock_path = None
        if transport == "unix":
            self.sock_path = f"{tempfile.gettempdir()}/flbench-{os.getpid()}-{re.sub(r'[^a-z0-9]+', '-', spec.key)}.sock"
            endpoint = ["--unix", self.sock_path]
        else:
            endpoint = ["--tcp", "127.0.0.1:0"]
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        self.log_path = WORK / "logs" / (re.sub(r"[^a-z0-9]+", "-", f"{spec.key}-{transport}") + ".log")
        self.log_file = open(self.log_path, "ab")
        argv = ["taskset", "-c", SERVER_CPU] + (wrap or []) + spec.argv(endpoint, py_gc)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log_file, stdin=subprocess.DEVNULL,
                                     cwd=ROOT)
        self.address = self._wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise ServerError(f"{self.spec.key}: not listening after {timeout:.0f} s")
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
            elif self.proc.poll() is not None:
                break
        line = buf.decode(errors="replace").strip().splitlines()[0] if buf.strip() else ""
        if line.startswith("LISTENING "):
            where = line.split(" ", 1)[1]
            return where.split(":", 1)[1]
        self.stop()
        if line.startswith("UNSUPPORTED "):
            raise Unsupported(line.split(" ", 1)[1])
        raise ServerError(f"{self.spec.key}: did not start ({line or 'no output'}); log tail: {self.log_tail()}")

    def endpoint_args(self) -> list[str]:
        return ["--unix", self.address] if self.transport == "unix" else ["--tcp", self.address]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 400) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.sock_path:
            try:
                os.unlink(self.sock_path)
            except OSError:
                pass
        return self.proc.returncode


# ---------------------------------------------------------------------------- /proc


def proc_stat_cpu() -> dict:
    """Machine-wide CPU counters (microseconds) from /proc/stat."""
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    v = [int(x) * 1e6 / hz for x in fields]
    total = sum(v[:8])
    idle = v[3] + v[4]
    return {"busy": total - idle, "steal": v[7] if len(v) > 7 else 0.0}


def proc_cpu_us(pid: int) -> float:
    hz = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) * 1e6 / hz


def children_cpu_us() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1e6


# ---------------------------------------------------------------------------- workloads


@dataclass
class Cell:
    id: str
    label: str
    kind: str  # pingpong, bulk, idle, tls (ping-pong over TLS)
    transport: str = "tcp"
    conns: int = 1
    size: int = 100
    depth: int = 1
    bulk: int = 0
    runs: int = 3
    reconnect: bool = False  # tls: every message on a new connection (a handshake)

    def loadgen_args(self, cfg: "Config") -> list[str]:
        a = ["--conns", str(self.conns), "--size", str(self.size)]
        if self.kind == "tls":
            a += ["--tls"] + (["--reconnect"] if self.reconnect else [])
        if self.kind == "pingpong":
            # Interleaved rounds (`Bench.run_interleaved`): short windows, each after a short warm-up.
            a += ["--depth", str(self.depth), "--duration", str(cfg.slice), "--warmup", str(cfg.slice_warmup)]
        elif self.kind == "tls":
            a += ["--depth", str(self.depth), "--duration", str(cfg.duration), "--warmup", str(cfg.warmup)]
        elif self.kind == "bulk":
            a += ["--bulk", str(self.bulk)]
        elif self.kind == "idle":
            a += ["--idle", "--hold", "0.5"]
        return a


def size_label(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB" if n < 1024 * MIB else f"{n // (1024 * MIB)} GiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def pp(size: int, conns: int, transport: str = "tcp", runs: int = 3) -> Cell:
    return Cell(
        id=f"pp-{transport}-{size}b-{conns}c",
        label=f"{size_label(size)} x{conns}" + (" unix" if transport == "unix" else ""),
        kind="pingpong",
        transport=transport,
        conns=conns,
        size=size,
        runs=runs,
    )


def tls_cells(runs: int) -> list[Cell]:
    return [
        Cell(id="tls-1k-50c", label="TLS 1 KiB x50", kind="tls", conns=50, size=1024, runs=runs),
        Cell(id="tls-handshake", label="TLS handshakes x8", kind="tls", conns=8, size=100, runs=runs, reconnect=True),
    ]


def matrix(quick: bool, runs: int | None) -> list[Cell]:
    """The workload cells. `runs`: rounds per cell (default: 15 ping-pong rounds in the full matrix, 6 in the
    QUICK subset, 3 for the other cells)."""
    pp_runs = runs or (6 if quick else 15)
    runs = runs or 3
    if quick:
        cells = [pp(100, 1, runs=pp_runs), pp(100, 50, runs=pp_runs), pp(64 * 1024, 50, runs=pp_runs)]
        cells.append(Cell(id="bulk-256m", label="bulk 256 MiB", kind="bulk", size=65536, bulk=256 * MIB, runs=1))
        cells.append(Cell(id="idle-1000", label="idle x1000", kind="idle", conns=1000, size=100, runs=1))
        return cells + tls_cells(runs)
    cells = [
        pp(100, 1, runs=pp_runs),
        pp(100, 50, runs=pp_runs),
        pp(100, 1000, runs=pp_runs),
        pp(1024, 50, runs=pp_runs),
        pp(64 * 1024, 50, runs=pp_runs),
        pp(100, 50, "unix", runs=pp_runs),
    ]
    cells.append(Cell(id="bulk-1g", label="bulk 1 GiB", kind="bulk", size=65536, bulk=1024 * MIB, runs=runs))
    cells.append(Cell(id="idle-10000", label="idle x10000", kind="idle", conns=10000, size=100, runs=1))
    return cells + tls_cells(runs)


@dataclass
class Config:
    quick: bool
    duration: float
    warmup: float
    slice: float
    slice_warmup: float
    runs: int | None
    py_gc: str
    callgrind: bool
    only: str | None
    cells_filter: str | None


# ---------------------------------------------------------------------------- set-up


def sh(argv: list, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(a) for a in argv))
    return subprocess.run([str(a) for a in argv], cwd=ROOT, **kw)


def setup(with_python: bool = True) -> dict:
    """Build the Rust binaries and the bench venv. Returns what is available."""
    info: dict = {"unavailable": {}}
    cargo = os.environ.get("CARGO", "cargo")
    r = sh([cargo, "build", "--release", "-q", "-p", "ferroloop-bench"])
    if r.returncode != 0:
        raise SystemExit("cargo build failed")
    if not with_python:
        return info
    stamp = VENV / (".stamp-" + hashlib.sha1(" ".join(VENV_REQUIRED + VENV_OPTIONAL).encode()).hexdigest()[:12])
    if not VPY.exists():
        r = sh([sys.executable, "-m", "venv", VENV])
        if r.returncode != 0:
            raise SystemExit("python3 -m venv failed")
    if not stamp.exists():
        r = sh([VPY, "-m", "pip", "install", "-q", "--disable-pip-version-check"] + VENV_REQUIRED)
        if r.returncode != 0:
            raise SystemExit("pip install of the bench venv's packages failed")
        ok = True
        for pkg in VENV_OPTIONAL:
            r = sh([VPY, "-m", "pip", "install", "-q", "--disable-pip-version-check", pkg])
            ok = ok and r.returncode == 0
        if ok:
            for old in VENV.glob(".stamp-*"):
                old.unlink()
            stamp.touch()
    # ferroloop's Python face: maturin --release (as `make develop`), as a wheel.
    wheels = WORK / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    env = dict(os.environ, VIRTUAL_ENV=str(VENV), PATH=f"{VENV / 'bin'}:{os.environ.get('PATH', '')}")
    r = sh([VENV / "bin" / "maturin", "build", "--release", "-q", "-i", VPY, "--out", wheels], env=env)
    built = sorted(wheels.glob("ferroloop-*.whl"))
    if r.returncode != 0 or not built:
        raise SystemExit("maturin build of ferroloop's Python face failed")
    r = sh([VPY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall", "--no-deps",
            built[-1]])
    if r.returncode != 0:
        raise SystemExit("pip install of the ferroloop wheel failed")
    return info


def py_available() -> dict[str, str | None]:
    """For each Python loop: None when importable, else the reason."""
    out: dict[str, str | None] = {}
    for lp in PY_LOOPS:
        if lp == "asyncio":
            out[lp] = None
            continue
        r = subprocess.run([str(VPY), "-c", f"import {lp}"], capture_output=True, text=True)
        out[lp] = None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["import failed"])[-1]
    return out


def versions() -> dict:
    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""

    v = {
        "rustc": cmd(["rustc", "--version"]),
        "python": cmd([str(VPY), "-c", "import sys; print(sys.version.split()[0])"]) if VPY.exists() else "",
    }
    if VPY.exists():
        code = ("import importlib.metadata as m\n"
                "for p in ('uvloop','rloop','ferroloop','matplotlib','uvicorn','httptools','aiohttp','websockets'):\n"
                "    try: print(p, m.version(p))\n"
                "    except Exception: print(p, '-')\n")
        for line in cmd([str(VPY), "-c", code]).splitlines():
            k, _, val = line.partition(" ")
            v[k] = val
    tokio = re.search(r'name = "tokio"\nversion = "([^"]+)"', (ROOT / "Cargo.lock").read_text())
    mio = re.search(r'name = "mio"\nversion = "([^"]+)"', (ROOT / "Cargo.lock").read_text())
    v["tokio"] = tokio.group(1) if tokio else ""
    v["mio"] = mio.group(1) if mio else ""
    return v


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "hostname": platform.node(),
        "loadavg_start": os.getloadavg(),
        "git": git + ("-dirty" if dirty else ""),
    }


# ---------------------------------------------------------------------------- runs


def run_loadgen(server: Server, args: list[str], timeout: float = 180.0, binary: Path = LOADGEN) -> dict:
    """One load-generator run against `server` (`binary`: loadgen, or wsload for websockets); returns its
    JSON plus machine-load figures."""
    cmd = ["taskset", "-c", LOADGEN_CPU, str(binary)] + server.endpoint_args() + args
    cmd += ["--server-pid", str(server.pid), "--timeout", str(int(timeout - 10))]
    s0, c0, t0 = proc_stat_cpu(), children_cpu_us(), time.monotonic()
    try:
        srv0 = proc_cpu_us(server.pid)
    except OSError:
        srv0 = None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"loadgen timed out after {timeout:.0f} s"}
    wall = time.monotonic() - t0
    s1, c1 = proc_stat_cpu(), children_cpu_us()
    try:
        srv1 = proc_cpu_us(server.pid)
    except OSError:
        srv1 = None
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res = {"ok": False, "error": f"loadgen exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    if p.returncode != 0 and res.get("ok"):
        res = {"ok": False, "error": f"loadgen exit {p.returncode}"}
    if srv0 is not None and srv1 is not None:
        add_machine_load(res, s0, s1, (srv1 - srv0) + (c1 - c0), wall)
    res["wall_s"] = round(wall, 3)
    return res if res.get("ok") else failed_run(server, res)


class LoadgenSession:
    """A load generator kept connected to one server for a whole cell (``--commands``): each ``run()`` measures
    one window on the same connections, so that windows of several servers can be interleaved finely."""

    def __init__(self, server: Server, args: list[str], timeout: float = 180.0):
        self.server = server
        cmd = ["taskset", "-c", LOADGEN_CPU, str(LOADGEN)] + server.endpoint_args() + args
        cmd += ["--commands", "--server-pid", str(server.pid), "--timeout", str(int(timeout - 10))]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.error: str | None = None

    def _line(self) -> dict | None:
        """The next JSON line of the load generator (None, with `error` set, if it ended)."""
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            err = self.proc.stderr.read().strip()[-300:]
            self.error = f"loadgen exit {self.proc.returncode}: {err}"
            return None
        try:
            return json.loads(line)
        except ValueError:
            self.error = f"loadgen printed {line.strip()[:200]!r}"
            return None

    def ready(self) -> bool:
        """Wait until every connection is open and primed."""
        return self.error is None and self._line() is not None

    def run(self) -> dict:
        """One measured window; the same fields as `run_loadgen`."""
        if self.error is not None:
            return {"ok": False, "error": self.error}
        s0, t0 = proc_stat_cpu(), time.monotonic()
        try:
            srv0, gen0 = proc_cpu_us(self.server.pid), proc_cpu_us(self.proc.pid)
            self.proc.stdin.write("run\n")
            self.proc.stdin.flush()
        except OSError as e:
            self.error = f"loadgen: {e}"
            return {"ok": False, "error": self.error}
        res = self._line()
        if res is None:
            return failed_run(self.server, {"ok": False, "error": self.error})
        wall = time.monotonic() - t0
        try:
            srv1, gen1 = proc_cpu_us(self.server.pid), proc_cpu_us(self.proc.pid)
            add_machine_load(res, s0, proc_stat_cpu(), (srv1 - srv0) + (gen1 - gen0), wall)
        except OSError:
            pass
        res["wall_s"] = round(wall, 3)
        return res if res.get("ok") else failed_run(self.server, res)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def add_machine_load(res: dict, s0: dict, s1: dict, ours_us: float, wall: float) -> None:
    """CPU used on this machine by anything but the server and the load generator during a run, and steal."""
    ncpu = os.cpu_count() or 1
    foreign = (s1["busy"] - s0["busy"]) - ours_us
    res["foreign_cpu_share"] = round(max(0.0, foreign) / (wall * 1e6 * ncpu), 4)
    res["steal_share"] = round((s1["steal"] - s0["steal"]) / (wall * 1e6 * ncpu), 4)


def failed_run(server: Server, res: dict) -> dict:
    """Add what helps to explain a failed run: the server's state and its fd limit."""
    res["server_alive"] = server.alive()
    if not server.alive():
        res["server_log_tail"] = server.log_tail()
    else:
        # Resource state at the failure (an fd limit is a common cause with many connections).
        try:
            for line in open(f"/proc/{server.pid}/limits"):
                if line.startswith("Max open files"):
                    res["server_nofile_limit"] = int(line.split()[3])
        except (OSError, ValueError, IndexError):
            pass
    return res


def med(values):
    vals = [v for v in values if isinstance(v, (int, float)) and v == v]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    s: dict = {"n": len(runs), "n_ok": len(ok), "errors": sorted({r.get("error", "?") for r in runs if not r.get("ok")})}
    if not ok:
        return s
    for k in ("server_cpu_us_per_msg", "server_sched_us_per_msg", "msgs_per_s", "mb_per_s", "lat_p50_us",
              "lat_p99_us", "server_util", "client_util", "foreign_cpu_share", "steal_share", "rss_per_conn_bytes",
              "server_fds_per_conn",
              "elapsed_s"):
        s[k] = med(r.get(k) for r in ok)
    # The headline: the scheduler's run time (ns resolution) where the kernel gives it, else utime+stime
    # (10 ms ticks: too coarse for short windows).
    s["server_us_per_msg"] = med(r.get("server_sched_us_per_msg") or r.get("server_cpu_us_per_msg") for r in ok)
    s["server_user_us_per_msg"] = med(
        r["server_user_us"] / r["messages"] for r in ok if r.get("server_user_us") is not None and r.get("messages"))
    s["server_cpu_s_per_gib"] = med(
        r["server_cpu_us"] / 1e6 / (r["bytes"] / (1024 * MIB)) for r in ok
        if r.get("server_cpu_us") is not None and r.get("bytes"))
    return s


class Bench:
    def __init__(self, cfg: Config, out: dict, unavailable_loops: dict[str, str]):
        self.cfg = cfg
        self.out = out
        self.pool: dict[tuple[str, str], Server] = {}
        self.unavailable = unavailable_loops
        self.unsupported: dict[str, str] = out.setdefault("unsupported", {})
        self.done = 0
        self.total = 0

    def specs(self, tls: bool = False) -> list[Spec]:
        specs = [s for s in (TLS_SPECS if tls else ALL_SPECS) if s.face == "rust" or s.impl not in self.unavailable]
        if self.cfg.only:
            specs = [s for s in specs if re.search(self.cfg.only, s.key)]
        return specs

    def server(self, spec: Spec, transport: str) -> Server | None:
        k = (spec.key, transport)
        unsup_key = f"{spec.key} {transport}"
        if unsup_key in self.unsupported:
            return None
        srv = self.pool.get(k)
        if srv is not None and srv.alive():
            return srv
        if srv is not None:
            srv.stop()
        try:
            srv = Server(spec, transport, self.cfg.py_gc)
        except Unsupported as e:
            self.unsupported[unsup_key] = str(e)
            log(f"  {spec.key} {transport}: unsupported: {e}")
            return None
        except ServerError as e:
            self.unsupported[unsup_key] = f"failed to start: {e}"
            log(f"  {spec.key} {transport}: {e}")
            return None
        self.pool[k] = srv
        return srv

    def stop_pool(self, transport: str | None = None) -> None:
        for k in list(self.pool):
            if transport is None or k[1] == transport:
                self.pool.pop(k).stop()

    def run_cells(self, cells: list[Cell]) -> None:
        self.total = sum((c.runs if c.kind != "idle" else 1) * len(self.specs(c.kind == "tls")) for c in cells)
        results = self.out.setdefault("cells", {})
        timing = self.out.setdefault("timing_s", {})
        for cell in cells:
            log(f"== {cell.label} ({cell.kind}, {cell.transport}, {cell.runs} run(s) per server)")
            t0 = time.monotonic()
            cres = results.setdefault(cell.id, {"cell": cell.__dict__, "servers": {}})
            specs = self.specs(cell.kind == "tls")
            if cell.kind == "idle":
                self.run_idle(cell, specs, cres)
                timing[cell.id] = round(time.monotonic() - t0, 1)
                continue
            if cell.kind == "pingpong":
                self.run_interleaved(cell, specs, cres)
            for rnd in range(cell.runs if specs and cell.kind != "pingpong" else 0):
                order = specs[rnd % len(specs):] + specs[:rnd % len(specs)]
                for spec in order:
                    self.done += 1
                    entry = cres["servers"].setdefault(spec.key, {"runs": []})
                    srv = self.server(spec, cell.transport)
                    if srv is None:
                        entry["unsupported"] = self.unsupported.get(f"{spec.key} {cell.transport}")
                        continue
                    r = run_loadgen(srv, cell.loadgen_args(self.cfg))
                    r["round"] = rnd
                    entry["runs"].append(r)
                    self.progress(spec, cell, r)
            for key, entry in cres["servers"].items():
                entry["summary"] = summarize(entry["runs"])
            if cell.transport == "unix":
                self.stop_pool("unix")
            timing[cell.id] = round(time.monotonic() - t0, 1)

    def run_interleaved(self, cell: Cell, specs: list[Spec], cres: dict) -> None:
        """Ping-pong rounds with every server's load generator connected for the whole cell: a round is one
        short window per server, in a rotated order, so that each server is measured across the same span of
        time, in many windows (the machine's slow and fast spells fall on all of them alike)."""
        sessions: dict[str, LoadgenSession] = {}
        for spec in specs:
            entry = cres["servers"].setdefault(spec.key, {"runs": []})
            srv = self.server(spec, cell.transport)
            if srv is None:
                entry["unsupported"] = self.unsupported.get(f"{spec.key} {cell.transport}")
                continue
            sessions[spec.key] = LoadgenSession(srv, cell.loadgen_args(self.cfg))
        for key, sess in list(sessions.items()):
            if not sess.ready():
                cres["servers"][key]["runs"].append(failed_run(sess.server, {"ok": False, "error": sess.error}))
                sess.close()
                del sessions[key]
        try:
            for rnd in range(cell.runs):
                order = specs[rnd % len(specs):] + specs[:rnd % len(specs)]
                for spec in order:
                    sess = sessions.get(spec.key)
                    if sess is None:
                        continue
                    self.done += 1
                    r = sess.run()
                    r["round"] = rnd
                    cres["servers"][spec.key]["runs"].append(r)
                    self.progress(spec, cell, r)
        finally:
            for sess in sessions.values():
                sess.close()

    def run_idle(self, cell: Cell, specs: list[Spec], cres: dict) -> None:
        for spec in specs:
            self.done += 1
            entry = cres["servers"].setdefault(spec.key, {"runs": []})
            try:
                srv = Server(spec, cell.transport, self.cfg.py_gc)
            except (Unsupported, ServerError) as e:
                entry["unsupported"] = str(e)
                continue
            try:
                time.sleep(0.2)
                r = run_loadgen(srv, cell.loadgen_args(self.cfg), timeout=120)
            finally:
                srv.stop()
            entry["runs"].append(r)
            entry["summary"] = summarize(entry["runs"])
            self.progress(spec, cell, r)

    def progress(self, spec: Spec, cell: Cell, r: dict) -> None:
        head = f"  [{self.done:3d}/{self.total}] {spec.key:26s}"
        if not r.get("ok"):
            log(f"{head} FAILED: {r.get('error')}")
        elif cell.kind == "idle":
            log(f"{head} {r.get('rss_per_conn_bytes')} B RSS/conn")
        elif cell.kind == "bulk":
            log(f"{head} {r.get('mb_per_s')} MB/s, server CPU {r.get('server_cpu_us', 0) / 1e6:.2f} s")
        else:
            log(f"{head} {r.get('server_sched_us_per_msg') or r.get('server_cpu_us_per_msg')} us/msg, {r.get('msgs_per_s'):.0f} msg/s, "
                f"p99 {r.get('lat_p99_us')} us, server util {r.get('server_util')}, other load {r.get('foreign_cpu_share')}")


# ---------------------------------------------------------------------------- callgrind


CALLGRIND_MESSAGES = (2000, 12000)


def callgrind_total(path: Path) -> int | None:
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def run_callgrind(bench: Bench, specs: list[Spec]) -> dict:
    """Instructions per message (user space) by difference of two runs of different lengths."""
    if not shutil.which("valgrind"):
        return {"available": False, "reason": "valgrind not installed"}
    out: dict = {"available": True, "messages": list(CALLGRIND_MESSAGES), "conns": 1, "size": 100, "servers": {}}
    cgdir = WORK / "callgrind"
    shutil.rmtree(cgdir, ignore_errors=True)
    cgdir.mkdir(parents=True)
    for spec in specs:
        totals = []
        err = None
        for m in CALLGRIND_MESSAGES:
            f = cgdir / (re.sub(r"[^a-z0-9]+", "-", spec.key) + f"-{m}.out")
            wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={f}"]
            try:
                srv = Server(spec, "tcp", bench.cfg.py_gc, wrap=wrap, ready_timeout=180)
            except (Unsupported, ServerError) as e:
                err = str(e)
                break
            try:
                r = run_loadgen(srv, ["--conns", "1", "--size", "100", "--messages", str(m), "--warmup", "0"],
                                timeout=600)
            finally:
                srv.stop(timeout=120)
            if not r.get("ok"):
                err = r.get("error")
                break
            totals.append(callgrind_total(f))
        if err or len(totals) != 2 or None in totals:
            out["servers"][spec.key] = {"error": err or "no callgrind totals"}
            log(f"  callgrind {spec.key}: {err or 'no totals'}")
            continue
        per = (totals[1] - totals[0]) / (CALLGRIND_MESSAGES[1] - CALLGRIND_MESSAGES[0])
        out["servers"][spec.key] = {"totals": totals, "instructions_per_msg": round(per)}
        log(f"  callgrind {spec.key}: {per:,.0f} instructions/msg")
    return out


# ---------------------------------------------------------------------------- reports


def fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, float) and v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def cell_value(out: dict, cell_id: str, key: str, field_: str = "server_us_per_msg"):
    e = out["cells"].get(cell_id, {}).get("servers", {}).get(key)
    if not e:
        return None
    s = e.get("summary") or {}
    if field_ == "server_us_per_msg" and field_ not in s:  # a run from before the headline field
        field_ = "server_cpu_us_per_msg"
    return s.get(field_)


def cell_note(out: dict, cell_id: str, key: str) -> str:
    e = out["cells"].get(cell_id, {}).get("servers", {}).get(key)
    if e is None:
        return "n/a"
    if e.get("unsupported"):
        return "unsupported"
    s = e.get("summary") or {}
    if not s.get("n_ok"):
        return "FAIL"
    if s["n_ok"] < s["n"]:
        return f"{s['n'] - s['n_ok']}/{s['n']} failed"
    return ""


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def round_cpu(entry: dict | None, field_: str | None = None) -> dict[int, float]:
    """CPU per message of each round's run of one server (scheduler run time, ns resolution; else utime+stime);
    or, with `field_`, that field of each round's run."""
    by_round: dict[int, float] = {}
    for i, r in enumerate((entry or {}).get("runs", [])):
        v = r.get(field_) if field_ else r.get("server_sched_us_per_msg") or r.get("server_cpu_us_per_msg")
        if r.get("ok") and v:
            by_round[r.get("round", i)] = v
    return by_round


def paired_ratio(out: dict, cell_id: str, key: str, base_key: str, field_: str | None = None) -> dict | None:
    """Median over rounds of the ratio between two servers' runs of the same round.

    The servers of a round run one after the other within seconds, so slow drift of the machine (which can move
    every server's CPU per message by 20 % or more between rounds on a shared VM) cancels in the ratio, which
    the ratio of two medians does not get; noise from one run to the next does not cancel (docs/benchmarks.md,
    change 23).
    """
    servers = out["cells"].get(cell_id, {}).get("servers", {})
    a, b = round_cpu(servers.get(key), field_), round_cpu(servers.get(base_key), field_)
    per_round = [a[k] / b[k] for k in sorted(a) if k in b]
    if not per_round:
        return None
    q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else (per_round[0],) * 3
    return {"median": statistics.median(per_round), "q1": q1, "q3": q3, "min": min(per_round),
            "max": max(per_round), "rounds": [round(x, 3) for x in per_round]}


def compute_ratios(out: dict) -> dict:
    """Ratios of server CPU per message within this run: of the medians, and paired by round."""
    ratios: dict = {}
    for cid, c in out["cells"].items():
        if c["cell"]["kind"] == "tls":
            rc = ratios.setdefault(cid, {})
            base = cell_value(out, cid, "py:uvloop/protocol+ssl")
            for spec in TLS_SPECS:
                v = cell_value(out, cid, spec.key)
                if v is not None:
                    rc[spec.key] = {"vs_uvloop": ratio(v, base)}
            continue
        if c["cell"]["kind"] != "pingpong":
            continue
        rc = ratios.setdefault(cid, {})
        for spec in ALL_SPECS:
            v = cell_value(out, cid, spec.key)
            if v is None:
                continue
            if spec.face == "python":
                base = f"py:uvloop/{spec.mode}"
                rc[spec.key] = {"vs_uvloop": ratio(v, cell_value(out, cid, base)),
                                "paired_vs_uvloop": paired_ratio(out, cid, spec.key, base)}
                if spec.impl == "ferroloop":
                    for other in ("asyncio", "rloop"):
                        rc[spec.key][f"paired_vs_{other}"] = paired_ratio(out, cid, spec.key,
                                                                          f"py:{other}/{spec.mode}")
                    rc[spec.key]["paired_vs_mio"] = paired_ratio(out, cid, spec.key, "rs:mio")
            else:
                rc[spec.key] = {"vs_tokio": ratio(v, cell_value(out, cid, "rs:tokio")),
                                "vs_mio": ratio(v, cell_value(out, cid, "rs:mio")),
                                "paired_vs_tokio": paired_ratio(out, cid, spec.key, "rs:tokio"),
                                "paired_vs_mio": paired_ratio(out, cid, spec.key, "rs:mio")}
    return ratios


def markdown(out: dict) -> str:
    cells = [c for c in out["cells"].values()]
    pcells = [c for c in cells if c["cell"]["kind"] == "pingpong"]
    bulk = [c for c in cells if c["cell"]["kind"] == "bulk"]
    idle = [c for c in cells if c["cell"]["kind"] == "idle"]
    present = [s for s in ALL_SPECS if any(s.key in c["servers"] for c in cells)]
    m = out["machine"]
    L = []
    scope = "QUICK subset" if out["config"]["quick"] else "full matrix"
    L.append(f"Run {out['started']} ({scope + ', filtered' if out.get('partial') else scope}, "
             f"{rounds_text(cells)}, median; {windows_text(out['config'])}), ferroloop {m['git']}.")
    L.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}; "
             f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}. "
             f"Server on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}.")
    v = out.get("versions", {})
    L.append(f"Versions: {v.get('rustc', '')}; tokio {v.get('tokio')}, mio {v.get('mio')}; Python {v.get('python')}, "
             f"uvloop {v.get('uvloop')}, rloop {v.get('rloop')}.")
    if out.get("config", {}).get("py_gc") != "on":
        L.append(f"**Python servers ran with the cyclic GC {out['config']['py_gc']} (diagnostic run).**")
    for k, why in out.get("unavailable", {}).items():
        L.append(f"Unavailable: {k}: {why}.")
    L.append("")

    def table(title, specs, note_fn):
        if not pcells or not specs:
            return
        L.append(f"### {title}")
        L.append("")
        L.append("| server | " + " | ".join(c["cell"]["label"] for c in pcells) + " |")
        L.append("|---|" + "---|" * len(pcells))
        for s in specs:
            row = []
            for c in pcells:
                v = cell_value(out, c["cell"]["id"], s.key)
                note = cell_note(out, c["cell"]["id"], s.key)
                txt = fmt(v, 2) if v is not None else (note or "—")
                extra = note_fn(c["cell"]["id"], s) if v is not None else ""
                if v is not None and note:
                    extra += f" ({note})"
                row.append(txt + extra)
            L.append(f"| {s.key} | " + " | ".join(row) + " |")
        loads = []
        for c in pcells:
            sh_ = [r.get("foreign_cpu_share") for k, e in c["servers"].items() if k in {x.key for x in specs}
                   for r in e["runs"] if r.get("foreign_cpu_share") is not None]
            loads.append(f"{100 * statistics.median(sh_):.0f}%" if sh_ else "—")
        L.append("| *other load on the machine (median)* | " + " | ".join(loads) + " |")
        L.append("")

    rat = out.get("ratios", {})

    def py_note(cid, s):
        r = rat.get(cid, {}).get(s.key, {}).get("vs_uvloop")
        return f" ({r:.2f}×)" if r is not None and s.impl != "uvloop" else ""

    def rs_note(cid, s):
        r = rat.get(cid, {}).get(s.key, {})
        if s.impl != "ferroloop" or r.get("vs_tokio") is None:
            return ""
        return f" ({r['vs_tokio']:.2f}× tokio, {r['vs_mio']:.2f}× mio)" if r.get("vs_mio") else f" ({r['vs_tokio']:.2f}× tokio)"

    if pcells:
        L.append("Server CPU time per message, µs (the server process's run time from /proc/PID/schedstat, else "
                 "utime+stime, / messages echoed; lower is better). A message is one request of the given size "
                 "echoed back; `x50` = 50 connections, each with one message in flight.")
        L.append("")
    table("Python face (ratio against uvloop in the same mode)", [s for s in present if s.face == "python"], py_note)
    table("Rust face (ratio against tokio current_thread and the raw mio loop)", [s for s in present if s.face == "rust"],
          rs_note)
    paired_tables(L, out, pcells, present)

    # Throughput and latency.
    if pcells:
        throughput_tables(L, out, pcells, present)
    bulk_idle_tables(L, out, bulk, idle, present)
    tls_table(L, out, [c for c in cells if c["cell"]["kind"] == "tls"])
    import servers

    servers.markdown(L, out)
    return tail_sections(L, out, cells)


def windows_text(config: dict) -> str:
    """The measured windows, e.g. "ping-pong windows 0.2 s after 0.05 s warm-up, interleaved; TLS 0.5 s after 0.15 s"."""
    tls = f"TLS windows {config['duration']} s after {config['warmup']} s warm-up"
    if "slice" not in config:  # a run from before interleaved rounds
        return f"window {config['duration']} s after {config['warmup']} s warm-up"
    return (f"ping-pong windows {config['slice']} s after {config['slice_warmup']} s warm-up, servers interleaved "
            f"within each round on connections kept for the cell; {tls}")


def rounds_text(cells: list[dict]) -> str:
    """How many rounds the cells ran, e.g. "5 rounds per ping-pong cell, 3 per bulk and TLS cell"."""
    by_kind: dict[str, set] = {}
    for c in cells:
        if c["cell"]["kind"] != "idle":
            by_kind.setdefault(c["cell"]["kind"], set()).add(c["cell"]["runs"])
    names = {"pingpong": "ping-pong"}
    parts = [f"{'/'.join(map(str, sorted(n)))} round(s) per {names.get(kind, kind)} cell"
             for kind, n in by_kind.items()]
    return ", ".join(parts) or "no rounds"


def paired_tables(L, out, pcells, present):
    """The goals' ratios, paired by round: median over rounds, and the middle half of the rounds."""
    rat = out.get("ratios", {})
    rows = []  # (label, server key, ratio key(s))
    for s in present:
        if s.impl != "ferroloop":
            continue
        if s.face == "python":
            rows.append((f"{s.key} vs uvloop/{s.mode}", s.key, ["paired_vs_uvloop"]))
            rows.append((f"{s.key} vs the best of uvloop, asyncio, rloop", s.key,
                         ["paired_vs_uvloop", "paired_vs_asyncio", "paired_vs_rloop"]))
            rows.append((f"{s.key} vs rs:mio", s.key, ["paired_vs_mio"]))
        else:
            rows.append((f"{s.key} vs rs:tokio", s.key, ["paired_vs_tokio"]))
            rows.append((f"{s.key} vs rs:mio", s.key, ["paired_vs_mio"]))
    if not rows or not any(rat.get(c["cell"]["id"]) for c in pcells):
        return
    L.append("### Ratios paired by round")
    L.append("")
    L.append("Each round runs every server once, one after the other; the ratio of two servers' CPU per message in "
             "the same round cancels the machine's slow drift between rounds (not the noise of single runs). "
             "Median over the rounds [first, third quartile of the rounds; lowest and highest in the JSON]: the "
             "quartiles say how far single rounds stray, the median of 15 rounds is far steadier than that (from "
             "one full run to the next it moves by up to about 0.05). Against the best of several loops: the highest of the paired medians against each of them, "
             "with the loop it is against (at or below 1.00 means at or below all of them).")
    L.append("")
    L.append("| ferroloop against | " + " | ".join(c["cell"]["label"] for c in pcells) + " |")
    L.append("|---|" + "---|" * len(pcells))
    for label, key, rkeys in rows:
        cells_txt = []
        for c in pcells:
            cid = c["cell"]["id"]
            if len(rkeys) == 1:
                pr = (rat.get(cid, {}).get(key) or {}).get(rkeys[0])
            else:
                pr = worst_of(out, cid, key, rkeys)
            vs = f" {pr['against']}" if pr and pr.get("against") else ""
            lo, hi = pr.get("q1", pr.get("min")) if pr else None, pr.get("q3", pr.get("max")) if pr else None
            cells_txt.append(f"{pr['median']:.2f} [{lo:.2f}, {hi:.2f}]{vs}" if pr else "—")
        L.append(f"| {label} | " + " | ".join(cells_txt) + " |")
    L.append("")


def worst_of(out: dict, cell_id: str, key: str, rkeys: list[str]) -> dict | None:
    """The paired ratio of `key` against the peer it fares worst against: the highest of its paired medians
    against each of several peers, with that peer's spread of rounds. (The median over rounds of each
    round's highest ratio would be biased upwards: with noisy rounds, the highest of three ratios exceeds
    each of them on most rounds even when the loops are equal.)"""
    peer = out.get("ratios", {}).get(cell_id, {}).get(key) or {}
    found = [(pr, rk) for rk in rkeys if (pr := peer.get(rk))]
    if not found:
        return None
    pr, rk = max(found, key=lambda x: x[0]["median"])
    return dict(pr, against=rk.removeprefix("paired_vs_"))


def tls_table(L, out, tcells):
    if not tcells:
        return
    rat = out.get("ratios", {})
    L.append("### TLS (Python face, Protocol mode)")
    L.append("")
    L.append("Server CPU time per message, µs, with the ratio against uvloop with an `ssl.SSLContext`, and msg/s. "
             "`+ssl`: an `ssl.SSLContext` (on ferroloop: asyncio's SSLProtocol over the engine's transport); "
             "`+rustls`: ferroloop's fast path, `ferroloop.TLSContext`. TLS 1.3, ECDSA P-256 certificate, the load "
             "generator is a rustls client. Handshakes: each connection echoes one 100 B message, closes and "
             "reconnects (8 at a time, no session resumption): the CPU per message is the CPU per handshake, and its "
             "inverse the handshakes per second one server core can do.")
    L.append("")
    L.append("| server | " + " | ".join(f"{c['cell']['label']} µs/msg | msg/s" for c in tcells) + " |")
    L.append("|---|" + "---|---|" * len(tcells))
    for s in TLS_SPECS:
        if not any(s.key in c["servers"] for c in tcells):
            continue
        row = []
        for c in tcells:
            cid = c["cell"]["id"]
            v = cell_value(out, cid, s.key)
            if v is None:
                row += [cell_note(out, cid, s.key) or "—", ""]
                continue
            r = rat.get(cid, {}).get(s.key, {}).get("vs_uvloop")
            row.append(fmt(v, 1) + (f" ({r:.2f}×)" if r is not None and s.impl != "uvloop" else ""))
            row.append(f"{cell_value(out, cid, s.key, 'msgs_per_s'):,.0f}")
        L.append(f"| {s.key} | " + " | ".join(row) + " |")
    L.append("")


def throughput_tables(L, out, pcells, present):
    L.append("### Throughput and latency")
    L.append("")
    L.append("msg/s, and round-trip latency p50 / p99 in µs, medians of the runs. Throughput depends on the load "
             "generator too (it has one core); CPU per message does not.")
    L.append("")
    L.append("| server | " + " | ".join(c["cell"]["label"] for c in pcells) + " |")
    L.append("|---|" + "---|" * len(pcells))
    for s in present:
        row = []
        for c in pcells:
            cid = c["cell"]["id"]
            r = cell_value(out, cid, s.key, "msgs_per_s")
            if r is None:
                row.append(cell_note(out, cid, s.key) or "—")
                continue
            row.append(f"{r / 1000:.1f}k · {fmt(cell_value(out, cid, s.key, 'lat_p50_us'), 0)}/"
                       f"{fmt(cell_value(out, cid, s.key, 'lat_p99_us'), 0)}")
        L.append(f"| {s.key} | " + " | ".join(row) + " |")
    L.append("")
    L.append("User-space share of the server's CPU time (utime / (utime+stime)), the part the event loop itself "
             "controls; the rest is the kernel's TCP path:")
    L.append("")
    L.append("| server | " + " | ".join(c["cell"]["label"] for c in pcells) + " |")
    L.append("|---|" + "---|" * len(pcells))
    for s in present:
        row = []
        for c in pcells:
            cid = c["cell"]["id"]
            u, t = cell_value(out, cid, s.key, "server_user_us_per_msg"), cell_value(out, cid, s.key, "server_cpu_us_per_msg")
            row.append(f"{100 * u / t:.0f}%" if u is not None and t else "—")
        L.append(f"| {s.key} | " + " | ".join(row) + " |")
    L.append("")


def bulk_idle_tables(L, out, bulk, idle, present):
    if bulk or idle:
        cols = [c["cell"]["label"] + h for c in bulk for h in (" MB/s", " server CPU s/GiB")]
        cols += [c["cell"]["label"] + h for c in idle for h in (" RSS/conn", " fds/conn")]
        L.append("### Bulk transfer and idle connections")
        L.append("")
        L.append("Bulk: one connection streams the bytes through the echo server and back (1 MiB window), MB/s of "
                 "echoed data; idle: growth of the server's RSS per connection (VmRSS, user-space memory only; kernel "
                 "socket buffers are not in it), each server in a fresh process; fds/conn: growth of the server's open file descriptors per connection.")
        L.append("")
        L.append("| server | " + " | ".join(cols) + " |")
        L.append("|---|" + "---|" * len(cols))
        for s in present:
            row = []
            for c in bulk:
                cid = c["cell"]["id"]
                mb = cell_value(out, cid, s.key, "mb_per_s")
                row.append(fmt(mb, 0) if mb is not None else (cell_note(out, cid, s.key) or "—"))
                row.append(fmt(cell_value(out, cid, s.key, "server_cpu_s_per_gib"), 2))
            for c in idle:
                cid = c["cell"]["id"]
                b = cell_value(out, cid, s.key, "rss_per_conn_bytes")
                row.append(f"{b / 1024:.1f} KiB" if b is not None else (cell_note(out, cid, s.key) or "—"))
                row.append(fmt(cell_value(out, cid, s.key, "server_fds_per_conn"), 2))
            L.append(f"| {s.key} | " + " | ".join(row) + " |")
        L.append("")


def tail_sections(L, out, cells):
    cg = out.get("callgrind")
    if cg and cg.get("available") and cg.get("servers"):
        L.append("### Instructions per message (callgrind)")
        L.append("")
        L.append(f"User-space instructions per message, 1 connection, 100 B ping-pong: the difference between a "
                 f"{cg['messages'][1]:,}-message and a {cg['messages'][0]:,}-message run, divided by the difference "
                 f"(start-up cancels out). Kernel work is not counted.")
        L.append("")
        L.append("| server | instructions/msg | ratio |")
        L.append("|---|---|---|")
        base_py = cg["servers"].get("py:uvloop/protocol", {}).get("instructions_per_msg")
        base_rs = cg["servers"].get("rs:tokio", {}).get("instructions_per_msg")
        for key, e in cg["servers"].items():
            if "instructions_per_msg" not in e:
                L.append(f"| {key} | {e.get('error', 'error')} | |")
                continue
            base = base_py if key.startswith("py:") else base_rs
            rr = f"{e['instructions_per_msg'] / base:.2f}× {'uvloop' if key.startswith('py:') else 'tokio'}" if base else ""
            L.append(f"| {key} | {e['instructions_per_msg']:,} | {rr} |")
        L.append("")
    elif cg and not cg.get("available"):
        L.append(f"Instructions per message: not measured ({cg.get('reason')}).")
        L.append("")

    unsup = out.get("unsupported", {})
    failures = []
    for c in cells:
        for key, e in c["servers"].items():
            s = e.get("summary") or {}
            if s.get("errors"):
                fds = [(r["server_fds_at_failure"], r.get("server_nofile_limit")) for r in e["runs"]
                       if "server_fds_at_failure" in r]
                extra = (f" (the server had {fds[-1][0]:,} fds open at the failure; its limit: {fds[-1][1]:,})"
                         if fds and c["cell"]["kind"] == "idle" and fds[-1][1] else "")
                failures.append(f"- {c['cell']['label']}, {key}: {s['n'] - s['n_ok']}/{s['n']} runs failed: "
                                f"{'; '.join(s['errors'])[:300]}{extra}")
    if unsup or failures:
        L.append("### Not measured or failed")
        L.append("")
        for k, why in unsup.items():
            L.append(f"- {k}: {why}")
        L.extend(failures)
        L.append("")
    share = [r.get("foreign_cpu_share") for c in cells for e in c["servers"].values() for r in e["runs"]
             if r.get("foreign_cpu_share") is not None]
    if share:
        L.append(f"Other load on the machine during the runs (CPU share of both cores used by neither the server nor "
                 f"the load generator): median {100 * statistics.median(share):.1f}%, max {100 * max(share):.1f}%.")
        L.append("")
    return "\n".join(L)


def update_docs(md: str, chart_rel: str) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if not DOCS.exists():
        log(f"{DOCS} does not exist: not updated")
        return
    text = DOCS.read_text()
    if start not in text or end not in text:
        log(f"{DOCS} has no results markers: not updated")
        return
    block = f"{start}\n\n{md}\n![Server CPU per message, throughput and memory]({chart_rel})\n\n{end}"
    text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    DOCS.write_text(text)
    log(f"updated {DOCS.relative_to(ROOT)}")


# ---------------------------------------------------------------------------- smoke


def smoke(args) -> int:
    """Every server echoes byte-exact, over TCP and Unix sockets; the server cells' servers answer right
    (bench/servers.py). No timing."""
    if not args.no_setup:
        setup()
    avail = py_available()
    workloads = [
        ("1 B x4, 200 msgs", ["--conns", "4", "--size", "1", "--messages", "200", "--warmup", "0"]),
        ("100 B x32, 3000 msgs", ["--conns", "32", "--size", "100", "--messages", "3000", "--warmup", "0"]),
        ("64 KiB x3 depth 2, 60 msgs", ["--conns", "3", "--size", "65536", "--depth", "2", "--messages", "60",
                                        "--warmup", "0"]),
        ("stream 4 MiB x2", ["--conns", "2", "--size", "1000", "--bulk", str(4 * MIB)]),
    ]
    tls_workloads = [
        ("TLS 1 KiB x4, 300 msgs", ["--tls", "--conns", "4", "--size", "1024", "--messages", "300", "--warmup", "0"]),
        ("TLS 64 KiB x2, 20 msgs", ["--tls", "--conns", "2", "--size", "65536", "--messages", "20", "--warmup", "0"]),
        ("TLS reconnect x4, 40 handshakes", ["--tls", "--reconnect", "--conns", "4", "--size", "100", "--messages",
                                             "40", "--warmup", "0"]),
    ]
    passed = failed = skipped = 0
    import servers

    wrk, why = servers.ensure_wrk(install=not args.no_setup)
    if not wrk:
        log(f"SKIP wrk runs: {why}")
    p, f, k = servers.smoke(args.only, avail, wrk)
    passed, failed, skipped = passed + p, failed + f, skipped + k
    for spec in ALL_SPECS + TLS_SPECS:
        if args.only and not re.search(args.only, spec.key):
            continue
        if spec.face == "python" and avail.get(spec.impl):
            log(f"SKIP {spec.key}: {avail[spec.impl]}")
            skipped += 1
            continue
        for transport in ("tcp",) if spec.tls else ("tcp", "unix"):
            try:
                srv = Server(spec, transport, args.py_gc)
            except Unsupported as e:
                log(f"SKIP {spec.key} {transport}: {e}")
                skipped += 1
                continue
            except ServerError as e:
                log(f"FAIL {spec.key} {transport}: {e}")
                failed += 1
                continue
            try:
                for name, wl in tls_workloads if spec.tls else workloads:
                    r = run_loadgen(srv, wl, timeout=60)
                    if r.get("ok"):
                        passed += 1
                        log(f"ok   {spec.key} {transport} {name}")
                    else:
                        failed += 1
                        log(f"FAIL {spec.key} {transport} {name}: {r.get('error')}")
                        if not srv.alive():
                            srv.stop()
                            srv = Server(spec, transport, args.py_gc)
            finally:
                rc = srv.stop()
            if rc not in (0, None):
                failed += 1
                log(f"FAIL {spec.key} {transport}: exit status {rc} after SIGTERM; log: {srv.log_tail(300)}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description="ferroloop benchmarks", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"),
                    help="the QUICK subset (also QUICK=1 in the environment)")
    ap.add_argument("--smoke", action="store_true", help="correctness only: every server echoes byte-exact")
    ap.add_argument("--runs", type=int, help="rounds per cell (default: ping-pong 15 in the full matrix, 6 in the "
                                             "QUICK subset; else 3)")
    ap.add_argument("--duration", type=float, help="measured window per run of the TLS cells, s (default 0.5)")
    ap.add_argument("--warmup", type=float, help="warm-up per run of the TLS cells, s (default 0.15)")
    ap.add_argument("--slice", type=float, help="measured window per round of a ping-pong cell, s (default 0.2)")
    ap.add_argument("--slice-warmup", type=float, help="warm-up before each ping-pong window, s (default 0.05)")
    ap.add_argument("--only", help="regex on server keys (rs:mio, py:uvloop/protocol, ...)")
    ap.add_argument("--cells", help="regex on cell ids (pp-tcp-100b-50c, bulk-1g, idle-10000, srv-uvicorn-13b, "
                                    "srv- for the server cells, ...)")
    ap.add_argument("--no-setup", action="store_true", help="skip cargo build, venv and wheel (use what is there)")
    ap.add_argument("--callgrind", choices=["auto", "on", "off"], default="auto",
                    help="instructions per message under callgrind (auto: full, unfiltered runs only)")
    ap.add_argument("--py-gc", choices=["on", "off"], default="on",
                    help="off: Python servers run with gc.disable() (a diagnostic, not the default)")
    ap.add_argument("--docs", choices=["auto", "on", "off"], default="auto",
                    help="update docs/benchmarks.md's results section (auto: full runs only)")
    args = ap.parse_args()

    if args.smoke:
        return smoke(args)

    quick = args.quick
    cfg = Config(
        quick=quick,
        duration=args.duration or 0.5,
        warmup=args.warmup if args.warmup is not None else 0.15,
        slice=args.slice or 0.2,
        slice_warmup=args.slice_warmup if args.slice_warmup is not None else 0.05,
        runs=args.runs,
        py_gc=args.py_gc,
        callgrind=(args.callgrind == "on") or (args.callgrind == "auto" and not quick and not args.only
                                                 and not args.cells),
        only=args.only,
        cells_filter=args.cells,
    )
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs: the server and the load generator share a core")
    t_start = time.monotonic()
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    out: dict = {"started": started.isoformat().replace("+00:00", "Z"), "config": cfg.__dict__, "machine": machine()}
    if not args.no_setup:
        setup()
    out["timing_s"] = {"setup": round(time.monotonic() - t_start, 1)}
    avail = py_available()
    out["unavailable"] = {f"py:{k}": v for k, v in avail.items() if v}
    out["versions"] = versions()
    bench = Bench(cfg, out, {k: v for k, v in avail.items() if v})

    import servers

    cells, scells = matrix(quick, cfg.runs), servers.server_cells(quick, cfg.runs)
    if cfg.cells_filter:
        cells = [c for c in cells if re.search(cfg.cells_filter, c.id)]
        scells = [c for c in scells if re.search(cfg.cells_filter, c.id)]
    wrk, why = servers.ensure_wrk(install=not args.no_setup) if any(c.kind == "http" for c in scells) else (None, "")
    try:
        bench.run_cells(cells)
        servers.run_cells(bench, scells, wrk, why)
    finally:
        bench.stop_pool()
    if cfg.callgrind:
        log("== callgrind: instructions per message")
        keys = {"rs:ferroloop/protocol", "rs:ferroloop/buffered", "rs:tokio", "rs:mio", "py:ferroloop/protocol",
                "py:uvloop/protocol", "py:asyncio/protocol", "py:rloop/protocol"}
        t0 = time.monotonic()
        out["callgrind"] = run_callgrind(bench, [s for s in bench.specs() if s.key in keys])
        out["timing_s"]["callgrind"] = round(time.monotonic() - t0, 1)
    out["ratios"] = compute_ratios(out)
    out["ratios"].update(servers.compute_ratios(out))
    out["elapsed_s"] = round(time.monotonic() - t_start, 1)

    # A filtered run (--only/--cells) is partial: it goes to bench/target/partial, not to the results.
    partial = bool(cfg.only or cfg.cells_filter)
    out["partial"] = partial
    dest = WORK / "partial" if partial else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if quick else "") + ("-gc-off" if cfg.py_gc != "on" else "")
    jpath = dest / f"{stamp}.json"
    jpath.write_text(json.dumps(out, indent=1, default=str) + "\n")
    md = markdown(out)
    latest = "latest" if cfg.py_gc == "on" else "latest-gc-off"
    (dest / f"{latest}.md").write_text(f"# Benchmark results\n\nFrom `{jpath.name}`.\n\n{md}\n")
    chart = dest / f"{latest}.png"
    r = subprocess.run([str(VPY), str(BENCH / "chart.py"), str(jpath), str(chart)], cwd=ROOT)
    if r.returncode != 0:
        log("chart: failed (see above)")
    if args.docs == "on" or (args.docs == "auto" and not quick and not partial and cfg.py_gc == "on"):
        update_docs(f"Results file: `bench/results/{jpath.name}`.\n\n{md}", "../bench/results/latest.png")
    log(f"wrote {jpath.relative_to(ROOT)}, {latest}.md and {latest}.png beside it ({out['elapsed_s']:.0f} s)")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
