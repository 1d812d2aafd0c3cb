"""Datagram transports (UDP and Unix datagram sockets), differential: every test
runs on stock asyncio (the oracle) and on ferroloop, with the same assertions.

What asyncio's ``_SelectorDatagramTransport`` does and these tests pin down:
the protocol life cycle, the sender's address in ``datagram_received``,
``sendto``'s argument checks and messages, ``error_received`` for ICMP errors
on a connected socket and for oversized datagrams (called synchronously from
``sendto``), exceptions from protocol callbacks, close/abort, sends after
close, flow control on the send queue, ``sock=``, Unix datagram sockets.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import sys
import tempfile
import warnings
import weakref

import pytest

from conftest import asyncio_differs, run, run_isolated

HAS_IPV6 = socket.has_ipv6
try:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as _s:
        _s.bind(("::1", 0))
except OSError:
    HAS_IPV6 = False


class Proto(asyncio.DatagramProtocol):
    """Records every callback; checks the life cycle as it goes."""

    def __init__(self, loop, echo=False):
        self.loop = loop
        self.echo = echo
        self.events = []
        self.datagrams = []
        self.errors = []
        self.transport = None
        self.done = loop.create_future()
        self.got = asyncio.Event()

    def connection_made(self, transport):
        assert not self.events, self.events
        self.transport = transport
        self.events.append("made")

    def datagram_received(self, data, addr):
        assert self.events[0] == "made" and "lost" not in self.events
        self.events.append("datagram")
        self.datagrams.append((data, addr))
        self.got.set()
        if self.echo:
            self.transport.sendto(data, addr)

    def error_received(self, exc):
        assert "lost" not in self.events
        self.events.append("error")
        self.errors.append(exc)
        self.got.set()

    def connection_lost(self, exc):
        assert self.events.count("lost") == 0
        self.events.append("lost")
        self.done.set_result(exc)

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")


async def wait_for(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)


# Python 3.13's DatagramTransport.sendto(b"") sends a zero-length datagram
# (CPython gh-113812); before, it returned without sending.
SENDS_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
# Python 3.13's write buffer size counts 8 header bytes per queued datagram
# besides its payload (same change); before, only the payload.
HEADER = 8 if sys.version_info >= (3, 13) else 0


async def endpoint(loop, echo=False, **kw):
    return await loop.create_datagram_endpoint(lambda: Proto(loop, echo), **kw)


async def unix_sink(loop, d):
    """A transport connected to a Unix datagram socket that nobody reads:
    once that socket's queue is full, sends queue up in the transport. (Not a
    socketpair: its peer's name is '' and asyncio then sends without an address.)"""
    path = os.path.join(d, "sink.sock")
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.bind(path)
    b.setblocking(False)
    t, p = await endpoint(loop, remote_addr=path, family=socket.AF_UNIX)
    return t, p, b


def test_sendto_empty_datagram(loop):
    """sendto(b"") (bytes, bytearray or memoryview): from Python 3.13 a
    zero-length datagram, received as datagram_received(b"", addr), and
    checked as any datagram (a wrong address raises ValueError); before
    3.13 nothing is sent and nothing checked."""

    async def main():
        st, sp = await endpoint(loop, local_addr=("127.0.0.1", 0))
        saddr = st.get_extra_info("sockname")
        ct, cp = await endpoint(loop, remote_addr=saddr)
        caddr = ct.get_extra_info("sockname")
        ut, up = await endpoint(loop, local_addr=("127.0.0.1", 0))
        uaddr = ut.get_extra_info("sockname")
        if SENDS_EMPTY_DATAGRAMS:
            with pytest.raises(ValueError, match="Invalid address"):
                ct.sendto(b"", ("127.0.0.1", 9))
        else:
            ct.sendto(b"", ("127.0.0.1", 9))
        ct.sendto(b"")
        ct.sendto(bytearray())
        ut.sendto(memoryview(b""), saddr)
        ct.sendto(b"end")
        await wait_for(lambda: (b"end", caddr) in sp.datagrams)
        if SENDS_EMPTY_DATAGRAMS:
            assert sorted(sp.datagrams) == sorted([(b"", caddr), (b"", caddr), (b"", uaddr), (b"end", caddr)])
        else:
            assert sp.datagrams == [(b"end", caddr)]
        assert cp.errors == sp.errors == up.errors == []
        for t, p in ((st, sp), (ct, cp), (ut, up)):
            t.close()
            await p.done

    run(loop, main())


