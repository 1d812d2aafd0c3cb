"""uvicorn, started as a user starts it (the CLI, `--loop
ferroloop:new_event_loop`), serving a real app on ferroloop: the running
loop is ferroloop's, keep-alive requests, a streamed body, a websocket."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

uvicorn = pytest.importorskip("uvicorn")
websockets_sync = pytest.importorskip("websockets.sync.client")

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", os.path.join(HERE, "apps"),
         "--loop", "ferroloop:new_event_loop", "--host", "127.0.0.1", "--port", str(port),
         "--ws", "websockets-sansio", "--http", "httptools", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                    raise AssertionError(f"uvicorn did not start: {out}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    out = out.decode(errors="replace")
    # A graceful shutdown on SIGTERM (the loop ran uvicorn's signal handler);
    # uvicorn then raises the captured signal again, so the exit is by it.
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Finished server process" in out, out


def test_uvicorn_cli_serves_on_ferroloop(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    try:
        # Several requests on one keep-alive connection.
        for _ in range(3):
            conn.request("GET", "/loop")
            r = conn.getresponse()
            assert r.status == 200
            assert r.read() == b"ferroloop._loop.Loop"
        conn.request("GET", "/stream")
        r = conn.getresponse()
        assert r.status == 200
        assert r.read() == b"chunk0;chunk1;chunk2;chunk3;chunk4;end"
    finally:
        conn.close()


def test_uvicorn_websocket_on_ferroloop(server):
    with websockets_sync.connect(f"ws://127.0.0.1:{server}/ws", open_timeout=10) as ws:
        for text in ("one", "two", "x" * 5000):
            ws.send(text)
            assert ws.recv(timeout=10) == "echo:" + text
