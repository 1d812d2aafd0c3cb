"""TCP transports driving Python protocols: the transport API and the protocol state machine.

Most tests wrap one end of a connected TCP pair in a transport
(``create_connection(sock=...)``) and drive the other end, the "peer", as a plain
non-blocking socket. State-machine scenarios record an event log and compare it
with the log the same scenario gives on stock asyncio (the oracle).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import socket
import struct

import pytest

from conftest import FLAVORS, asyncio_differs, ferroloop_bug, run, tcp_pair

# Python 3.12's selector transport queues the bytearray/memoryview it was given
# (zero-copy writes, CPython gh-91166) instead of a copy: the caller's later
# changes reach the peer, and the buffer stays exported. ferroloop copies
# what it queues, as asyncio did before 3.12.
_ZERO_COPY = asyncio_differs(
    "the selector transport queues the caller's buffer without copying it (gh-91166)", since=(3, 12)
)

class LogProtocol(asyncio.Protocol):
    """Records the callbacks it receives; flags any breach of the protocol life."""

    def __init__(self, loop, eof_result=None):
        self.loop = loop
        self.eof_result = eof_result
        self.log = []
        self.data = bytearray()
        self.transport = None
        self.lost = loop.create_future()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.violations = []
        self.exc = None
        self.in_callback = False

    def _enter(self, name):
        if self.in_callback:
            self.violations.append(f"{name} re-entered from {self.in_callback}")
        if self.lost.done():
            self.violations.append(f"{name} after connection_lost")
        self.in_callback = name

    def _leave(self):
        self.in_callback = False

    def connection_made(self, transport):
        self._enter("connection_made")
        if self.log:
            self.violations.append("connection_made twice or late")
        self.transport = transport
        self.log.append("made")
        self.made.set_result(None)
        self._leave()

    def data_received(self, data):
        self._enter("data_received")
        assert isinstance(data, bytes)
        if self.eof.done():
            self.violations.append("data_received after eof_received")
        if not self.log or self.log[-1] != "data":
            self.log.append("data")
        self.data += data
        self.on_data(data)
        self._leave()

    def on_data(self, data):
        pass

    def eof_received(self):
        self._enter("eof_received")
        if self.eof.done():
            self.violations.append("eof_received twice")
        self.log.append("eof")
        self.eof.set_result(None)
        self._leave()
        return self.eof_result

    def connection_lost(self, exc):
        self._enter("connection_lost")
        self.exc = exc
        self.log.append(("lost", type(exc).__name__ if exc is not None else None))
        self.lost.set_result(exc)
        self._leave()

    def pause_writing(self):
        self.log.append("pause")

    def resume_writing(self):
        self.log.append("resume")


def oracle(scenario):
    """Run ``scenario(loop)`` on a fresh stock asyncio loop and return its result."""
    lp = FLAVORS["asyncio"].new_event_loop()
    try:
        return scenario(lp)
    finally:
        lp.close()


async def connect(loop, factory, **pair_kw):
    """A transport on one end of a TCP pair; the peer is the other end, non-blocking."""
    a, b = tcp_pair(**pair_kw)
    b.setblocking(False)
    tr, pr = await loop.create_connection(factory, sock=a)
    return tr, pr, b


async def peer_read_until_eof(loop, peer, limit=None):
    chunks = []
    total = 0
    while True:
        data = await loop.sock_recv(peer, 1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        total += len(data)
        if limit is not None and total >= limit:
            return b"".join(chunks)


# ----------------------------------------------------------------------------- transport basics



def _stock_write_type_error(bad):
    """The message of this Python's asyncio for ``transport.write(bad)`` (its
    wording changed in 3.13 patch releases): its socket transport checks the
    type first, so a bare instance answers."""
    from asyncio import selector_events

    cls = selector_events._SelectorSocketTransport
    with pytest.raises(TypeError) as ei:
        cls.write(object.__new__(cls), bad)
    return str(ei.value)


def test_transport_types_and_extra_info(loop):
    async def main():
        a, b = tcp_pair()
        try:
            tr, pr = await loop.create_connection(lambda: LogProtocol(loop), sock=a)
            assert isinstance(tr, asyncio.Transport)
            assert isinstance(tr, asyncio.ReadTransport)
            assert isinstance(tr, asyncio.WriteTransport)
            assert isinstance(tr, asyncio.BaseTransport)
            assert pr.made.done()  # connection_made before create_connection returns
            assert pr.transport is tr
            assert tr.get_protocol() is pr
            assert tr.get_extra_info("peername") == b.getsockname()
            assert tr.get_extra_info("sockname") == a.getsockname()
            sock = tr.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert sock.fileno() == a.fileno()
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_STREAM
            assert sock.getpeername() == b.getsockname()
            assert tr.get_extra_info("no-such-key") is None
            assert tr.get_extra_info("no-such-key", "dflt") == "dflt"
            assert tr.get_extra_info("sslcontext") is None
            assert tr.get_extra_info("peercert") is None
            assert not tr.is_closing()
            assert tr.is_reading()
            assert tr.can_write_eof() is True
            assert tr.get_write_buffer_size() == 0
            assert "fd=" in repr(tr)
            tr.close()
            assert tr.is_closing()
            await pr.lost
            assert pr.log == ["made", ("lost", None)]
            assert pr.violations == []
        finally:
            b.close()

    run(loop, main())


def test_write_writelines_and_types(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            tr.write(b"bytes;")
            tr.write(bytearray(b"bytearray;"))
            tr.write(memoryview(b"xxmemoryview;")[2:])
            tr.write(b"")  # no-op
            tr.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
            tr.writelines(iter([b"-", b"gen"]))
            with pytest.raises(TypeError) as ei:
                tr.write("str")
            assert str(ei.value) == _stock_write_type_error("str")
            with pytest.raises(TypeError) as ei:
                tr.write(1234)
            assert str(ei.value) == _stock_write_type_error(1)
            with pytest.raises(TypeError):
                tr.writelines(["str"])
            tr.close()
            got = await peer_read_until_eof(loop, peer)
            assert got == b"bytes;bytearray;memoryview;abc-gen"
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


@_ZERO_COPY
def test_write_borrowed_buffers_are_not_kept(loop):
    """A bytearray/memoryview written is sent as it was at write() time, also the
    part that had to be queued; the transport keeps no export of it (the
    bytearray can be resized at once); a view of another format is accepted
    as asyncio accepts it."""
    import array

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            big = bytearray(os.urandom(4 * 1024 * 1024))  # more than the socket takes at once
            expected = bytes(big)
            tr.write(big)
            assert tr.get_write_buffer_size() > 0
            big[:] = b"\0" * len(big)  # resizing/overwriting must not reach the queued bytes
            big.extend(b"more")
            view_src = bytearray(b"0123456789")
            tr.write(memoryview(view_src)[2:6])
            view_src[2:6] = b"XXXX"
            ints = array.array("I", [1, 2])
            tr.write(memoryview(ints))  # format 'I'
            tr.close()
            got = await peer_read_until_eof(loop, peer)
            assert got == expected + b"2345" + ints.tobytes()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


@_ZERO_COPY
def test_pause_writing_may_resize_the_bytearray_being_written(loop):
    """pause_writing, called by the write that went over the high-water mark,
    may resize the bytearray that write was given: the transport holds no
    export of it by then (asyncio copied what it queued)."""

    class Pausing(LogProtocol):
        def pause_writing(self):
            super().pause_writing()
            del self.buf[:]  # BufferError if the transport still exported it

    async def main():
        tr, pr, peer = await connect(loop, lambda: Pausing(loop))
        try:
            tr.set_write_buffer_limits(high=1000)
            pr.buf = bytearray(os.urandom(8 * 1024 * 1024))
            expected = bytes(pr.buf)
            tr.write(pr.buf)
            assert pr.log[-1] == "pause", pr.log
            assert len(pr.buf) == 0
            tr.close()
            got = await peer_read_until_eof(loop, peer)
            assert got == expected
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def test_transport_methods_have_asyncios_signatures(loop):
    import inspect

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            params = {
                name: list(inspect.signature(getattr(tr, name)).parameters)
                for name in ("write", "writelines", "close", "is_closing", "set_write_buffer_limits")
            }
            assert params == {
                "write": ["data"],
                "writelines": ["list_of_data"],
                "close": [],
                "is_closing": [],
                "set_write_buffer_limits": ["high", "low"],
            }
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def test_write_arguments_as_asyncio(loop):
    """write() takes its data positionally or as ``data=``; data that is not
    bytes-like raises asyncio's TypeError without writing anything (other
    arguments: test_transport_method_argument_errors_as_asyncio)."""

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            tr.write(b"positional ")
            tr.write(data=b"keyword ")
            tr.write(bytearray(b"bytearray "))
            tr.write(memoryview(b"memoryview"))
            for bad in ("text", 42, None, [b"list"]):
                with pytest.raises(TypeError) as ei:
                    tr.write(bad)
                assert str(ei.value) == _stock_write_type_error(bad)
            tr.write_eof()
            assert await peer_read_until_eof(loop, peer) == b"positional keyword bytearray memoryview"
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def defining_class(obj, name):
    """The class whose method ``name`` a call ``obj.name()`` runs: the one a
    Python method's argument errors name (its ``__qualname__``)."""
    return next(c for c in type(obj).__mro__ if name in vars(c)).__qualname__