def test_echo_round_trip_addresses_and_extra_info(loop):
    async def main():
        st, sp = await endpoint(loop, echo=True, local_addr=("127.0.0.1", 0))
        saddr = st.get_extra_info("sockname")
        assert saddr[0] == "127.0.0.1" and saddr[1] > 0
        assert st.get_extra_info("peername") is None
        assert isinstance(st, asyncio.BaseTransport) and isinstance(st, asyncio.Transport)
        sock = st.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
        assert sock.getsockname() == saddr
        assert st.get_extra_info("nonexistent", "dflt") == "dflt"
        assert sp.events == ["made"]

        ct, cp = await endpoint(loop, remote_addr=saddr)
        assert ct.get_extra_info("peername") == saddr
        caddr = ct.get_extra_info("sockname")
        ct.sendto(b"hello")
        ct.sendto(bytearray(b"world"), saddr)  # the remote address itself is allowed
        ct.sendto(memoryview(b"!"))
        await wait_for(lambda: len(cp.datagrams) == 3)
        assert cp.datagrams == [(b"hello", saddr), (b"world", saddr), (b"!", saddr)]
        assert all(type(d) is bytes for d, _ in cp.datagrams)
        assert sp.datagrams == [(b"hello", caddr), (b"world", caddr), (b"!", caddr)]

        ct.close()
        assert ct.is_closing()
        assert "lost" not in cp.events, "connection_lost comes later, from the loop"
        assert await asyncio.wait_for(cp.done, 5) is None
        assert cp.events == ["made", "datagram", "datagram", "datagram", "lost"]
        st.abort()
        assert await asyncio.wait_for(sp.done, 5) is None
        assert ct.get_extra_info("socket").fileno() == -1

    run(loop, main())


def test_sendto_argument_checks_and_messages(loop):
    async def main():
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        paddr = peer.getsockname()
        ct, cp = await endpoint(loop, remote_addr=paddr)
        with pytest.raises(TypeError, match=r"^data argument must be a bytes-like object, not 'str'$"):
            ct.sendto("text")
        with pytest.raises(TypeError, match=r"^data argument must be a bytes-like object, not 'int'$"):
            ct.sendto(5, paddr)
        other = ("127.0.0.1", 9)
        with pytest.raises(ValueError) as info:
            ct.sendto(b"x", other)
        assert str(info.value) == f"Invalid address: must be None or {paddr}"
        ct.sendto(b"")  # asyncio drops empty datagrams before 3.13, sends them from 3.13 on
        ct.sendto(b"ok", paddr)
        peer.settimeout(5)
        if SENDS_EMPTY_DATAGRAMS:
            assert peer.recvfrom(100) == (b"", ct.get_extra_info("sockname"))
        assert peer.recvfrom(100) == (b"ok", ct.get_extra_info("sockname"))
        assert not ct.is_closing() and cp.errors == []
        ct.close()
        await cp.done
        peer.close()

    run(loop, main())


def test_datagram_method_argument_errors_as_asyncio(loop):
    """The datagram transport's methods, called with arguments that do not
    fit, raise a Python method's TypeError naming the class that defines
    the method (as test_tcp's test of the stream transport)."""

    def defining_class(obj, name):
        return next(c for c in type(obj).__mro__ if name in vars(c)).__qualname__

    async def main():
        tr, pr = await endpoint(loop, local_addr=("127.0.0.1", 0))
        for call, name, error in (
            (lambda: tr.sendto(), "sendto", "missing 1 required positional argument: 'data'"),
            (lambda: tr.sendto(addr=None), "sendto", "missing 1 required positional argument: 'data'"),
            (lambda: tr.sendto(b"x", None, 3), "sendto", "takes from 2 to 3 positional arguments but 4 were given"),
            (lambda: tr.sendto(b"x", x=1), "sendto", "got an unexpected keyword argument 'x'"),
            (lambda: tr.close(1), "close", "takes 1 positional argument but 2 were given"),
            (lambda: tr.abort(x=1), "abort", "got an unexpected keyword argument 'x'"),
            (lambda: tr.set_protocol(), "set_protocol", "missing 1 required positional argument: 'protocol'"),
            (lambda: tr._force_close(), "_force_close", "missing 1 required positional argument: 'exc'"),
        ):
            with pytest.raises(TypeError) as ei:
                call()
            assert str(ei.value) == f"{defining_class(tr, name)}.{name}() {error}"
        assert not tr.is_closing()
        tr.close()
        await pr.done

    run(loop, main())


