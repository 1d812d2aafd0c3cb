"""gunicorn with uvicorn's worker on ferroloop, started as a user starts it:
`gunicorn -k ferroloop_worker.FerroloopWorker app:app` (apps/ferroloop_worker.py:
uvicorn_worker.UvicornWorker with CONFIG_KWARGS = {"loop": "ferroloop:new_event_loop"}).
Two worker processes under a real gunicorn master: each request is answered
by a worker whose running loop is ferroloop's; keep-alive requests, a
streamed body; SIGTERM to the master shuts the workers down gracefully, a
request in flight still completing."""

from __future__ import annotations

import http.client
import os
import signal

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn_worker")

from server_process import APPS, PYTHON, ServerProcess, assert_served_by_ferroloop, python_env  # noqa: E402

WORKERS = 2


@pytest.fixture
def gunicorn():
    # Port 0: the master binds a free port and logs the one it got.
    server = ServerProcess(
        [PYTHON, "-m", "gunicorn", "asgi_app:app", "--chdir", APPS,
         "--worker-class", "ferroloop_worker.FerroloopWorker", "--workers", str(WORKERS),
         "--bind", "127.0.0.1:0", "--graceful-timeout", "20", "--log-level", "info"],
        env=python_env(),
    )
    try:
        port = int(server.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)").group(1))
        # Every worker has started serving (uvicorn's line, from each worker).
        server.wait_for(r"Application startup complete", count=WORKERS)
        assert_served_by_ferroloop(port)
        yield server, port
    finally:
        server.kill()


def _get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def test_gunicorn_uvicorn_worker_serves_on_ferroloop(gunicorn):
    server, port = gunicorn
    master = server.proc.pid
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # Several requests on one keep-alive connection: one worker, ferroloop's loop.
        for _ in range(3):
            assert _get(conn, "/loop") == (200, b"ferroloop._loop.Loop")
        status, body = _get(conn, "/pid")
        assert status == 200
        worker, parent = map(int, body.split())
        assert worker != master and parent == master
        assert _get(conn, "/stream") == (200, b"chunk0;chunk1;chunk2;chunk3;chunk4;end")
        assert _get(conn, "/missing")[0] == 404
        # Still the same connection, the same worker process.
        assert _get(conn, "/pid")[1] == body
    finally:
        conn.close()

    rc, out = server.stop(signal.SIGTERM)
    assert rc == 0, out
    assert "Handling signal: term" in out, out
    # Each worker ran uvicorn's shutdown on its loop, lifespan included.
    assert out.count("Application shutdown complete") == WORKERS, out
    assert out.count("Finished server process") == WORKERS, out
    assert "Shutting down: Master" in out, out


def test_gunicorn_sigterm_lets_a_request_in_flight_finish(gunicorn, tmp_path):
    server, port = gunicorn
    release = tmp_path / "release"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/hold?until={release}")
        r = conn.getresponse()
        assert r.status == 200
        assert r.read(6) == b"begin;"  # the worker is inside the app now
        os.kill(server.proc.pid, signal.SIGTERM)
        # uvicorn's graceful shutdown in the worker: it waits for this connection.
        server.wait_for(r"Waiting for connections to close")
        release.touch()
        assert r.read() == b"done"
        # The worker closes the connection once the response is complete.
        assert conn.sock.recv(1) == b""
    finally:
        conn.close()
    rc, out = server.stop(signal.SIGTERM)
    assert rc == 0, out
    assert out.count("Finished server process") == WORKERS, out
    assert "Shutting down: Master" in out, out
