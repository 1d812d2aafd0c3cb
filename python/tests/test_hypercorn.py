"""hypercorn on ferroloop, started the way the README shows
(`asyncio.run(hypercorn.asyncio.serve(app, config), loop_factory=ferroloop.new_event_loop)`,
asyncio.Runner on 3.11: apps/hypercorn_serve.py), in a process of its own: the
running loop is ferroloop's; HTTP/1.1 keep-alive requests and a streamed body,
HTTP/2 (prior knowledge) with concurrent streams on one connection, a
websocket echo; SIGTERM ends it gracefully."""

from __future__ import annotations

import http.client
import os
import signal
import socket

import pytest

pytest.importorskip("hypercorn")
h2_connection = pytest.importorskip("h2.connection")
h2_events = pytest.importorskip("h2.events")
websockets_sync = pytest.importorskip("websockets.sync.client")

from server_process import APPS, PYTHON, ServerProcess, assert_served_by_ferroloop, python_env  # noqa: E402


@pytest.fixture
def hypercorn():
    # Port 0: hypercorn logs the address it got.
    server = ServerProcess([PYTHON, os.path.join(APPS, "hypercorn_serve.py"), "127.0.0.1:0"], env=python_env())
    try:
        port = int(server.wait_for(r"Running on http://127\.0\.0\.1:(\d+)").group(1))
        assert_served_by_ferroloop(port)
        yield server, port
        rc, out = server.stop(signal.SIGTERM)
        # hypercorn's own signal handler (added on the loop) ends serve() and the
        # process exits normally, lifespan shutdown included.
        assert rc == 0, out
    finally:
        server.kill()


def test_hypercorn_http1_on_ferroloop(hypercorn):
    server, port = hypercorn
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/loop")
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b"ferroloop._loop.Loop")
        conn.request("GET", "/pid")
        r = conn.getresponse()
        assert r.status == 200
        assert int(r.read().split()[0]) == server.proc.pid
        conn.request("GET", "/stream")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"chunk0;chunk1;chunk2;chunk3;chunk4;end")
    finally:
        conn.close()


def test_hypercorn_http2_on_ferroloop(hypercorn):
    _, port = hypercorn
    h2 = h2_connection.H2Connection()
    h2.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(h2.data_to_send())
        paths = {1: "/loop", 3: "/stream", 5: "/loop"}
        for stream_id, path in paths.items():
            h2.send_headers(
                stream_id,
                [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{port}")],
                end_stream=True,
            )
        sock.sendall(h2.data_to_send())
        status, bodies, ended = {}, {i: b"" for i in paths}, set()
        while ended != set(paths):
            data = sock.recv(65536)
            assert data, "the server closed the HTTP/2 connection early"
            for event in h2.receive_data(data):
                if isinstance(event, h2_events.ResponseReceived):
                    status[event.stream_id] = dict(event.headers)[b":status"]
                elif isinstance(event, h2_events.DataReceived):
                    bodies[event.stream_id] += event.data
                    h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2_events.StreamEnded):
                    ended.add(event.stream_id)
            sock.sendall(h2.data_to_send())
    assert status == {1: b"200", 3: b"200", 5: b"200"}
    assert bodies == {1: b"ferroloop._loop.Loop", 3: b"chunk0;chunk1;chunk2;chunk3;chunk4;end", 5: b"ferroloop._loop.Loop"}


def test_hypercorn_websocket_on_ferroloop(hypercorn):
    _, port = hypercorn
    with websockets_sync.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        for text in ("one", "two", "x" * 5000):
            ws.send(text)
            assert ws.recv(timeout=10) == "echo:" + text