def test_transport_method_argument_errors_as_asyncio(loop):
    """Every transport method, called with arguments that do not fit its
    signature, raises the TypeError of a Python method: "Class.name() takes
    ...", naming the class that defines the method (never an internal
    class), with CPython's counts (self included); nothing else happens."""

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            takes_1 = "takes 1 positional argument but 2 were given"
            for call, name, error in (
                (lambda: tr.close(1), "close", takes_1),
                (lambda: tr.close(x=1), "close", "got an unexpected keyword argument 'x'"),
                (lambda: tr.abort(1, 2), "abort", "takes 1 positional argument but 3 were given"),
                (lambda: tr.write_eof(1), "write_eof", takes_1),
                (lambda: tr.can_write_eof(1), "can_write_eof", takes_1),
                (lambda: tr.get_write_buffer_limits(1), "get_write_buffer_limits", takes_1),
                (
                    lambda: tr.set_write_buffer_limits(1, 2, 3),
                    "set_write_buffer_limits",
                    "takes from 1 to 3 positional arguments but 4 were given",
                ),
                (
                    lambda: tr.set_write_buffer_limits(1, high=2),
                    "set_write_buffer_limits",
                    "got multiple values for argument 'high'",
                ),
                (
                    lambda: tr.set_write_buffer_limits(x=2),
                    "set_write_buffer_limits",
                    "got an unexpected keyword argument 'x'",
                ),
                (lambda: tr.get_protocol(1), "get_protocol", takes_1),
                (lambda: tr.set_protocol(), "set_protocol", "missing 1 required positional argument: 'protocol'"),
                (lambda: tr.set_protocol(pr, pr), "set_protocol", "takes 2 positional arguments but 3 were given"),
                (lambda: tr.set_protocol(pr, protocol=pr), "set_protocol", "got multiple values for argument 'protocol'"),
                (lambda: tr._force_close(), "_force_close", "missing 1 required positional argument: 'exc'"),
                (lambda: tr.get_extra_info(), "get_extra_info", "missing 1 required positional argument: 'name'"),
                (lambda: tr.is_closing(x=1), "is_closing", "got an unexpected keyword argument 'x'"),
                (lambda: tr.pause_reading(x=1), "pause_reading", "got an unexpected keyword argument 'x'"),
                (lambda: tr.get_write_buffer_size(1), "get_write_buffer_size", takes_1),
                (lambda: tr.write(), "write", "missing 1 required positional argument: 'data'"),
                (lambda: tr.write(b"a", b"b"), "write", "takes 2 positional arguments but 3 were given"),
                (lambda: tr.write(b"a", data=b"b"), "write", "got multiple values for argument 'data'"),
                (lambda: tr.write(stuff=b"a"), "write", "got an unexpected keyword argument 'stuff'"),
                (lambda: tr.writelines(), "writelines", "missing 1 required positional argument: 'list_of_data'"),
                (lambda: tr.writelines([], x=1), "writelines", "got an unexpected keyword argument 'x'"),
                (lambda: tr.is_closing(1), "is_closing", takes_1),
                (lambda: tr.pause_reading(1, 2), "pause_reading", "takes 1 positional argument but 3 were given"),
            ):
                with pytest.raises(TypeError) as ei:
                    call()
                assert str(ei.value) == f"{defining_class(tr, name)}.{name}() {error}"
            assert tr.is_reading() and not tr.is_closing() and tr.get_protocol() is pr
            assert tr.get_write_buffer_limits() == (16384, 65536)
            tr.write(b"still open")
            tr.write_eof()
            assert await peer_read_until_eof(loop, peer) == b"still open"
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def test_write_eof(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            assert tr.can_write_eof()
            tr.write(b"before eof")
            tr.write_eof()
            tr.write_eof()  # twice is fine
            assert not tr.is_closing()
            with pytest.raises(RuntimeError) as ei:
                tr.write(b"after")
            assert str(ei.value) == "Cannot call write() after write_eof()"
            assert await peer_read_until_eof(loop, peer) == b"before eof"
            # Half-closed: the transport still receives.
            await loop.sock_sendall(peer, b"from peer")
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            assert bytes(pr.data) == b"from peer"
            assert pr.log == ["made", "data", "eof", ("lost", None)]
            assert pr.violations == []
        finally:
            peer.close()

    run(loop, main())


def test_write_eof_flushes_buffer_first(loop):
    payload = os.urandom(4 << 20)

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=65536, rcvbuf=65536)
        try:
            tr.write(payload)
            assert tr.get_write_buffer_size() > 0
            tr.write_eof()
            got = await peer_read_until_eof(loop, peer)
            assert got == payload
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def test_close_flushes_buffer_then_connection_lost(loop):
    payload = os.urandom(4 << 20)

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=65536, rcvbuf=65536)
        try:
            tr.set_write_buffer_limits(high=1 << 30)
            tr.write(payload)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            assert tr.is_closing()
            tr.close()  # twice is fine
            await asyncio.sleep(0.05)
            # Not lost while the buffer still holds data the peer has not read.
            assert not pr.lost.done()
            got = await peer_read_until_eof(loop, peer)
            assert got == payload
            assert await pr.lost is None
            assert pr.log == ["made", ("lost", None)]
        finally:
            peer.close()

    run(loop, main())


