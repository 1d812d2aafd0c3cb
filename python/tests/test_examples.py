"""The spec's Python examples (examples/python/), run as programs on both loops.

Stock asyncio runs ``python FILE``; ferroloop runs ``python -m ferroloop FILE``.
``NAME_server.py`` runs in the background for ``NAME_client.py`` (the spec's
ports: TCP 8888, UDP 9999 for ``udp_*``), then gets SIGINT as from Ctrl+C; any
other script runs alone. The outputs must match stock asyncio's (the client's
ephemeral port aside).

The ports are fixed by the examples and may be used by someone else's run (e.g.
``make demo``): a pair waits until nothing is bound there, and checks (through
/proc) that the socket it talks to is its own server's.
"""

from __future__ import annotations

import glob
import os
import shutil
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import FLAVORS, REPO, ferroloop_bug

EXAMPLES = os.path.join(REPO, "examples", "python")
TCP_PORT = 8888
UDP_PORT = 9999
PORT_FREE_WAIT = 20  # seconds to wait for another user of the port
RUN_LIMIT = 30  # seconds for a server to come up
CLIENT_LIMIT = 10  # seconds for a client (a normal run takes well under one)
UDP_ATTEMPTS = 8  # runs of a UDP pair whose client hangs in the example's own race

_results = {}  # (flavor, example) -> normalized outcome; asyncio's is the oracle


def _examples():
    scripts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(EXAMPLES, "*.py")))
    items = []
    for s in scripts:
        if s.endswith("_client.py") and s.replace("_client.py", "_server.py") in scripts:
            continue
        if s.endswith("_server.py") and s.replace("_server.py", "_client.py") in scripts:
            items.append(s[: -len("_server.py")])
        else:
            items.append(s[: -len(".py")])
    return items


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.path.join(REPO, "python") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONWARNINGS", None)
    return env


def _default_sigint():
    # A background job of a non-interactive shell starts with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: restore the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _port_of(name):
    return ("udp", UDP_PORT) if name.startswith("udp") else ("tcp", TCP_PORT)


def _listeners(proto, port):
    """Inodes of sockets listening on TCP ``port`` / bound to UDP ``port`` (IPv4 and IPv6)."""
    inodes = set()
    # TCP_LISTEN is 0A; an unconnected bound UDP socket shows TCP_CLOSE (07).
    state = "0A" if proto == "tcp" else "07"
    for path in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                        inodes.add(fields[9])
        except FileNotFoundError:
            pass
    return inodes


def _socket_inodes(pid):
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", target)
            if m:
                inodes.add(m.group(1))
    except OSError:
        pass
    return inodes


def _owners(inodes):
    """``pid cmdline`` of the processes holding the socket ``inodes``."""
    owners = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if _socket_inodes(pid) & inodes:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            owners.append(f"{pid} {cmd}")
    return owners


_port_busy = {}  # (proto, port) -> skip message, once a port stayed busy


def _wait_port_free(proto, port):
    """Wait while someone else uses the example's fixed port; skip if it stays busy."""
    if (proto, port) in _port_busy and _listeners(proto, port):
        pytest.skip(_port_busy[(proto, port)])
    deadline = time.monotonic() + PORT_FREE_WAIT
    while True:
        busy = _listeners(proto, port)
        if not busy:
            _port_busy.pop((proto, port), None)
            return
        if time.monotonic() > deadline:
            _port_busy[(proto, port)] = (
                f"{proto} port {port} is held by another process for over {PORT_FREE_WAIT}s: "
                + "; ".join(_owners(busy) or ["owner unknown"])
            )
            pytest.skip(_port_busy[(proto, port)])
        time.sleep(0.2)


def _normalize(text):
    """Hide the client's ephemeral port ("Connection from (...)", "from ('127.0.0.1', N)")."""
    text = re.sub(r"^Connection from \('127\.0\.0\.1', \d+\)$", "Connection from ('127.0.0.1', PORT)", text, flags=re.M)
    return re.sub(r"(from|to) \('127\.0\.0\.1', \d+\)", r"\1 ('127.0.0.1', PORT)", text)


