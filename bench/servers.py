"""Server cells of the benchmark driver (bench/run.py): real servers on each asyncio loop.

Cells (ids for ``--cells``; the QUICK subset runs srv-uvicorn-13b and srv-churn):

* ``srv-uvicorn-13b``, ``srv-uvicorn-10k``: uvicorn with httptools serving a hello-world ASGI app
  (bench/servers/hello.py) with a 13 B or a 10 KiB body, started as a user starts it
  (``python -m uvicorn ... --loop ferroloop:new_event_loop``; ``--loop uvloop``, ``--loop asyncio``,
  ``--loop rloop:new_event_loop``), no access log. Load: ``wrk -t1 -c50 --latency``, 50 keep-alive
  connections.
* ``srv-aiohttp-13b``, ``srv-aiohttp-10k``: aiohttp.web, the same responses and load, the loop handed to
  ``web.run_app(app, loop=...)`` (bench/servers/aiohttp_hello.py).
* ``srv-ws-1k``: a websockets echo server (``websockets.asyncio.server.serve``, bench/servers/ws_echo.py),
  1 KiB binary messages on 50 connections, each with one message in flight; load: the Rust client
  ``wsload`` (bench/src/bin/wsload.rs), which verifies every echoed byte.
* ``srv-churn``: connection churn against the protocol echo server (bench/servers/echo.py): 16 client
  slots, each connects, echoes one 100 B message, closes and connects again (``loadgen --reconnect``);
  the figures are connections per second and server CPU per connection.

The method is the echo cells': the server pinned to CPU 0, the load to CPU 1; every round runs each loop
once, in a rotated order, each run after its own warm-up; the server's CPU time is its scheduler run
time (/proc/PID/task/*/schedstat) across the measured window, divided by the requests (messages,
connections) served in it; medians over rounds, and ratios against uvloop paired by round. wrk's window
is timed here (wrk counts whole seconds): the server's CPU is read just before wrk starts and after it
ends, so the window also holds wrk's connection set-up and close (50 connections against thousands of
requests). A loop that cannot run a server is recorded as unsupported.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import run as R  # the driver; run.py registers itself under this name before importing this module

LOOPS = ["ferroloop", "uvloop", "asyncio", "rloop"]
# uvicorn's --loop for each: its own names where it has one, else an import string of a loop factory.
UVICORN_LOOP = {"ferroloop": "ferroloop:new_event_loop", "uvloop": "uvloop", "asyncio": "asyncio",
                "rloop": "rloop:new_event_loop"}
SCRIPTS = R.BENCH / "servers"
WSLOAD = R.TARGET / "wsload"
WRK_SCRIPT = SCRIPTS / "wrk_report.lua"
# Goals (issue 19): ferroloop's server CPU per request against uvloop's, paired by round, and churn rate.
CPU_GOAL = 0.90
CHURN_GOAL = 1.00


@dataclass
class ServerCell:
    id: str
    label: str
    kind: str  # http, ws, churn
    app: str  # uvicorn, aiohttp, websockets, echo
    size: int  # http: body bytes; ws and churn: message bytes
    conns: int
    runs: int
    duration: float  # measured window, s (wrk: whole seconds)
    warmup: float


def server_cells(quick: bool, runs: int | None) -> list[ServerCell]:
    n = runs or (3 if quick else 5)
    dur = 1 if quick else 2
    cells = [ServerCell(f"srv-{app}-{'13b' if size == 13 else '10k'}", f"{app} {R.size_label(size)}", "http", app,
                        size, 50, n, dur, 1) for app in ("uvicorn", "aiohttp") for size in (13, 10 * 1024)]
    cells.append(ServerCell("srv-ws-1k", "websockets 1 KiB x50", "ws", "websockets", 1024, 50, n, dur, 0.5))
    cells.append(ServerCell("srv-churn", "churn x16", "churn", "echo", 100, 16, n, dur / 2, 0.25))
    return [c for c in cells if c.id in ("srv-uvicorn-13b", "srv-churn")] if quick else cells


# ---------------------------------------------------------------------------- wrk


def ensure_wrk(install: bool = True) -> tuple[str | None, str]:
    """wrk's path (or None) and, when missing, why. Installs the Debian package when it is missing, as the
    Makefile's apt-deps does: apt-get update first when the package lists are empty, and again if the
    install fails (mirrors from the machine's apt configuration)."""
    path = shutil.which("wrk")
    if path or not install:
        return path, "" if path else "wrk is not installed (Debian package wrk)"
    if not shutil.which("apt-get"):
        return None, "wrk is not installed and there is no apt-get"
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    update = sudo + env + ["apt-get", "update", "-q"]
    inst = sudo + env + ["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"]
    if not list(Path("/var/lib/apt/lists").glob("*_Packages*")):
        R.sh(update)
    if R.sh(inst).returncode != 0:
        R.sh(update)
        R.sh(inst)
    path = shutil.which("wrk")
    return path, "" if path else "wrk could not be installed (apt-get install wrk failed)"


def cpu_sample(pid: int) -> dict:
    """utime+stime and utime (µs, clock ticks) and the schedstat run time of all threads (µs)."""
    hz = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    sched_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                sched_ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return {"stat": (int(rest[11]) + int(rest[12])) * 1e6 / hz, "user": int(rest[11]) * 1e6 / hz,
            "sched": sched_ns / 1e3}


def run_wrk(wrk: str, srv, cell: ServerCell, seconds: float) -> dict:
    """One wrk run against `srv`, with the server's CPU across it; the fields of a loadgen run."""
    cmd = ["taskset", "-c", R.LOADGEN_CPU, wrk, "-t1", f"-c{cell.conns}", f"-d{max(1, round(seconds))}s",
           "--latency", "-s", str(WRK_SCRIPT), f"http://{srv.address}/"]
    try:
        m0, c0, a = R.proc_stat_cpu(), R.children_cpu_us(), cpu_sample(srv.pid)
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        wall = time.monotonic() - t0
        b, m1, c1 = cpu_sample(srv.pid), R.proc_stat_cpu(), R.children_cpu_us()
    except subprocess.TimeoutExpired:
        return R.failed_run(srv, {"ok": False, "error": "wrk timed out"})
    except OSError as e:
        return R.failed_run(srv, {"ok": False, "error": f"server CPU: {e}"})
    line = next((x for x in p.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if p.returncode != 0 or line is None:
        return R.failed_run(srv, {"ok": False, "error": f"wrk exit {p.returncode}: {p.stderr.strip()[-300:]}"})
    w = json.loads(line.split(" ", 1)[1])
    n, el = w["requests"], w["duration_us"] / 1e6
    res = {"ok": n > 0, "kind": "http", "conns": cell.conns, "size": cell.size, "elapsed_s": round(el, 4),
           "messages": n, "msgs_per_s": n / el, "lat_p50_us": w["lat_p50_us"], "lat_p99_us": w["lat_p99_us"],
           "lat_max_us": w["lat_max_us"], "bytes_per_response": round(w["bytes"] / n, 1) if n else None,
           "wrk_errors": w["errors"], "server_cpu_us": b["stat"] - a["stat"],
           "server_user_us": b["user"] - a["user"], "server_sched_us": b["sched"] - a["sched"],
           "server_util": round((b["sched"] - a["sched"]) / (wall * 1e6), 3)}
    if n:
        res["server_cpu_us_per_msg"] = res["server_cpu_us"] / n
        res["server_sched_us_per_msg"] = res["server_sched_us"] / n
    errors = {k: v for k, v in w["errors"].items() if v}
    if errors or not n:
        res["ok"] = False
        res["error"] = f"wrk: {n} requests, errors {errors}"
    R.add_machine_load(res, m0, m1, (b["stat"] - a["stat"]) + (c1 - c0), wall)
    res["wall_s"] = round(wall, 3)
    return res if res["ok"] else R.failed_run(srv, res)


# ---------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(address: str, timeout: float = 2.0, requests: int = 1) -> list[tuple[int, bytes]]:
    """`requests` GETs of / on one keep-alive connection: (status, body) of each."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        out = []
        for _ in range(requests):
            conn.request("GET", "/")
            r = conn.getresponse()
            out.append((r.status, r.read()))
        return out
    finally:
        conn.close()


class AppServer(R.Server):
    """A server of a server cell (uvicorn, aiohttp, websockets), pinned to SERVER_CPU on a port chosen
    here; ready once it answers (HTTP: a GET; else a TCP connection)."""

    def __init__(self, cell: ServerCell, loop: str, ready_timeout: float = 30.0):
        self.spec = SimpleNamespace(key=f"{cell.app}:{loop}")
        self.transport, self.sock_path = "tcp", None
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        env = dict(os.environ, BENCH_BODY=str(cell.size))
        if cell.app == "uvicorn":
            argv = [R.VPY, "-m", "uvicorn", "--app-dir", SCRIPTS, "hello:app", "--host", "127.0.0.1", "--port",
                    port, "--http", "httptools", "--loop", UVICORN_LOOP[loop], "--lifespan", "off",
                    "--no-access-log", "--log-level", "warning"]
        elif cell.app == "aiohttp":
            argv = [R.VPY, SCRIPTS / "aiohttp_hello.py", "--loop", loop, "--port", port, "--body", cell.size]
        else:
            argv = [R.VPY, SCRIPTS / "ws_echo.py", "--loop", loop, "--port", port]
        (R.WORK / "logs").mkdir(parents=True, exist_ok=True)
        self.log_path = R.WORK / "logs" / (re.sub(r"[^a-z0-9]+", "-", self.spec.key) + ".log")
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["taskset", "-c", R.SERVER_CPU] + [str(a) for a in argv], env=env,
                                     stdout=self.log_file, stderr=self.log_file, stdin=subprocess.DEVNULL,
                                     cwd=R.ROOT)
        self._probe(cell.kind, ready_timeout)

    def _probe(self, kind: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail(600)
                self.stop()
                m = re.search(r"UNSUPPORTED (.*)", tail)
                if m:
                    raise R.Unsupported(m.group(1).strip())
                raise R.ServerError(f"{self.spec.key}: exited with status {self.proc.returncode}; log tail: {tail}")
            try:
                if kind == "http":
                    http_get(self.address, timeout=1.0)
                else:
                    socket.create_connection(self.address.rsplit(":", 1), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise R.ServerError(f"{self.spec.key}: not answering after {timeout:.0f} s")


def start(cell: ServerCell, loop: str, py_gc: str = "on"):
    if cell.kind == "churn":
        return R.Server(R.Spec("python", loop, "protocol"), "tcp", py_gc)
    return AppServer(cell, loop)


def measure(cell: ServerCell, srv, wrk: str | None) -> dict:
    """One run (after its warm-up) of `cell` against `srv`."""
    if cell.kind == "http":
        warm = run_wrk(wrk, srv, cell, cell.warmup)
        return warm if not warm.get("ok") else run_wrk(wrk, srv, cell, cell.duration)
    timing = ["--duration", str(cell.duration), "--warmup", str(cell.warmup)]
    if cell.kind == "ws":
        return R.run_loadgen(srv, ["--conns", str(cell.conns), "--size", str(cell.size)] + timing, binary=WSLOAD)
    return R.run_loadgen(srv, ["--conns", str(cell.conns), "--size", str(cell.size), "--reconnect"] + timing)


def run_cells(bench, cells: list[ServerCell], wrk: str | None, wrk_reason: str = "") -> None:
    """Run the server cells with `bench`'s configuration into its results (``out["cells"]``)."""
    results = bench.out.setdefault("cells", {})
    timing = bench.out.setdefault("timing_s", {})
    if wrk:
        v = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        bench.out.setdefault("versions", {})["wrk"] = (v.stdout + v.stderr).split("[")[0].strip()
    for cell in cells:
        t0 = time.monotonic()
        R.log(f"== {cell.label} ({cell.kind}, {cell.runs} round(s), {cell.duration} s after {cell.warmup} s)")
        cres = results.setdefault(cell.id, {"cell": dict(cell.__dict__), "servers": {}})
        loops = [lp for lp in LOOPS if not bench.cfg.only or re.search(bench.cfg.only, f"{cell.app}:{lp}")]
        running = {}
        for lp in loops:
            entry = cres["servers"].setdefault(lp, {"runs": []})
            why = bench.unavailable.get(lp) or (wrk_reason if cell.kind == "http" and not wrk else "")
            if not why:
                try:
                    running[lp] = start(cell, lp, bench.cfg.py_gc)
                    continue
                except (R.Unsupported, R.ServerError) as e:
                    why = str(e)
            entry["unsupported"] = why
            bench.unsupported[f"{cell.app}:{lp}"] = why
            R.log(f"  {cell.app}:{lp}: not measured: {why}")
        try:
            order0 = [lp for lp in loops if lp in running]
            for rnd in range(cell.runs):
                k = rnd % max(1, len(order0))
                for lp in order0[k:] + order0[:k]:
                    srv = running[lp]
                    if not srv.alive():
                        srv.stop()
                        try:
                            running[lp] = srv = start(cell, lp, bench.cfg.py_gc)
                        except (R.Unsupported, R.ServerError) as e:
                            cres["servers"][lp]["runs"].append({"ok": False, "error": f"restart: {e}", "round": rnd})
                            continue
                    r = measure(cell, srv, wrk)
                    r["round"] = rnd
                    cres["servers"][lp]["runs"].append(r)
                    progress(cell, lp, r)
        finally:
            for srv in running.values():
                srv.stop()
        for entry in cres["servers"].values():
            entry["summary"] = R.summarize(entry["runs"])
        timing[cell.id] = round(time.monotonic() - t0, 1)


def progress(cell: ServerCell, loop: str, r: dict) -> None:
    head = f"  {cell.app}:{loop:10s}"
    if not r.get("ok"):
        R.log(f"{head} FAILED: {r.get('error')}")
        return
    unit = "conn" if cell.kind == "churn" else "req" if cell.kind == "http" else "msg"
    R.log(f"{head} {r.get('server_sched_us_per_msg') or r.get('server_cpu_us_per_msg'):.2f} us/{unit}, "
          f"{r.get('msgs_per_s'):.0f} {unit}/s, p99 {r.get('lat_p99_us')} us, server util {r.get('server_util')}, "
          f"other load {r.get('foreign_cpu_share')}")


# ---------------------------------------------------------------------------- smoke


def smoke(only: str | None, avail: dict[str, str | None], wrk: str | None) -> tuple[int, int, int]:
    """Correctness of every server cell's server on every loop: HTTP answers byte-exact (three requests on
    one keep-alive connection; and a second of wrk where wrk is installed, with no error or non-2xx
    answer), websocket echoes verified by wsload, churn by loadgen --reconnect. No timing."""
    sys.path.insert(0, str(SCRIPTS))
    from hello import body  # the bytes the HTTP servers answer

    passed = failed = skipped = 0

    def report(ok: bool, what: str, why: str = "") -> None:
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        R.log(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {why}" if why else ""))

    for cell in server_cells(False, 1):
        for lp in LOOPS:
            what = f"{cell.app}:{lp} {cell.label}"
            if only and not re.search(only, f"{cell.app}:{lp}"):
                continue
            if avail.get(lp):
                R.log(f"SKIP {what}: {avail[lp]}")
                skipped += 1
                continue
            try:
                srv = start(cell, lp)
            except R.Unsupported as e:
                R.log(f"SKIP {what}: {e}")
                skipped += 1
                continue
            except R.ServerError as e:
                report(False, what, str(e))
                continue
            try:
                if cell.kind == "http":
                    got = http_get(srv.address, requests=3)
                    want = (200, body(cell.size))
                    report(all(g == want for g in got), f"{what} GET x3", "" if all(g == want for g in got)
                           else f"got {[(s, len(b)) for s, b in got]}, want 200 and {len(want[1])} bytes")
                    if wrk:
                        r = run_wrk(wrk, srv, cell, 1)
                        report(bool(r.get("ok")), f"{what} wrk 1 s", r.get("error", ""))
                else:
                    args = ["--conns", "4", "--size", str(cell.size), "--messages", "300", "--warmup", "0"]
                    if cell.kind == "ws":
                        r = R.run_loadgen(srv, args, timeout=60, binary=WSLOAD)
                    else:
                        r = R.run_loadgen(srv, args + ["--reconnect"], timeout=60)
                    report(bool(r.get("ok")), f"{what} 300 x {cell.size} B", r.get("error", ""))
            finally:
                rc = srv.stop()
            # uvicorn shuts down, then raises the signal it caught again: -SIGTERM is its clean exit.
            if rc in (0, None) or (cell.app == "uvicorn" and rc == -signal.SIGTERM):
                continue
            if lp == "rloop":  # a comparison loop's limit, not ferroloop's: noted, not failed
                R.log(f"SKIP {what} exit: status {rc} after SIGTERM (rloop)")
                skipped += 1
            else:
                report(False, f"{what} exit", f"status {rc} after SIGTERM; log: {srv.log_tail(300)}")
    return passed, failed, skipped


# ---------------------------------------------------------------------------- reports


def compute_ratios(out: dict) -> dict:
    """Each loop against uvloop in every server cell: CPU per request (of the medians, and paired by round),
    and the rate (requests, messages or connections per second) paired by round."""
    ratios: dict = {}
    for cid, c in out["cells"].items():
        if c["cell"]["kind"] not in ("http", "ws", "churn"):
            continue
        rc = ratios.setdefault(cid, {})
        base = R.cell_value(out, cid, "uvloop")
        for lp in LOOPS:
            v = R.cell_value(out, cid, lp)
            if v is None:
                continue
            rc[lp] = {"vs_uvloop": R.ratio(v, base), "paired_vs_uvloop": R.paired_ratio(out, cid, lp, "uvloop"),
                      "paired_rate_vs_uvloop": R.paired_ratio(out, cid, lp, "uvloop", "msgs_per_s")}
            if lp == "ferroloop":
                for other in ("asyncio", "rloop"):
                    rc[lp][f"paired_vs_{other}"] = R.paired_ratio(out, cid, lp, other)
    return ratios


def _paired(out: dict, cid: str, lp: str, key: str = "paired_vs_uvloop") -> dict | None:
    return (out.get("ratios", {}).get(cid, {}).get(lp) or {}).get(key)


def markdown(L: list[str], out: dict) -> None:
    """The server cells' section of latest.md (and of docs/benchmarks.md on a full run)."""
    scells = [c for c in out["cells"].values() if c["cell"]["kind"] in ("http", "ws", "churn")]
    if not scells:
        return
    loops = [lp for lp in LOOPS if any(lp in c["servers"] for c in scells)]
    head = "| loop | " + " | ".join(c["cell"]["label"] for c in scells) + " |"
    rule = "|---|" + "---|" * len(scells)
    timing = "; ".join(sorted({f"{c['cell']['kind']}: {c['cell']['runs']} round(s) of {c['cell']['duration']} s "
                               f"after {c['cell']['warmup']} s" for c in scells}))
    L.append("### Real servers")
    L.append("")
    L.append("uvicorn with httptools and aiohttp.web answering `GET /` with a 13 B or 10 KiB body under `wrk -t1 "
             "-c50` (50 keep-alive connections); a websockets echo server with 1 KiB binary messages on 50 "
             "connections (client: bench's wsload, one message in flight per connection); churn: 16 client "
             "slots each connecting, echoing one 100 B message to the protocol echo server and closing. "
             f"Server on CPU {R.SERVER_CPU}, load on CPU {R.LOADGEN_CPU}; loops interleaved in rotated order "
             f"each round ({timing}). Setup: bench/servers.py.")
    v = out.get("versions", {})
    L.append("Versions: " + ", ".join(f"{p} {v.get(p) or '—'}" for p in ("uvicorn", "httptools", "aiohttp",
                                                                         "websockets")) + f"; {v.get('wrk', 'no wrk')}.")
    L.append("")

    def cpu(cid, lp):
        v, pr = R.cell_value(out, cid, lp), _paired(out, cid, lp)
        return None if v is None else f"{v:.2f}" + (f" ({pr['median']:.2f}×)" if pr and lp != "uvloop" else "")

    def rate(cid, lp):
        r = R.cell_value(out, cid, lp, "msgs_per_s")
        p50, p99 = R.cell_value(out, cid, lp, "lat_p50_us"), R.cell_value(out, cid, lp, "lat_p99_us")
        lat = f"{p50 / 1000:.2f} / {p99 / 1000:.2f}" if p50 is not None and p99 is not None else "—"
        return None if r is None else f"{r / 1000:.1f}k · {lat}"

    for text, fn in (
        ("Server CPU per request, µs (websockets: per message; churn: per connection; the server's schedstat run "
         "time / requests served, median of rounds); in brackets the ratio against uvloop paired by round "
         "(median over rounds):", cpu),
        ("Requests per second (websockets: messages; churn: connections) · latency p50 / p99 in ms (HTTP: wrk's; "
         "websockets: round trip of a message; churn: connect, echo and close), medians of rounds:", rate),
    ):
        L += [text, "", head, rule]
        for lp in loops:
            row = [fn(c["cell"]["id"], lp) or R.cell_note(out, c["cell"]["id"], lp) or "—" for c in scells]
            L.append(f"| {lp} | " + " | ".join(row) + " |")
        L.append("")
    L.append("Goals (issue 19), from this run's paired ratios [first, third quartile of the rounds]:")
    L.append("")
    L.append("| goal | cell | ferroloop, uvloop (medians) | paired ratio | status |")
    L.append("|---|---|---|---|---|")
    for c in scells:
        cid, churn = c["cell"]["id"], c["cell"]["kind"] == "churn"
        pr = _paired(out, cid, "ferroloop", "paired_rate_vs_uvloop" if churn else "paired_vs_uvloop")
        goal = (f"rate ≥ {CHURN_GOAL:.2f}× uvloop's" if churn else f"CPU per request ≤ {CPU_GOAL:.2f}× uvloop's")
        if pr is None:
            L.append(f"| {goal} | {c['cell']['label']} | — | — | not measured |")
            continue
        f_, u_ = (R.cell_value(out, cid, lp, "msgs_per_s" if churn else "server_us_per_msg")
                  for lp in ("ferroloop", "uvloop"))
        both = f"{f_:,.0f}, {u_:,.0f} conn/s" if churn else f"{f_:.1f}, {u_:.1f} µs"
        met = pr["median"] >= CHURN_GOAL if churn else pr["median"] <= CPU_GOAL
        L.append(f"| {goal} | {c['cell']['label']} | {both} | {pr['median']:.2f} [{pr['q1']:.2f}, {pr['q3']:.2f}] "
                 f"| {'met' if met else 'not met'} |")
    L.append("")