def test_abort_with_buffered_data(loop):
    payload = b"x" * (4 << 20)

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=65536, rcvbuf=65536)
        try:
            tr.set_write_buffer_limits(high=1 << 30)
            tr.write(payload)
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing()
            assert tr.get_write_buffer_size() == 0
            # connection_lost comes later, not from inside abort().
            assert not pr.lost.done()
            assert await pr.lost is None
            assert pr.log == ["made", ("lost", None)]
            tr.abort()  # after the end: harmless
            tr.close()
            try:
                got = await peer_read_until_eof(loop, peer)
            except ConnectionResetError:
                got = b""
            assert len(got) < len(payload)
        finally:
            peer.close()

    run(loop, main())


def test_writes_after_close_are_dropped_with_warning(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            tr.close()
            await pr.lost
            for _ in range(4):
                tr.write(b"dropped")
            assert [r for r in caplog.records if "socket.send() raised exception." in r.getMessage()] == []
            for _ in range(6):
                tr.write(b"dropped")
            warned = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
            assert len(warned) >= 1
            assert await peer_read_until_eof(loop, peer) == b""
        finally:
            peer.close()

    run(loop, main())


# ----------------------------------------------------------------------------- protocol state machine


def scenario_peer_half_close(eof_result):
    def scenario(loop):
        async def main():
            tr, pr, peer = await connect(loop, lambda: LogProtocol(loop, eof_result=eof_result))
            try:
                peer.send(b"hello")
                await asyncio.sleep(0.02)
                peer.send(b" world")
                peer.shutdown(socket.SHUT_WR)
                await pr.eof
                await asyncio.sleep(0.02)
                state = {"closing_after_eof": tr.is_closing()}
                if eof_result:
                    assert not pr.lost.done()
                    tr.write(b"reply after eof")
                    tr.close()
                await pr.lost
                state["peer_got"] = await peer_read_until_eof(loop, peer)
                state["log"] = pr.log
                state["data"] = bytes(pr.data)
                state["violations"] = pr.violations
                return state
            finally:
                peer.close()

        return run(loop, main())

    return scenario


@pytest.mark.parametrize("eof_result", [None, False, True, 0, 1], ids=["None", "False", "True", "0", "1"])
def test_peer_half_close_eof_received(loop, eof_result):
    scenario = scenario_peer_half_close(eof_result)
    got = scenario(loop)
    assert got == oracle(scenario)
    assert got["log"] == ["made", "data", "eof", ("lost", None)]
    assert got["data"] == b"hello world"
    assert got["violations"] == []
    if eof_result:
        assert got["closing_after_eof"] is False
        assert got["peer_got"] == b"reply after eof"
    else:
        assert got["closing_after_eof"] is True
        assert got["peer_got"] == b""


def scenario_local_close_in_data_received(loop):
    class P(LogProtocol):
        def on_data(self, data):
            self.transport.close()
            self.log.append("close() returned")
            self.log.append(("lost yet", self.lost.done()))
            self.log.append(("closing", self.transport.is_closing()))
            self.log.append(("reading", self.transport.is_reading()))
            # Writes after close() are accepted (flushed or dropped), not raised.
            self.transport.write(b"late")

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.send(b"one")
            await pr.lost
            # More data from the peer is not delivered after close().
            try:
                peer.send(b"two")
            except OSError:
                pass
            await asyncio.sleep(0.02)
            return pr.log, pr.violations, bytes(pr.data)
        finally:
            peer.close()

    return run(loop, main())


def test_close_inside_data_received(loop):
    got = scenario_local_close_in_data_received(loop)
    assert got == oracle(scenario_local_close_in_data_received)
    log, violations, data = got
    assert log == [
        "made",
        "data",
        "close() returned",
        ("lost yet", False),
        ("closing", True),
        ("reading", False),
        ("lost", None),
    ]
    assert violations == []
    assert data == b"one"


def scenario_abort_inside_data_received(loop):
    class P(LogProtocol):
        def on_data(self, data):
            self.transport.abort()
            self.log.append(("lost yet", self.lost.done()))

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.send(b"one")
            await pr.lost
            await asyncio.sleep(0.01)
            return pr.log, pr.violations
        finally:
            peer.close()

    return run(loop, main())


def test_abort_inside_data_received(loop):
    got = scenario_abort_inside_data_received(loop)
    assert got == oracle(scenario_abort_inside_data_received)
    assert got == (["made", "data", ("lost yet", False), ("lost", None)], [])


def scenario_peer_closes(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        peer.send(b"last words")
        peer.close()
        exc = await pr.lost
        return pr.log, pr.violations, bytes(pr.data), exc

    return run(loop, main())


def test_peer_close(loop):
    got = scenario_peer_closes(loop)
    assert got == oracle(scenario_peer_closes)
    assert got == (["made", "data", "eof", ("lost", None)], [], b"last words", None)


@pytest.mark.parametrize(
    "when",
    [
        "at-once",  # before the transport's first read
        "after-reading-started",
    ],
)
def test_peer_reset(loop, when):
    handler_calls = []
    loop.set_exception_handler(lambda lp, ctx: handler_calls.append(ctx))

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        if when != "at-once":
            await asyncio.sleep(0.05)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST
        exc = await pr.lost
        return pr, exc

    pr, exc = run(loop, main())
    assert isinstance(exc, ConnectionResetError)
    assert exc.errno == errno.ECONNRESET
    assert pr.log == ["made", ("lost", "ConnectionResetError")]
    assert pr.violations == []
    # OSErrors are not reported to the exception handler (asyncio logs them only in debug).
    assert handler_calls == []


def test_write_to_reset_peer(loop):
    handler_calls = []
    loop.set_exception_handler(lambda lp, ctx: handler_calls.append(ctx))

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        tr.pause_reading()  # the reset is seen by a write, not by a read
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        await asyncio.sleep(0.05)
        for _ in range(3):
            tr.write(b"x" * 1000)
            await asyncio.sleep(0.02)
        exc = await pr.lost
        return pr, exc

    pr, exc = run(loop, main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert exc.errno in (errno.ECONNRESET, errno.EPIPE)
    assert pr.log == ["made", ("lost", type(exc).__name__)]
    assert handler_calls == []


def scenario_server_side(loop):
    """The accepted side's log, with a client that sends, half-closes, reads the reply."""

    async def main():
        protos = []

        def factory():
            p = LogProtocol(loop, eof_result=True)

            def on_eof():
                p.transport.write(bytes(p.data).upper())
                p.transport.close()

            p.eof.add_done_callback(lambda f: on_eof())
            protos.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"abc")
        await asyncio.sleep(0.01)
        writer.write(b"def")
        writer.write_eof()
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
        await protos[0].lost
        server.close()
        await server.wait_closed()
        p = protos[0]
        return reply, p.log, p.violations, bytes(p.data)

    return run(loop, main())


def test_server_side_protocol_life(loop):
    got = scenario_server_side(loop)
    assert got == oracle(scenario_server_side)
    assert got == (b"ABCDEF", ["made", "data", "eof", ("lost", None)], [], b"abcdef")


# ----------------------------------------------------------------------------- errors in callbacks


def test_exception_in_data_received(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    boom = ValueError("bad data")

    class P(LogProtocol):
        def on_data(self, data):
            raise boom

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.send(b"trigger")
            exc = await pr.lost
            # The transport is closed: the peer sees EOF.
            assert await peer_read_until_eof(loop, peer) == b""
            return tr, pr, exc
        finally:
            peer.close()

    tr, pr, exc = run(loop, main())
    assert exc is boom
    assert pr.log == ["made", "data", ("lost", "ValueError")]
    assert len(calls) == 1
    ctx = calls[0]
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert ctx["exception"] is boom
    assert ctx["transport"] is tr
    assert ctx["protocol"] is pr
    assert tr.is_closing()


def test_exception_in_eof_received(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    boom = KeyError("bad eof")

    class P(LogProtocol):
        def eof_received(self):
            super().eof_received()
            raise boom

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.shutdown(socket.SHUT_WR)
            return tr, pr, await pr.lost
        finally:
            peer.close()

    tr, pr, exc = run(loop, main())
    assert exc is boom
    assert pr.log == ["made", "eof", ("lost", "KeyError")]
    assert [c["message"] for c in calls] == ["Fatal error: protocol.eof_received() call failed."]
    assert calls[0]["exception"] is boom
    assert calls[0]["transport"] is tr
    assert calls[0]["protocol"] is pr


def test_exception_in_connection_made_and_lost(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    class P(LogProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            raise RuntimeError("made failed")

        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise RuntimeError("lost failed")

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.send(b"still delivered")
            await asyncio.sleep(0.05)
            tr.close()
            await pr.lost
            await asyncio.sleep(0.01)
            return pr
        finally:
            peer.close()

    pr = run(loop, main())
    assert pr.log == ["made", "data", ("lost", None)]
    assert bytes(pr.data) == b"still delivered"
    assert [str(c["exception"]) for c in calls] == ["made failed", "lost failed"]
    for c in calls:
        assert c["message"].startswith("Exception in callback ")


def test_exception_in_pause_and_resume_writing(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    class P(LogProtocol):
        def pause_writing(self):
            super().pause_writing()
            raise ValueError("pause failed")

        def resume_writing(self):
            super().resume_writing()
            raise ValueError("resume failed")

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop), sndbuf=65536, rcvbuf=65536)
        try:
            tr.write(b"x" * (4 << 20))
            assert pr.log == ["made", "pause"]
            got = await peer_read_until_eof(loop, peer, limit=4 << 20)
            assert len(got) == 4 << 20
            await asyncio.sleep(0.01)
            tr.close()
            await pr.lost
            return pr, tr
        finally:
            peer.close()

    pr, tr = run(loop, main())
    assert pr.log == ["made", "pause", "resume", ("lost", None)]
    assert [c["message"] for c in calls] == ["protocol.pause_writing() failed", "protocol.resume_writing() failed"]
    assert [str(c["exception"]) for c in calls] == ["pause failed", "resume failed"]
    assert all(c["transport"] is tr and c["protocol"] is pr for c in calls)


# ----------------------------------------------------------------------------- flow control


def test_write_buffer_limits_defaults_and_validation(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            assert tr.get_write_buffer_limits() == (16384, 65536)
            tr.set_write_buffer_limits(high=1000)
            assert tr.get_write_buffer_limits() == (250, 1000)
            tr.set_write_buffer_limits(low=100)
            assert tr.get_write_buffer_limits() == (100, 400)
            tr.set_write_buffer_limits(high=300, low=200)
            assert tr.get_write_buffer_limits() == (200, 300)
            tr.set_write_buffer_limits(high=7, low=7)
            assert tr.get_write_buffer_limits() == (7, 7)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (16384, 65536)
            tr.set_write_buffer_limits(0)
            assert tr.get_write_buffer_limits() == (0, 0)
            tr.set_write_buffer_limits(high=0, low=0)
            assert tr.get_write_buffer_limits() == (0, 0)
            for kwargs, message in [
                ({"high": 1, "low": 2}, "high (1) must be >= low (2) must be >= 0"),
                ({"low": -1}, "high (-4) must be >= low (-1) must be >= 0"),
                ({"high": -1}, "high (-1) must be >= low (-1) must be >= 0"),
                ({"high": 10, "low": -1}, "high (10) must be >= low (-1) must be >= 0"),
                ({"high": -8, "low": -9}, "high (-8) must be >= low (-9) must be >= 0"),
            ]:
                with pytest.raises(ValueError) as ei:
                    tr.set_write_buffer_limits(**kwargs)
                assert str(ei.value) == message
            # A rejected call leaves the limits alone.
            assert tr.get_write_buffer_limits() == (0, 0)
            assert pr.log == ["made"]
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


async def fill_kernel_buffers(tr, chunk=b"k" * 65536):
    """Write until the transport has to buffer; returns what the transport holds."""
    tr.set_write_buffer_limits(high=1 << 40)
    written = 0
    while tr.get_write_buffer_size() == 0:
        tr.write(chunk)
        written += len(chunk)
        assert written < (256 << 20), "the kernel never pushed back"
    return written


def test_pause_writing_strictly_over_high_resume_at_low(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=32768, rcvbuf=32768)
        try:
            written = await fill_kernel_buffers(tr)
            size = tr.get_write_buffer_size()
            assert size > 0
            low = size // 2
            tr.set_write_buffer_limits(high=size + 10, low=low)
            assert pr.log == ["made"]
            tr.write(b"y" * 10)  # exactly at high: not over
            written += 10
            assert tr.get_write_buffer_size() == size + 10
            assert pr.log == ["made"]
            tr.write(b"z")  # one byte over high
            written += 1
            assert pr.log == ["made", "pause"]
            tr.write(b"more" * 1000)  # still paused: no second call
            written += 4000
            assert pr.log == ["made", "pause"]

            sizes_at_resume = []
            orig_resume = pr.resume_writing

            def resume_writing():
                sizes_at_resume.append(tr.get_write_buffer_size())
                orig_resume()

            pr.resume_writing = resume_writing
            got = await peer_read_until_eof(loop, peer, limit=written)
            assert len(got) == written
            await asyncio.sleep(0.01)
            assert pr.log == ["made", "pause", "resume"]
            assert len(sizes_at_resume) == 1
            assert sizes_at_resume[0] <= low
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def test_set_write_buffer_limits_pauses_at_once(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=32768, rcvbuf=32768)
        try:
            await fill_kernel_buffers(tr)
            size = tr.get_write_buffer_size()
            tr.set_write_buffer_limits(high=size)  # at high: not over
            assert pr.log == ["made"]
            tr.set_write_buffer_limits(high=size - 1, low=0)  # now over
            assert pr.log == ["made", "pause"]
            tr.set_write_buffer_limits(high=size - 2, low=0)  # already paused
            assert pr.log == ["made", "pause"]
            tr.abort()
            await pr.lost
            assert pr.log == ["made", "pause", ("lost", None)]
        finally:
            peer.close()

    run(loop, main())


def test_raising_limits_does_not_resume_synchronously(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=32768, rcvbuf=32768)
        try:
            await fill_kernel_buffers(tr)
            size = tr.get_write_buffer_size()
            tr.set_write_buffer_limits(high=size - 1, low=0)
            assert pr.log == ["made", "pause"]
            # asyncio's set_write_buffer_limits only checks for pausing.
            tr.set_write_buffer_limits(high=size * 4, low=size * 2)
            assert pr.log == ["made", "pause"]
            # The next drain resumes.
            peer_task = loop.create_task(peer_read_until_eof(loop, peer))
            for _ in range(200):
                if "resume" in pr.log:
                    break
                await asyncio.sleep(0.01)
            assert pr.log == ["made", "pause", "resume"]
            tr.close()
            await pr.lost
            await peer_task
        finally:
            peer.close()

    run(loop, main())


def test_zero_limits(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=32768, rcvbuf=32768)
        try:
            tr.set_write_buffer_limits(0)
            tr.write(b"small")  # the kernel takes it: nothing buffered, no pause
            assert tr.get_write_buffer_size() == 0
            assert pr.log == ["made"]
            written = 5
            while "pause" not in pr.log:
                tr.write(b"q" * 65536)
                written += 65536
                assert written < (256 << 20)
            # Paused by the very write that left bytes in the buffer.
            assert tr.get_write_buffer_size() > 0
            sizes = []
            pr.resume_writing = lambda: (sizes.append(tr.get_write_buffer_size()), pr.log.append("resume"))
            got = await peer_read_until_eof(loop, peer, limit=written)
            assert len(got) == written
            await asyncio.sleep(0.01)
            assert pr.log == ["made", "pause", "resume"]
            assert sizes == [0]
            tr.close()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def test_flow_control_many_cycles_byte_exact(loop):
    """A writer that obeys pause/resume: every byte arrives, in order."""
    total = 8 << 20

    class Writer(LogProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=20000, low=5000)
            self.sent = 0
            self.paused = False
            self.pauses = 0
            self.done = self.loop.create_future()
            self.loop.call_soon(self.pump)

        def pump(self):
            while not self.paused and self.sent < total:
                n = min(7777, total - self.sent)
                self.transport.write(PATTERN[self.sent % 251 : self.sent % 251 + n])
                self.sent += n
            if self.sent >= total and not self.done.done():
                self.transport.write_eof()
                self.done.set_result(None)

        def pause_writing(self):
            assert not self.paused
            self.paused = True
            self.pauses += 1
            assert self.transport.get_write_buffer_size() > 20000

        def resume_writing(self):
            assert self.paused
            self.paused = False
            assert self.transport.get_write_buffer_size() <= 5000
            self.loop.call_soon(self.pump)

    async def main():
        tr, pr, peer = await connect(loop, lambda: Writer(loop), sndbuf=32768, rcvbuf=32768)
        try:
            got = await peer_read_until_eof(loop, peer)
            await pr.done
            tr.close()
            await pr.lost
            return got, pr
        finally:
            peer.close()

    got, pr = run(loop, main())
    assert len(got) == total
    expected = b"".join(PATTERN[s % 251 : s % 251 + min(7777, total - s)] for s in range(0, total, 7777))
    assert got == expected
    assert pr.pauses >= 2


PATTERN = bytes(range(251)) * 64


# ----------------------------------------------------------------------------- reading


def test_pause_resume_reading(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            assert tr.is_reading()
            tr.pause_reading()
            assert not tr.is_reading()
            tr.pause_reading()  # idempotent
            assert not tr.is_reading()
            peer.send(b"held back")
            await asyncio.sleep(0.1)
            assert pr.log == ["made"]
            peer.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.05)
            assert pr.log == ["made"]  # not even the EOF
            tr.resume_reading()
            assert tr.is_reading()
            tr.resume_reading()  # idempotent
            await pr.lost
            assert pr.log == ["made", "data", "eof", ("lost", None)]
            assert bytes(pr.data) == b"held back"
            assert not tr.is_reading()
            tr.pause_reading()  # after close: no error
            tr.resume_reading()
            assert not tr.is_reading()
        finally:
            peer.close()

    run(loop, main())


def test_pause_reading_inside_data_received_stops_delivery_at_once(loop):
    total = 2 << 20

    class P(LogProtocol):
        def on_data(self, data):
            self.transport.pause_reading()
            self.chunks_while_paused = getattr(self, "chunks_while_paused", -1) + 1
            self.loop.call_later(0.005, self.transport.resume_reading)

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            await loop.sock_sendall(peer, b"d" * total)
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            return pr
        finally:
            peer.close()

    pr = run(loop, main())
    # Each data_received paused reading; the next one came only after a resume.
    assert len(pr.data) == total
    assert pr.log == ["made", "data", "eof", ("lost", None)]
    assert pr.violations == []


def test_no_data_received_while_paused_strict(loop):
    deliveries = []

    class P(LogProtocol):
        paused = False

        def on_data(self, data):
            deliveries.append(self.paused)
            self.paused = True
            self.transport.pause_reading()

        def resume(self):
            self.paused = False
            self.transport.resume_reading()

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop), rcvbuf=4096)
        try:
            writer = loop.create_task(loop.sock_sendall(peer, b"e" * (1 << 20)))
            while len(pr.data) < (1 << 20):
                await asyncio.sleep(0.001)
                # Stay paused for a while, then resume once.
                await asyncio.sleep(0)
                pr.resume()
            await writer
            tr.close()
            await pr.lost
            return pr
        finally:
            peer.close()

    pr = run(loop, main())
    assert len(pr.data) == 1 << 20
    assert True not in deliveries


def test_set_protocol_mid_stream(loop):
    class First(LogProtocol):
        def on_data(self, data):
            self.second = LogProtocol(self.loop)
            self.second.log.append("installed")
            self.second.transport = self.transport
            self.transport.set_protocol(self.second)
            assert self.transport.get_protocol() is self.second

    async def main():
        tr, first, peer = await connect(loop, lambda: First(loop))
        try:
            peer.send(b"for first")
            while not hasattr(first, "second"):
                await asyncio.sleep(0.005)
            second = first.second
            peer.send(b"for second")
            peer.shutdown(socket.SHUT_WR)
            await second.lost
            await asyncio.sleep(0.01)
            return first, second, tr
        finally:
            peer.close()

    first, second, tr = run(loop, main())
    assert first.log == ["made", "data"]
    assert bytes(first.data) == b"for first"
    assert second.log == ["installed", "data", "eof", ("lost", None)]
    assert bytes(second.data) == b"for second"
    assert not first.lost.done()


def test_set_protocol_to_buffered(loop):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self, lp):
            self.buf = bytearray(1000)
            self.got = bytearray()
            self.lost = lp.create_future()

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.got += self.buf[:nbytes]

        def eof_received(self):
            return None

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    payload = os.urandom(300000)

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            bp = Buffered(loop)
            tr.set_protocol(bp)
            await loop.sock_sendall(peer, payload)
            peer.shutdown(socket.SHUT_WR)
            await bp.lost
            return bp, pr
        finally:
            peer.close()

    bp, pr = run(loop, main())
    assert bytes(bp.got) == payload
    assert pr.log == ["made"]


class RecordingBuffered(asyncio.BufferedProtocol):
    def __init__(self, loop, size):
        self.loop = loop
        self.buffer = bytearray(size)
        self.got = bytearray()
        self.log = []
        self.lost = loop.create_future()
        self.hints = set()
        self.max_fill = 0

    def connection_made(self, transport):
        self.transport = transport
        self.log.append("made")

    def get_buffer(self, sizehint):
        self.hints.add(sizehint)
        if not self.log or self.log[-1] != "buffer":
            self.log.append("buffer")
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buffer)
        self.max_fill = max(self.max_fill, nbytes)
        self.got += self.buffer[:nbytes]

    def eof_received(self):
        self.log.append("eof")

    def connection_lost(self, exc):
        self.log.append(("lost", exc))
        self.lost.set_result(exc)


@pytest.mark.parametrize("bufsize", [1, 7919, 256 * 1024])
def test_buffered_protocol_large_payload(loop, bufsize):
    payload = os.urandom(8 << 20 if bufsize > 1 else 20000)

    async def main():
        tr, pr, peer = await connect(loop, lambda: RecordingBuffered(loop, bufsize))
        try:
            sender = loop.create_task(loop.sock_sendall(peer, payload))
            await sender
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            return pr
        finally:
            peer.close()

    pr = run(loop, main())
    assert len(pr.got) == len(payload)
    assert bytes(pr.got) == payload
    assert pr.log == ["made", "buffer", "eof", ("lost", None)]
    assert pr.hints == {-1}
    assert pr.max_fill <= bufsize


def test_buffered_protocol_get_buffer_errors(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    class Empty(RecordingBuffered):
        def get_buffer(self, sizehint):
            return bytearray()

    class Raises(RecordingBuffered):
        def get_buffer(self, sizehint):
            raise LookupError("no buffer")

    async def main(factory):
        tr, pr, peer = await connect(loop, factory)
        try:
            peer.send(b"data")
            return await pr.lost
        finally:
            peer.close()

    exc = run(loop, main(lambda: Empty(loop, 10)))
    assert isinstance(exc, RuntimeError)
    assert str(exc) == "get_buffer() returned an empty buffer"
    exc2 = run(loop, main(lambda: Raises(loop, 10)))
    assert isinstance(exc2, LookupError)
    assert [c["message"] for c in calls] == ["Fatal error: protocol.get_buffer() call failed."] * 2
    assert calls[0]["exception"] is exc
    assert calls[1]["exception"] is exc2


def test_buffered_protocol_buffer_updated_error(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    boom = ValueError("updated")

    class P(RecordingBuffered):
        def buffer_updated(self, nbytes):
            raise boom

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop, 100))
        try:
            peer.send(b"data")
            return await pr.lost
        finally:
            peer.close()

    assert run(loop, main()) is boom
    assert [c["message"] for c in calls] == ["Fatal error: protocol.buffer_updated() call failed."]


def _mixed_stream():
    """Bytes in writes of changing sizes: large ones (read straight into the bytes a protocol gets) between
    small ones (copied out of the loop's buffer), so that reads switch between the two ways."""
    pattern = bytes(range(251)) * 4000  # period 251: an offset error shows
    sizes = [200_000, 100, 70_000, 5, 300_000, 33_000, 1, 120 * 1024 + 7, 40_000, 2_000]
    chunks, off = [], 0
    for n in sizes:
        chunks.append(pattern[off % 251: off % 251 + n])
        off += n
    return chunks


def test_large_reads_reach_data_received_intact_and_kept_chunks_stay_as_they_were(loop):
    """Every chunk data_received gets is a bytes object of its own: kept ones never change afterwards, and
    together they are the stream, whatever the sizes of the reads."""
    chunks = _mixed_stream()
    expected = b"".join(chunks)

    class Keep(asyncio.Protocol):
        def __init__(self):
            self.kept = []
            self.snapshots = []
            self.lost = loop.create_future()

        def data_received(self, data):
            assert type(data) is bytes
            self.kept.append(data)
            self.snapshots.append(bytes(bytearray(data)))  # a copy made at delivery

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        tr, pr, peer = await connect(loop, Keep)
        try:
            for c in chunks:
                await loop.sock_sendall(peer, c)
                await asyncio.sleep(0.01)
            peer.shutdown(socket.SHUT_WR)
            assert await pr.lost is None
            return pr
        finally:
            peer.close()

    pr = run(loop, main())
    assert b"".join(pr.kept) == expected
    assert pr.kept == pr.snapshots
    assert max(len(k) for k in pr.kept) > 32 * 1024


# ----------------------------------------------------------------------------- contextvars


def test_protocol_callbacks_run_in_transport_context(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    class P(asyncio.Protocol):
        def __init__(self, side):
            self.side = side
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            seen.append((self.side, "made", var.get()))

        def data_received(self, data):
            seen.append((self.side, "data", var.get()))
            if self.side == "server":
                self.transport.write(data)
                self.transport.close()

        def eof_received(self):
            seen.append((self.side, "eof", var.get()))

        def connection_lost(self, exc):
            seen.append((self.side, "lost", var.get()))
            self.lost.set_result(None)

    server_protos = []

    async def start_server():
        var.set("server")
        return await loop.create_server(lambda: server_protos.append(P("server")) or server_protos[-1], "127.0.0.1", 0)

    async def client(port):
        var.set("client")
        tr, pr = await loop.create_connection(lambda: P("client"), "127.0.0.1", port)
        # Changing the variable afterwards does not reach the transport's callbacks.
        var.set("changed later")
        tr.write(b"ping")
        await pr.lost
        return pr

    async def main():
        server = await loop.create_task(start_server())
        port = server.sockets[0].getsockname()[1]
        await loop.create_task(client(port))
        await server_protos[0].lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    client_seen = [s for s in seen if s[0] == "client"]
    server_seen = [s for s in seen if s[0] == "server"]
    assert client_seen == [
        ("client", "made", "client"),
        ("client", "data", "client"),
        ("client", "eof", "client"),
        ("client", "lost", "client"),
    ]
    assert server_seen == [
        ("server", "made", "server"),
        ("server", "data", "server"),
        ("server", "lost", "server"),
    ]


@pytest.mark.parametrize("failure", [None, "get_buffer", "buffer_updated", "read-only buffer"])
def test_buffered_protocol_callbacks_run_in_transport_context(loop, failure):
    """A buffered read's get_buffer and buffer_updated run in the transport's context (asyncio runs both
    in one handle), a variable set in get_buffer is seen by buffer_updated, and after a read, whether
    it succeeded or a callback failed, the context is free again: the next callbacks run in it."""
    var = contextvars.ContextVar("buffered_var", default="unset")
    seen = []

    class P(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(16)
            self.lost = loop.create_future()

        def connection_made(self, transport):
            seen.append(("made", var.get()))

        def get_buffer(self, sizehint):
            seen.append(("get_buffer", var.get()))
            var.set("from get_buffer")
            if failure == "get_buffer":
                raise ValueError("get_buffer fails")
            if failure == "read-only buffer":
                return b"read-only"
            return self.buf

        def buffer_updated(self, nbytes):
            seen.append(("buffer_updated", var.get(), bytes(self.buf[:nbytes])))
            if failure == "buffer_updated":
                raise ValueError("buffer_updated fails")

        def eof_received(self):
            seen.append(("eof", var.get()))

        def connection_lost(self, exc):
            seen.append(("lost", var.get(), type(exc).__name__))
            self.lost.set_result(None)

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx["message"]))

    async def main():
        var.set("creator")
        tr, pr, peer = await connect(loop, P)
        var.set("changed later")
        try:
            peer.send(b"abc")
            if failure is None:
                await asyncio.sleep(0.05)
                peer.shutdown(socket.SHUT_WR)
            await pr.lost
        finally:
            peer.close()

    run(loop, main())
    if failure is None:
        assert seen == [
            ("made", "creator"),
            ("get_buffer", "creator"),
            ("buffer_updated", "from get_buffer", b"abc"),
            ("get_buffer", "from get_buffer"),
            ("eof", "from get_buffer"),
            ("lost", "from get_buffer", "NoneType"),
        ]
        assert errors == []
    else:
        expected = [("made", "creator"), ("get_buffer", "creator")]
        if failure == "buffer_updated":
            expected.append(("buffer_updated", "from get_buffer", b"abc"))
        lost_exc = "TypeError" if failure == "read-only buffer" else "ValueError"
        assert seen == expected + [("lost", "from get_buffer", lost_exc)]
        assert len(errors) == 1


def test_protocol_context_isolated_from_caller(loop):
    """A ContextVar set inside data_received does not leak into the caller's context."""
    var = contextvars.ContextVar("var2", default="unset")

    class P(LogProtocol):
        def on_data(self, data):
            var.set("set in data_received")

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop))
        try:
            peer.send(b"x")
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            return var.get()
        finally:
            peer.close()

    assert run(loop, main()) == "unset"
    assert var.get() == "unset"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_data_received_propagates(loop, exc_type):
    """asyncio re-raises SystemExit/KeyboardInterrupt from protocol callbacks out of the loop."""

    class P(LogProtocol):
        def on_data(self, data):
            raise exc_type("from data_received")

    a, b = tcp_pair()
    try:
        tr, pr = loop.run_until_complete(loop.create_connection(lambda: P(loop), sock=a))
        b.sendall(b"x")
        loop.call_later(5, loop.stop)
        with pytest.raises(exc_type):
            loop.run_forever()
        # The transport is not closed by it; the loop runs again.
        assert not tr.is_closing()
        tr.close()
        loop.run_until_complete(pr.lost)
        assert pr.log == ["made", "data", ("lost", None)]
    finally:
        b.close()