def test_icmp_port_unreachable_goes_to_error_received(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()  # nobody listens there once closed
        ct, cp = await endpoint(loop, remote_addr=dead)
        ct.sendto(b"anyone?")
        await wait_for(lambda: cp.errors)
        exc = cp.errors[0]
        assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
        assert not ct.is_closing() and "lost" not in cp.events
        ct.close()
        assert await asyncio.wait_for(cp.done, 5) is None

    run(loop, main())


def test_oversized_datagram_error_received_inside_sendto(loop):
    async def main():
        st, sp = await endpoint(loop, local_addr=("127.0.0.1", 0))
        me = st.get_extra_info("sockname")
        st.sendto(b"x" * 70000, me)
        # asyncio calls error_received from sendto itself.
        assert len(sp.errors) == 1
        assert isinstance(sp.errors[0], OSError) and sp.errors[0].errno == errno.EMSGSIZE
        assert st.get_write_buffer_size() == 0 and not st.is_closing()
        st.sendto(b"y" * 65507, me)  # the largest IPv4 UDP payload
        await wait_for(lambda: sp.datagrams)
        assert len(sp.datagrams[0][0]) == 65507

        # What error_received raises propagates to sendto's caller.
        def boom(exc):
            raise KeyError("from error_received")

        sp.error_received = boom
        with pytest.raises(KeyError, match="from error_received"):
            st.sendto(b"x" * 70000, me)
        assert not st.is_closing()
        st.close()
        await sp.done

    run(loop, main())


def test_exception_in_datagram_received_is_reported_transport_stays_open(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def main():
        st, sp = await endpoint(loop, local_addr=("127.0.0.1", 0))
        original = sp.datagram_received

        def failing(data, addr):
            original(data, addr)
            if data == b"boom":
                raise ZeroDivisionError("protocol bug")

        sp.datagram_received = failing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"boom", st.get_extra_info("sockname"))
            await wait_for(lambda: len(sp.datagrams) == 1 and errors)
            peer.sendto(b"after", st.get_extra_info("sockname"))
            await wait_for(lambda: len(sp.datagrams) == 2)
        assert len(errors) == 1
        assert errors[0]["message"].startswith("Exception in callback")
        assert isinstance(errors[0]["exception"], ZeroDivisionError)
        assert not st.is_closing()
        st.close()
        await sp.done

    run(loop, main())


def test_bad_address_is_a_fatal_write_error(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def main():
        st, sp = await endpoint(loop, local_addr=("127.0.0.1", 0))
        st.sendto(b"x", "not a tuple")
        exc = await asyncio.wait_for(sp.done, 5)
        assert isinstance(exc, TypeError)
        assert [e["message"] for e in errors] == ["Fatal write error on datagram transport"]
        assert errors[0]["exception"] is exc

    run(loop, main())


def test_names_are_resolved_and_unknown_names_go_to_error_received(loop):
    async def main():
        st, sp = await endpoint(loop, local_addr=("127.0.0.1", 0))
        port = st.get_extra_info("sockname")[1]
        ct, cp = await endpoint(loop, family=socket.AF_INET)
        ct.sendto(b"by name", ("localhost", port))
        await wait_for(lambda: sp.datagrams)
        assert sp.datagrams[0][0] == b"by name"
        ct.sendto(b"x", ("no-such-host.invalid", port))
        assert len(cp.errors) == 1 and isinstance(cp.errors[0], socket.gaierror)
        assert not ct.is_closing()
        ct.close()
        st.close()
        await cp.done
        await sp.done

    run(loop, main())


def test_sends_after_close_are_dropped_with_asyncios_warning(loop, caplog):
    async def main():
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        ct, cp = await endpoint(loop, remote_addr=peer.getsockname())
        ct.close()
        await cp.done
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(4):
                ct.sendto(b"late")
            assert not [r for r in caplog.records if "socket.send() raised exception." in r.getMessage()]
            ct.sendto(b"late")
            ct.sendto(b"late")
        warned = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
        assert len(warned) == 2
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(10)
        peer.close()

    run(loop, main())


def test_unconnected_send_after_close_from_error_received_still_reports(loop):
    """An error_received() that closes an unconnected transport: the next
    send is still made (asyncio drops writes after close only with a remote
    address), its error reaches error_received, and connection_lost follows."""

    class CloseOnError(Proto):
        def error_received(self, exc):
            super().error_received(exc)
            self.transport.close()

    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        t, p = await loop.create_datagram_endpoint(lambda: CloseOnError(loop), sock=sock)
        addr = sock.getsockname()
        oversized = b"\0" * 70000
        t.sendto(oversized, addr)
        t.sendto(oversized, addr)
        assert await asyncio.wait_for(p.done, 5) is None
        assert [e.errno for e in p.errors] == [errno.EMSGSIZE, errno.EMSGSIZE]
        assert p.events == ["made", "error", "error", "lost"]

    run(loop, main())


def test_close_waits_for_queued_datagrams_abort_drops_them(loop):
    async def main():
        for how in ("close", "abort"):
            d = tempfile.mkdtemp()
            t, p, b = await unix_sink(loop, d)
            sent = 0
            while t.get_write_buffer_size() == 0:  # the peer's queue is full: sends queue up
                t.sendto(sent.to_bytes(4, "big") + b"x" * 1000)
                sent += 1
            queued = t.get_write_buffer_size()
            assert queued % (1004 + HEADER) == 0
            getattr(t, how)()
            assert t.is_closing()
            if how == "abort":
                assert await asyncio.wait_for(p.done, 5) is None
            received = []
            while True:
                try:
                    received.append(int.from_bytes(b.recv(2000)[:4], "big"))
                except BlockingIOError:
                    if p.done.done():
                        break
                    await asyncio.sleep(0.01)
            if how == "close":
                assert await p.done is None
                assert received == list(range(sent)), "every queued datagram is sent before connection_lost"
            else:
                assert len(received) < sent, "abort dropped the queue"
            b.close()
            os.unlink(os.path.join(d, "sink.sock"))
            os.rmdir(d)

    run(loop, main())


def test_flow_control_on_the_send_queue(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            await flow(d)

    async def flow(d):
        t, p, b = await unix_sink(loop, d)
        assert t.get_write_buffer_limits() == (16384, 65536)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
            t.set_write_buffer_limits(high=1, low=2)
        t.set_write_buffer_limits(high=4000, low=1000)
        assert t.get_write_buffer_limits() == (1000, 4000)
        while "pause" not in p.events:
            t.sendto(b"z" * 1000)
        assert p.events.count("pause") == 1
        # Paused when strictly over high: 5 payloads of 1000 (4 of 1008 on 3.13).
        queued = 4 if HEADER else 5
        assert t.get_write_buffer_size() == queued * (1000 + HEADER), "paused when strictly over high"
        t.sendto(b"z" * 1000)
        assert p.events.count("pause") == 1
        n = 0
        while "resume" not in p.events:
            try:
                b.recv(2000)
                n += 1
            except BlockingIOError:
                await asyncio.sleep(0.005)
        assert t.get_write_buffer_size() <= 1000
        t.close()
        while not p.done.done():
            try:
                b.recv(2000)
            except BlockingIOError:
                await asyncio.sleep(0.005)
        assert p.events.count("resume") == 1
        b.close()

    run(loop, main())


def test_unix_datagram_endpoints(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            spath = os.path.join(d, "server.sock")
            cpath = os.path.join(d, "client.sock")
            st, sp = await endpoint(loop, echo=True, local_addr=spath, family=socket.AF_UNIX)
            assert st.get_extra_info("sockname") == spath
            ct, cp = await endpoint(loop, local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX)
            assert ct.get_extra_info("peername") == spath
            ct.sendto(b"over unix")
            await wait_for(lambda: cp.datagrams)
            assert sp.datagrams == [(b"over unix", cpath)]
            assert cp.datagrams == [(b"over unix", spath)]
            sp.echo = False  # (an echo to an unnamed sender, addr None, is a fatal write error)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as anon:
                anon.sendto(b"anon", spath)
                await wait_for(lambda: len(sp.datagrams) == 2)
            assert sp.datagrams[1] == (b"anon", None), "an unnamed sender's address is None"
            abstract = b"\0ferroloop-test-%d" % os.getpid()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as named:
                named.bind(abstract)
                st.sendto(b"to abstract", abstract)
                named.settimeout(5)
                assert named.recvfrom(100) == (b"to abstract", spath)
                named.sendto(b"from abstract", spath)
                await wait_for(lambda: len(sp.datagrams) == 3)
                assert sp.datagrams[2] == (b"from abstract", abstract)
            ct.close()
            await cp.done
            st.abort()
            await sp.done

    run(loop, main())


def test_existing_socket_and_unbound_endpoint(loop):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        addr = sock.getsockname()
        st, sp = await loop.create_datagram_endpoint(lambda: Proto(loop, echo=True), sock=sock)
        assert st.get_extra_info("socket").fileno() == sock.fileno()
        ut, up = await endpoint(loop, family=socket.AF_INET)
        assert ut.get_extra_info("peername") is None
        ut.sendto(b"ping", addr)
        await wait_for(lambda: up.datagrams)
        assert up.datagrams == [(b"ping", addr)]
        with pytest.raises(ValueError):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol)
        st.close()
        ut.close()
        await sp.done
        await up.done
        assert sock.fileno() == -1, "the transport closes the socket it was given"

    run(loop, main())


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_ipv6_addresses_are_four_tuples(loop):
    async def main():
        st, sp = await endpoint(loop, echo=True, local_addr=("::1", 0))
        saddr = st.get_extra_info("sockname")
        assert len(saddr) == 4
        ct, cp = await endpoint(loop, remote_addr=saddr[:2])
        ct.sendto(b"six")
        await wait_for(lambda: cp.datagrams)
        assert cp.datagrams == [(b"six", saddr)]
        caddr = ct.get_extra_info("sockname")
        assert sp.datagrams == [(b"six", caddr)]
        st.sendto(b"again", caddr[:2])  # a 2-tuple works for AF_INET6
        await wait_for(lambda: len(cp.datagrams) == 2)
        ct.close()
        st.close()
        await cp.done
        await sp.done

    run(loop, main())


def test_pause_and_resume_reading(loop):
    async def main():
        st, sp = await endpoint(loop, local_addr=("127.0.0.1", 0))
        assert st.is_reading()
        st.pause_reading()
        assert not st.is_reading()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"1", st.get_extra_info("sockname"))
            await asyncio.sleep(0.05)
            assert sp.datagrams == []
            st.resume_reading()
            await wait_for(lambda: sp.datagrams)
        assert sp.datagrams[0][0] == b"1"
        st.close()
        assert not st.is_reading()
        await sp.done

    run(loop, main())


def test_closed_transport_and_protocol_are_collected(loop):
    async def main():
        st, sp = await endpoint(loop, local_addr=("127.0.0.1", 0))
        sp.cycle = sp  # protocol -> transport -> protocol, and a self-cycle
        st.close()
        await sp.done
        return weakref.ref(st), weakref.ref(sp)

    wt, wp = run(loop, main())
    for _ in range(3):
        gc.collect()
    assert wt() is None and wp() is None


def test_unclosed_transport_warns_and_closes_its_socket(flavor):
    def body(lp):
        async def main():
            t, p = await lp.create_datagram_endpoint(lambda: Proto(lp), local_addr=("127.0.0.1", 0))
            return t.get_extra_info("socket").fileno()

        fd = lp.run_until_complete(main())
        lp.close()  # the transport was never closed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                gc.collect()
        assert any(issubclass(w.category, ResourceWarning) and "unclosed transport" in str(w.message) for w in caught)
        with pytest.raises(OSError):
            os.fstat(fd)  # the socket is closed

    run_isolated(flavor, body)


def test_echo_under_gc_pressure(flavor):
    # The cyclic collector runs at nearly every allocation: a live transport's
    # references must never be taken for garbage (see StreamCore.__traverse__).
    def body(lp):
        async def main():
            for round_ in range(3):
                st, sp = await lp.create_datagram_endpoint(lambda: Proto(lp, echo=True), local_addr=("127.0.0.1", 0))
                ct, cp = await lp.create_datagram_endpoint(lambda: Proto(lp), remote_addr=st.get_extra_info("sockname"))
                for i in range(50):
                    ct.sendto(b"%d" % i)
                    await wait_for(lambda: len(cp.datagrams) == i + 1)
                assert [d for d, _ in cp.datagrams] == [b"%d" % i for i in range(50)]
                ct.close()
                st.close()
                await cp.done
                await sp.done
                del st, sp, ct, cp
                gc.collect()

        lp.run_until_complete(asyncio.wait_for(main(), 30))

    run_isolated(flavor, body, gc_threshold=1)


def test_hundred_thousand_datagrams_counted(loop):
    # 100,000 sequence-numbered datagrams, a window of 64 in flight, echoed:
    # each is answered exactly once and intact, unless the kernel dropped it
    # (counted when the window stalls for 0.5 s).
    total, window = 100_000, 64

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.next = 0
            self.in_flight = set()
            self.seen = set()
            self.bad = 0
            self.progress = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            self.refill()

        def refill(self):
            while len(self.in_flight) < window and self.next < total:
                n = self.next
                self.transport.sendto(n.to_bytes(4, "big") + (~n & 0xFFFFFFFF).to_bytes(4, "big") + b"p" * 24)
                self.in_flight.add(n)
                self.next += 1

        def datagram_received(self, data, addr):
            n = int.from_bytes(data[:4], "big")
            if len(data) != 32 or int.from_bytes(data[4:8], "big") != (~n & 0xFFFFFFFF) or n in self.seen:
                self.bad += 1
            self.seen.add(n)
            self.in_flight.discard(n)
            self.refill()
            if not self.progress.done():
                self.progress.set_result(None)

        def error_received(self, exc):
            raise AssertionError(f"unexpected error_received: {exc!r}")

    class Echo(asyncio.DatagramProtocol):
        def __init__(self):
            self.count = 0
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.count += 1
            self.transport.sendto(data, addr)

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        st, sp = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        ct, c = await loop.create_datagram_endpoint(Client, remote_addr=st.get_extra_info("sockname"))
        lost = 0
        while c.next < total or c.in_flight:
            c.progress = loop.create_future()
            try:
                await asyncio.wait_for(c.progress, 0.5)
            except asyncio.TimeoutError:
                lost += len(c.in_flight)  # stalled: the kernel dropped these
                c.in_flight.clear()
                c.refill()
        assert c.bad == 0
        assert len(c.seen) + lost == total
        assert lost < total // 100, f"loopback lost {lost} of {total}"
        assert sp.count >= len(c.seen)
        ct.close()
        st.close()
        await sp.done

    run(loop, main(), timeout=120)


@asyncio_differs("stock asyncio calls sock.sendto(data, None) on a connected socket whose peer is unnamed, "
                 "a fatal TypeError; ferroloop sends to the peer, as uvloop does", since=(3, 0))
def test_sendto_without_address_on_a_connected_unix_socketpair_reaches_the_peer(loop):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    lost = []

    class P(asyncio.DatagramProtocol):
        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        tr, _ = await loop.create_datagram_endpoint(P, sock=a)
        tr.sendto(b"to the peer")
        await asyncio.sleep(0.05)
        b.setblocking(False)
        assert b.recv(100) == b"to the peer"
        assert lost == []
        tr.close()
        await asyncio.sleep(0.01)

    try:
        run(loop, main())
    finally:
        b.close()