def _run_single(argv, script):
    proc = subprocess.run(
        argv + [os.path.join(EXAMPLES, script)],
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        cwd=EXAMPLES,
        env=_env(),
        preexec_fn=_default_sigint,
    )
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def _run_pair(argv, name):
    server_script = os.path.join(EXAMPLES, f"{name}_server.py")
    client_script = os.path.join(EXAMPLES, f"{name}_client.py")
    proto, port = _port_of(name)
    for attempt in range(UDP_ATTEMPTS if proto == "udp" else 5):
        _wait_port_free(proto, port)
        server = subprocess.Popen(
            argv + [server_script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=EXAMPLES,
            env=_env(),
            preexec_fn=_default_sigint,
        )
        try:
            deadline = time.monotonic() + RUN_LIMIT
            mine = False
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    break
                if _listeners(proto, port) & _socket_inodes(server.pid):
                    mine = True
                    break
                time.sleep(0.02)
            if not mine:
                if server.poll() is None:
                    server.kill()
                out, err = server.communicate(timeout=10)
                if "address already in use" in err.lower() and attempt < 4:
                    continue  # someone took the port between our check and the bind
                pytest.fail(f"the server did not bind {proto} {port}: rc={server.returncode}\n{out}\n{err}")
            try:
                client = subprocess.run(
                    argv + [client_script],
                    capture_output=True,
                    text=True,
                    timeout=CLIENT_LIMIT,
                    cwd=EXAMPLES,
                    env=_env(),
                    preexec_fn=_default_sigint,
                )
            except subprocess.TimeoutExpired:
                # The spec's UDP client races with its server: a reply that
                # comes back before run_until_complete() returns makes
                # connection_lost's loop.stop() end that run, and run_forever()
                # then waits forever (on stock asyncio too, in about a third of
                # the runs here; see scripts/demo.sh). Run the pair again.
                if proto == "udp" and attempt < UDP_ATTEMPTS - 1:
                    continue
                raise
            server.send_signal(signal.SIGINT)  # Ctrl+C
            out, err = server.communicate(timeout=10)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
        return {
            "client_rc": client.returncode,
            "client_stdout": client.stdout,
            "client_stderr": client.stderr,
            "server_rc": server.returncode,
            "server_stdout": _normalize(out),
            "server_stderr": err,
        }
    raise AssertionError("unreachable")


def _outcome(flavor_name, name):
    key = (flavor_name, name)
    if key not in _results:
        argv = FLAVORS[flavor_name].runner_argv
        if os.path.exists(os.path.join(EXAMPLES, f"{name}_server.py")):
            _results[key] = _run_pair(argv, name)
        else:
            _results[key] = _run_single(argv, f"{name}.py")
    return _results[key]


EXPECTED = {
    "tcp_echo": {
        "client_stdout": (
            "Data sent: 'Hello World!'\n"
            "Data received: 'Hello World!'\n"
            "The server closed the connection\n"
            "Stop the event loop\n"
        ),
        "server_stdout": (
            "Serving on ('127.0.0.1', 8888)\n"
            "Connection from ('127.0.0.1', PORT)\n"
            "Data received: 'Hello World!'\n"
            "Send: 'Hello World!'\n"
            "Close the client socket\n"
        ),
        "client_rc": 0,
        "server_rc": 0,
    },
    "register_open_socket": {"stdout": "Received: abc\n", "rc": 0},
}

# Examples of ferroloop's own API (no stock-asyncio oracle: the script runs on
# ferroloop under either flavor): what their output must contain.
FERROLOOP_ONLY = {
    "tls_fast_path": [
        "Event loop: ferroloop._loop.Loop\n",
        "Server: connection over TLSv1.3, cipher TLS_AES_256_GCM_SHA384, ALPN 'echo/1'\n",
        "ferroloop.TLSContext client: sent 'Hello over TLS from the ferroloop.TLSContext client!', "
        "got 'Hello over TLS from the ferroloop.TLSContext client!' back (TLSv1.3, peer ((('commonName', "
        "'localhost'),),))\n",
        "ssl.SSLContext client: sent 'Hello over TLS from the ssl.SSLContext client!', "
        "got 'Hello over TLS from the ssl.SSLContext client!' back (TLSv1.3, peer ((('commonName', "
        "'localhost'),),))\n",
    ],
}


KNOWN_BUGS = {
    # example name -> (why its ferroloop run fails, whether it fails every time)
}


def _example_params():
    params = []
    for name in _examples():
        if name in KNOWN_BUGS:
            reason, strict = KNOWN_BUGS[name]
            params.append(pytest.param(name, marks=ferroloop_bug(reason, strict=strict)))
        else:
            params.append(name)
    return params


# From Python 3.12, asyncio.get_event_loop() warns when it has to make the
# loop (the spec's examples call it with no loop set): "FILE:LINE:
# DeprecationWarning: There is no current event loop", then the source line.
# Stock asyncio prints it as ferroloop does; it is not an error of the run.
_NO_CURRENT_LOOP_WARNING = re.compile(r"^\S+:\d+: DeprecationWarning: There is no current event loop\n(  .*\n)?", re.M)


def _errors(got, key):
    text = got.get(key, "")
    if sys.version_info >= (3, 12):
        text = _NO_CURRENT_LOOP_WARNING.sub("", text)
    return text


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", _example_params())
def test_example(flavor, name):
    got = _outcome(flavor.name, name)
    if name in FERROLOOP_ONLY:
        if shutil.which("openssl") is None:
            pytest.skip("the openssl command is not installed (`make deps` installs it)")
        assert got["rc"] == 0, got
        for line in FERROLOOP_ONLY[name]:
            assert line in got["stdout"], (line, got["stdout"])
        assert _errors(got, "stderr") == ""
        return
    # Stock asyncio is the oracle (run first, or now if this param runs alone).
    oracle = _outcome("asyncio", name)
    assert got == oracle
    for key, value in EXPECTED.get(name, {}).items():
        assert got[key] == value, key
    for key in ("stderr", "client_stderr", "server_stderr"):
        assert _errors(got, key) == ""


def test_examples_present(flavor):
    assert {"tcp_echo", "register_open_socket"} <= set(_examples())