# ----------------------------------------------------------------------------- data handling


def test_write_memoryview_of_any_format(loop):
    import array

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            ints = array.array("i", [1, 2, 3])
            tr.write(memoryview(ints))
            tr.writelines([memoryview(array.array("h", [4, 5]))])
            tr.close()
            got = await peer_read_until_eof(loop, peer)
            assert got == ints.tobytes() + array.array("h", [4, 5]).tobytes()
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


@_ZERO_COPY
def test_write_copies_data_mutated_afterwards(loop):
    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop), sndbuf=32768, rcvbuf=32768)
        try:
            filler = await fill_kernel_buffers(tr, chunk=b"\0" * 65536)
            data = bytearray(b"A" * 100000)
            tr.write(data)  # buffered: the transport must keep its own copy
            data[:] = b"B" * 100000
            view_src = bytearray(b"C" * 50000)
            tr.write(memoryview(view_src))
            view_src[:] = b"D" * 50000
            tr.close()
            got = await peer_read_until_eof(loop, peer)
            assert got == b"\0" * filler + b"A" * 100000 + b"C" * 50000
            await pr.lost
        finally:
            peer.close()

    run(loop, main())


def test_writelines_many_small_chunks_byte_exact(loop):
    chunks = [os.urandom(i % 97 + 1) for i in range(20000)]

    async def main():
        tr, pr, peer = await connect(loop, lambda: LogProtocol(loop))
        try:
            tr.set_write_buffer_limits(high=1 << 30)
            tr.writelines(chunks[:10000])
            for c in chunks[10000:]:
                tr.write(c)
            tr.write_eof()
            got = await peer_read_until_eof(loop, peer)
            tr.close()
            await pr.lost
            return got
        finally:
            peer.close()

    assert run(loop, main()) == b"".join(chunks)


def test_create_connection_protocol_factory_raises(loop):
    async def main():
        with __import__("socket").socket() as ls:
            ls.bind(("127.0.0.1", 0))
            ls.listen(5)
            with pytest.raises(ZeroDivisionError):
                await loop.create_connection(lambda: 1 / 0, *ls.getsockname())

    run(loop, main())


def test_server_protocol_factory_raises_closes_connection(loop):
    async def main():
        server = await loop.create_server(lambda: 1 / 0, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        try:
            got = await reader.read()
        except ConnectionResetError:
            got = b""
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert run(loop, main()) == b""


def test_unix_transport_extra_info(loop, tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        server_protos = []
        server = await loop.create_unix_server(lambda: server_protos.append(LogProtocol(loop)) or server_protos[-1], path)
        tr, pr = await loop.create_unix_connection(lambda: LogProtocol(loop), path)
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_extra_info("peername") == path
        assert tr.get_extra_info("sockname") == ""
        sock = tr.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.family == socket.AF_UNIX
        assert tr.can_write_eof()
        tr.write(b"over unix")
        tr.write_eof()
        while not server_protos or not server_protos[0].eof.done():
            await asyncio.sleep(0.005)
        sp = server_protos[0]
        assert bytes(sp.data) == b"over unix"
        assert sp.transport.get_extra_info("sockname") == path
        await sp.lost
        await pr.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_stop_in_data_received_defers_eof(loop):
    log = []

    class P(LogProtocol):
        def on_data(self, data):
            loop.stop()

    a, b = tcp_pair()
    try:
        tr, pr = loop.run_until_complete(loop.create_connection(lambda: P(loop), sock=a))
        b.sendall(b"x")
        b.shutdown(socket.SHUT_WR)  # data and FIN are both waiting before the loop runs
        loop.call_later(5, loop.stop)
        loop.run_forever()
        log.append(list(pr.log))
        loop.run_until_complete(pr.lost)
        log.append(list(pr.log))
    finally:
        b.close()
    assert log == [["made", "data"], ["made", "data", "eof", ("lost", None)]]


def test_buffered_protocol_buffers_of_any_item_format(loop):
    """recv_into() takes any writable C-contiguous buffer as raw bytes, whatever its item format;
    a non-contiguous one is the read error asyncio reports."""
    import array

    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    payload = bytes(range(256)) * 40

    class Ints(RecordingBuffered):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.ints = array.array("i", bytes(64))  # 64 bytes as 16 ints

        def get_buffer(self, sizehint):
            return self.ints

        def buffer_updated(self, nbytes):
            self.got += self.ints.tobytes()[:nbytes]

    class Strided(RecordingBuffered):
        def get_buffer(self, sizehint):
            return memoryview(self.buffer)[::2]

    async def main(factory, data):
        tr, pr, peer = await connect(loop, factory)
        try:
            peer.sendall(data)
            peer.shutdown(socket.SHUT_WR)
            exc = await pr.lost
            return pr, exc
        finally:
            peer.close()

    pr, exc = run(loop, main(lambda: Ints(loop, 1), payload))
    assert exc is None
    assert bytes(pr.got) == payload
    assert calls == []
    pr, exc = run(loop, main(lambda: Strided(loop, 20), b"data"))
    assert isinstance(exc, TypeError)
    assert "read-write bytes-like object" in str(exc)
    assert [c["message"] for c in calls] == ["Fatal read error on socket transport"]


def test_buffered_protocol_buffer_is_free_when_a_read_finds_nothing(loop):
    """recv_into() lets go of the buffer when it returns: after a read that
    found no data (a full buffer makes the transport read again) and at EOF,
    the protocol may resize its bytearray, as on asyncio."""
    outcomes = []

    class P(RecordingBuffered):
        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.loop.call_soon(self.resize, "later")

        def get_buffer(self, sizehint):
            return self.buffer

        def resize(self, when):
            try:
                self.buffer.extend(b"\0")
                del self.buffer[-1:]
                outcomes.append((when, "ok"))
            except BufferError as e:
                outcomes.append((when, repr(e)))

        def eof_received(self):
            self.resize("eof")
            return super().eof_received()

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop, 16))
        try:
            peer.sendall(b"x" * 16)  # fills the buffer: the transport reads again, finds nothing
            while not outcomes:
                await asyncio.sleep(0.01)
            peer.shutdown(socket.SHUT_WR)
            await pr.lost
            return pr
        finally:
            peer.close()

    pr = run(loop, main())
    assert bytes(pr.got) == b"x" * 16
    assert outcomes == [("later", "ok"), ("eof", "ok")]


def test_buffered_protocol_read_only_buffer(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    class P(RecordingBuffered):
        def get_buffer(self, sizehint):
            return memoryview(b"read-only")

    async def main():
        tr, pr, peer = await connect(loop, lambda: P(loop, 10))
        try:
            peer.send(b"data")
            exc = await pr.lost
            assert tr.get_extra_info("socket").fileno() == -1
            return exc
        finally:
            peer.close()

    exc = run(loop, main())
    assert isinstance(exc, TypeError)
    assert "read-write bytes-like object" in str(exc)
    assert [c["message"] for c in calls] == ["Fatal read error on socket transport"]
    assert calls[0]["exception"] is exc
