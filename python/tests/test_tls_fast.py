"""The TLS fast path: ``ssl=ferroloop.TLSContext`` (rustls in the engine).

Differential as the rest of the suite: on the ``asyncio`` flavor the oracle is
stock asyncio with the equivalent ``ssl.SSLContext`` (built by
``server_context``/``client_context`` below from the same certificate files and
options); on the ``ferroloop`` flavor the same test passes a
``ferroloop.TLSContext``. The assertions are the same on both; where the fast
path legitimately differs from OpenSSL (cipher names, the exact error message,
an alert record rather than a silent close) the test asserts the shared shape.

Each test runs in a forked child (``run_isolated``), as ``test_tls.py``: a
crash in the engine's TLS code must not end the pytest run, and the child runs
the cyclic GC often so that lifetime bugs show deterministically.

Certificates: a session fixture makes, with the openssl CLI, a CA, a server
certificate for localhost/127.0.0.1 signed by it, a client certificate signed
by it, and the same server key signed by a second ("untrusted") CA. rustls
refuses a self-signed CA certificate as an end-entity certificate, hence the
chain.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import weakref

import pytest

import ferroloop
from conftest import FLAVORS, run, run_isolated

MIB = 1 << 20


# ----- certificates and contexts --------------------------------------------


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (`make deps` installs it)")
    d = tmp_path_factory.mktemp("tls_fast_certs")
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    for name, cn in (("ca", "ferroloop test CA"), ("other_ca", "untrusted test CA")):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={cn}", *ca_ext,
            cwd=d,
        )
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "extendedKeyUsage=clientAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    for name, cn in (("server", "localhost"), ("client", "client")):
        _openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={cn}",
            cwd=d,
        )
    for out, csr, ca, ext in (
        ("server.pem", "server.csr", "ca", "server.ext"),
        ("client.pem", "client.csr", "ca", "client.ext"),
        ("server_untrusted.pem", "server.csr", "other_ca", "server.ext"),
    ):
        _openssl(
            "x509", "-req", "-in", csr, "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "3", "-out", out, "-extfile", ext,
            cwd=d,
        )
    files = {
        "ca": "ca.pem", "other_ca": "other_ca.pem", "server": "server.pem", "server_key": "server.key",
        "server_untrusted": "server_untrusted.pem", "client": "client.pem", "client_key": "client.key",
    }
    return {name: str(d / f) for name, f in files.items()}


_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _set_versions(ctx, versions):
    if versions:
        vs = sorted(_TLS_VERSIONS[v] for v in versions)
        ctx.minimum_version, ctx.maximum_version = vs[0], vs[-1]


def server_context(flavor, certs, *, cert="server", alpn=None, client_auth="none", versions=None):
    """A server context of the flavor: ``ssl.SSLContext`` (asyncio) or
    ``ferroloop.TLSContext.server`` (ferroloop), with the same options."""
    certfile, keyfile = certs[cert], certs["server_key"]
    cafile = certs["ca"] if client_auth != "none" else None
    if flavor.is_ferroloop:
        return ferroloop.TLSContext.server(
            certfile, keyfile, alpn_protocols=alpn, cafile=cafile, client_auth=client_auth, versions=versions
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_auth != "none":
        ctx.load_verify_locations(cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
    _set_versions(ctx, versions)
    return ctx


def client_context(flavor, certs, *, ca="ca", client_cert=False, alpn=None, verify=True, versions=None):
    """A client context of the flavor, trusting ``certs[ca]``."""
    certfile = certs["client"] if client_cert else None
    keyfile = certs["client_key"] if client_cert else None
    if flavor.is_ferroloop:
        return ferroloop.TLSContext.client(
            cafile=certs[ca], certfile=certfile, keyfile=keyfile, alpn_protocols=alpn, verify=verify, versions=versions
        )
    ctx = ssl.create_default_context(cafile=certs[ca])
    if client_cert:
        ctx.load_cert_chain(certfile, keyfile)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _set_versions(ctx, versions)
    return ctx


def isolated(flavor, main, timeout=15):
    """Run ``main(loop)`` (a coroutine function) in a forked child on a fresh
    loop of ``flavor``, the cyclic GC running often. Whatever reaches the
    loop's exception handler (an error in a callback) fails the test."""

    def body(lp):
        errors = []
        lp.set_exception_handler(lambda loop, context: errors.append(context))
        run(lp, main(lp), timeout=timeout)
        assert not errors, errors

    run_isolated(flavor, body, timeout=timeout + 15, gc_threshold=50)


def port_of(server):
    return server.sockets[0].getsockname()[1]


async def close_all(*closables):
    """``close()`` then ``await wait_closed()`` on each (servers, stream writers)."""
    for c in closables:
        c.close()
        await c.wait_closed()


def tls_connect(flavor, certs, port, **client_options):
    """``asyncio.open_connection`` to 127.0.0.1:``port`` over TLS with the
    flavor's client context (``client_context`` options), checking 'localhost'."""
    return asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(flavor, certs, **client_options), server_hostname="localhost"
    )


def assert_cipher_shape(cipher, version):
    """``SSLObject.cipher()``: (suite name, protocol version, secret bits)."""
    assert isinstance(cipher, tuple) and len(cipher) == 3, cipher
    name, proto, bits = cipher
    assert isinstance(name, str) and name, cipher
    assert proto == version, cipher
    assert isinstance(bits, int) and bits >= 128, cipher


class Recorder(asyncio.Protocol):
    """Collects what it receives; futures for the life events."""

    def __init__(self, loop, echo=False):
        self.loop = loop
        self.echo = echo
        self.transport = None
        self.data = bytearray()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.waiting = None  # (size, future): done once len(data) >= size

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data):
        self.data += data
        if self.echo:
            self.transport.write(data)
        if self.waiting and len(self.data) >= self.waiting[0] and not self.waiting[1].done():
            self.waiting[1].set_result(None)

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    async def until(self, size):
        if len(self.data) < size:
            self.waiting = (size, self.loop.create_future())
            await self.waiting[1]
        return bytes(self.data)


# ----- echo ------------------------------------------------------------------


def test_streams_echo_1mib_and_server_close_is_eof(flavor, certs):
    payload = os.urandom(MIB)

    async def main(loop):
        sctx, cctx = server_context(flavor, certs), client_context(flavor, certs)
        server_done = loop.create_future()

        async def handler(reader, writer):
            try:
                data = await reader.readexactly(len(payload))
                assert data == payload
                # Back in 256 writes of 4 KiB, draining every 16.
                for i in range(0, len(data), 4096):
                    writer.write(data[i : i + 4096][::-1])
                    if i % (16 * 4096) == 0:
                        await writer.drain()
                await writer.drain()
                await close_all(writer)
                server_done.set_result(None)
            except BaseException as e:
                server_done.set_exception(e)
                raise

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=sctx)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server), ssl=cctx, server_hostname="localhost")
        # 1024 writes of 1 KiB, then one drain.
        for i in range(0, len(payload), 1024):
            writer.write(payload[i : i + 1024])
        await writer.drain()
        got = await reader.readexactly(len(payload))
        expect = b"".join(payload[i : i + 4096][::-1] for i in range(0, len(payload), 4096))
        assert got == expect
        # The server closed: EOF, no error (it sent close_notify).
        assert await reader.read() == b""
        assert reader.at_eof()
        await server_done
        await close_all(writer, server)

    isolated(flavor, main)


def test_protocol_echo_1mib_and_close_is_clean_eof(flavor, certs):
    payload = os.urandom(MIB)

    async def main(loop):
        sctx, cctx = server_context(flavor, certs), client_context(flavor, certs)
        servers = []

        def factory():
            p = Recorder(loop, echo=True)
            servers.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=sctx)
        tr, cp = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port_of(server), ssl=cctx, server_hostname="localhost"
        )
        assert cp.made.done() and cp.transport is tr
        # Many writes, of every accepted type.
        pieces = [payload[i : i + 3000] for i in range(0, len(payload), 3000)]
        for n, piece in enumerate(pieces):
            if n % 3 == 0:
                tr.write(piece)
            elif n % 3 == 1:
                tr.write(bytearray(piece))
            else:
                tr.writelines([memoryview(piece)[:100], piece[100:]])
        got = await cp.until(len(payload))
        assert got == payload
        assert len(servers) == 1
        sp = servers[0]
        assert bytes(sp.data) == payload
        # close() sends close_notify: the server's protocol hears a clean end
        # (eof_received, then connection_lost(None)), not an error.
        tr.close()
        assert await cp.lost is None
        assert await sp.lost is None
        assert sp.eof.done()
        await close_all(server)

    isolated(flavor, main)


def _blocking_client(port, cctx, send, *, server_hostname="localhost"):
    """A blocking stdlib TLS client: send ``send``, then read to the end.
    ``suppress_ragged_eofs=False``: a TCP close without close_notify raises
    ``ssl.SSLEOFError`` rather than reading as b''."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with cctx.wrap_socket(raw, server_hostname=server_hostname, suppress_ragged_eofs=False) as s:
            if send:
                s.sendall(send)
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
            return s.version(), b"".join(chunks)


def _oracle_client_context(certs, version=None):
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if version:
        ctx.minimum_version = ctx.maximum_version = _TLS_VERSIONS[version]
    return ctx


def test_server_transport_close_sends_close_notify(flavor, certs):
    async def main(loop):
        sctx = server_context(flavor, certs)

        class Bye(asyncio.Protocol):
            def connection_made(self, transport):
                # More than the socket buffers hold: close() flushes it all first.
                transport.write(b"bye" * MIB)
                transport.close()

        server = await loop.create_server(Bye, "127.0.0.1", 0, ssl=sctx)
        # SSLEOFError in the thread if the close was a bare TCP close.
        version, got = await loop.run_in_executor(
            None, _blocking_client, port_of(server), _oracle_client_context(certs), None
        )
        assert got == b"bye" * MIB
        await close_all(server)

    isolated(flavor, main)


def test_client_transport_close_sends_close_notify(flavor, certs):
    async def main(loop):
        sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sctx.load_cert_chain(certs["server"], certs["server_key"])
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.settimeout(10)

        def serve():
            conn, _ = lsock.accept()
            with sctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as s:
                chunks = []
                while True:
                    data = s.recv(65536)  # SSLEOFError without close_notify
                    if not data:
                        break
                    chunks.append(data)
                return b"".join(chunks)

        try:
            fut = loop.run_in_executor(None, serve)
            tr, cp = await loop.create_connection(
                lambda: Recorder(loop), "127.0.0.1", lsock.getsockname()[1],
                ssl=client_context(flavor, certs), server_hostname="localhost",
            )
            tr.write(b"hello " * 1000)
            tr.close()
            assert tr.is_closing()
            assert await fut == b"hello " * 1000
            assert await cp.lost is None
        finally:
            lsock.close()

    isolated(flavor, main)


class _SilentTLSServer:
    """A blocking stdlib TLS server in a thread: accepts one connection,
    completes the handshake, then neither reads nor closes until ``release``."""

    def __init__(self, certs):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(certs["server"], certs["server_key"])
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(10)
        self.port = self.lsock.getsockname()[1]
        self.released = threading.Event()

    def serve(self):
        conn, _ = self.lsock.accept()
        with self.ctx.wrap_socket(conn, server_side=True):
            self.released.wait(10)

    def release(self):
        self.released.set()
        self.lsock.close()


async def _close_against_silent_peer(loop, flavor, certs):
    """close() with ssl_shutdown_timeout=0.3 to a peer that never answers
    close_notify: (seconds until connection_lost, its argument)."""
    peer = _SilentTLSServer(certs)
    try:
        fut = loop.run_in_executor(None, peer.serve)
        tr, cp = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", peer.port, ssl=client_context(flavor, certs),
            server_hostname="localhost", ssl_shutdown_timeout=0.3,
        )
        t0 = loop.time()
        tr.close()
        exc = await asyncio.wait_for(cp.lost, 5)
        return loop.time() - t0, exc
    finally:
        peer.release()
        await fut


def test_shutdown_timeout_bounds_close(flavor, certs):
    async def main(loop):
        elapsed, _ = await _close_against_silent_peer(loop, flavor, certs)
        assert 0.25 <= elapsed < 3

    isolated(flavor, main)


def test_shutdown_timeout_reported_to_connection_lost(flavor, certs):
    async def main(loop):
        _, exc = await _close_against_silent_peer(loop, flavor, certs)
        assert isinstance(exc, TimeoutError), repr(exc)

    isolated(flavor, main)


# ----- extra info ------------------------------------------------------------


def test_extra_info(flavor, certs):
    with open(certs["server"]) as f:
        server_der = ssl.PEM_cert_to_DER_cert(f.read())

    async def main(loop):
        sctx = server_context(flavor, certs, alpn=["h2", "http/1.1"])
        cctx = client_context(flavor, certs, alpn=["spdy/1", "http/1.1"])
        seen = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                if not seen.done():
                    seen.set_result(self.transport)
                self.transport.write(data)

        server = await loop.create_server(Server, "127.0.0.1", 0, ssl=sctx)
        port = port_of(server)
        tr, cp = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
        )
        tr.write(b"ping")
        await cp.until(4)
        str_ = await seen

        assert tr.get_extra_info("sslcontext") is cctx
        assert str_.get_extra_info("sslcontext") is sctx
        assert tr.get_extra_info("nonexistent", "dflt") == "dflt"

        obj = tr.get_extra_info("ssl_object")
        sobj = str_.get_extra_info("ssl_object")
        assert obj is not None and sobj is not None
        version = obj.version()
        assert version in ("TLSv1.2", "TLSv1.3")
        assert sobj.version() == version
        assert_cipher_shape(obj.cipher(), version)
        assert obj.cipher() == sobj.cipher()
        assert tr.get_extra_info("cipher") == obj.cipher()
        assert str_.get_extra_info("cipher") == sobj.cipher()
        assert tr.get_extra_info("compression") is None
        assert str_.get_extra_info("compression") is None
        assert obj.selected_alpn_protocol() == "http/1.1"
        assert sobj.selected_alpn_protocol() == "http/1.1"
        assert obj.server_side is False and sobj.server_side is True
        assert obj.server_hostname == "localhost"
        assert obj.context is cctx

        # The server's certificate, decoded as ssl does, on the client side.
        peercert = tr.get_extra_info("peercert")
        assert (("commonName", "localhost"),) in peercert["subject"]
        assert (("commonName", "ferroloop test CA"),) in peercert["issuer"]
        assert ("DNS", "localhost") in peercert["subjectAltName"]
        assert obj.getpeercert() == peercert
        assert obj.getpeercert(True) == server_der
        # No client certificate was asked for.
        assert str_.get_extra_info("peercert") is None
        assert sobj.getpeercert() is None

        # The socket's part, as on a plain transport.
        sockname = tr.get_extra_info("sockname")
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        assert sockname[0] == "127.0.0.1"
        assert str_.get_extra_info("peername") == sockname
        assert str_.get_extra_info("sockname") == ("127.0.0.1", port)
        sock = tr.get_extra_info("socket")
        assert sock.getpeername() == ("127.0.0.1", port)
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM

        tr.close()
        await cp.lost
        await close_all(server)

    isolated(flavor, main)


def test_extra_info_available_in_connection_made(flavor, certs):
    async def main(loop):
        sctx = server_context(flavor, certs, client_auth="required")
        cctx = client_context(flavor, certs, client_cert=True)
        info = {}

        def grab(side, transport):
            obj = transport.get_extra_info("ssl_object")
            info[side] = (
                obj is not None and obj.version(),
                transport.get_extra_info("cipher"),
                transport.get_extra_info("peercert"),
            )

        class Server(Recorder):
            def connection_made(self, transport):
                grab("server", transport)
                super().connection_made(transport)

        class Client(Recorder):
            def connection_made(self, transport):
                grab("client", transport)
                super().connection_made(transport)

        servers = []
        server = await loop.create_server(
            lambda: servers.append(Server(loop, echo=True)) or servers[-1], "127.0.0.1", 0, ssl=sctx
        )
        tr, cp = await loop.create_connection(
            lambda: Client(loop), "127.0.0.1", port_of(server), ssl=cctx, server_hostname="localhost"
        )
        tr.write(b"x")
        await cp.until(1)
        for side, peer_cn in (("client", "localhost"), ("server", "client")):
            version, cipher, peercert = info[side]
            assert version in ("TLSv1.2", "TLSv1.3"), (side, info[side])
            assert_cipher_shape(cipher, version)
            assert (("commonName", peer_cn),) in peercert["subject"], (side, peercert)
        tr.close()
        await servers[0].lost
        await close_all(server)

    isolated(flavor, main)


def test_server_hostname_defaults_to_host(flavor, certs):
    """No server_hostname: the host connected to (here an IP, in the
    certificate's subjectAltName) is what is verified."""

    async def main(loop):
        server = await loop.create_server(
            lambda: Recorder(loop, echo=True), "127.0.0.1", 0, ssl=server_context(flavor, certs)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server), ssl=client_context(flavor, certs))
        writer.write(b"ip\n")
        assert await reader.readline() == b"ip\n"
        assert writer.get_extra_info("ssl_object").server_hostname == "127.0.0.1"
        await close_all(writer, server)

    isolated(flavor, main)


# ----- handshake failures ------------------------------------------------------


async def _check_good_client(loop, flavor, certs, port, ca="ca"):
    """A client that trusts ``ca`` gets an echo from the server at ``port``."""
    reader, writer = await tls_connect(flavor, certs, port, ca=ca)
    writer.write(b"still serving\n")
    assert await reader.readexactly(14) == b"still serving\n"
    await close_all(writer)


def _counting_echo_factory(loop, made):
    def factory():
        p = Recorder(loop, echo=True)
        p.made.add_done_callback(lambda f: made.append(p))
        return p

    return factory


def test_untrusted_server_certificate(flavor, certs):
    async def main(loop):
        made = []
        # The server's certificate is signed by the CA the client does not trust.
        server = await loop.create_server(
            _counting_echo_factory(loop, made), "127.0.0.1", 0,
            ssl=server_context(flavor, certs, cert="server_untrusted"),
        )
        port = port_of(server)
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=client_context(flavor, certs), server_hostname="localhost"
            )
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_context(flavor, certs))
        # The server goes on serving: a client that trusts its CA.
        await _check_good_client(loop, flavor, certs, port, ca="other_ca")
        await asyncio.sleep(0)
        # Only that client's connection reached a protocol.
        assert len(made) == 1
        await close_all(server)

    isolated(flavor, main)


def test_hostname_mismatch(flavor, certs):
    async def main(loop):
        server = await loop.create_server(
            lambda: Recorder(loop, echo=True), "127.0.0.1", 0, ssl=server_context(flavor, certs)
        )
        port = port_of(server)
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=client_context(flavor, certs), server_hostname="wrong.example"
            )
        # verify=False (CERT_NONE) accepts the name, and the server still serves.
        tr, cp = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port,
            ssl=client_context(flavor, certs, verify=False), server_hostname="wrong.example",
        )
        tr.write(b"unverified")
        assert await cp.until(10) == b"unverified"
        # An unverified peer certificate reads as {} (as ssl), the DER form is there.
        assert tr.get_extra_info("peercert") == {}
        assert isinstance(tr.get_extra_info("ssl_object").getpeercert(True), bytes)
        tr.close()
        await cp.lost
        await _check_good_client(loop, flavor, certs, port)
        await close_all(server)

    isolated(flavor, main)


def test_plain_client_to_tls_server(flavor, certs):
    async def main(loop):
        made = []
        server = await loop.create_server(
            _counting_echo_factory(loop, made), "127.0.0.1", 0, ssl=server_context(flavor, certs)
        )
        port = port_of(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        # The server ends the connection: silently (OpenSSL) or after a TLS
        # alert record (content type 21); never an echo, never a hang.
        got = await reader.read()
        assert got == b"" or got[:1] == b"\x15", got
        await close_all(writer)
        await _check_good_client(loop, flavor, certs, port)
        assert len(made) == 1
        await close_all(server)

    isolated(flavor, main)


def test_tls_client_to_plain_server(flavor, certs):
    async def main(loop):
        hellos = []

        async def handler(reader, writer):
            hellos.append(await reader.read(5))
            writer.write(b"220 plain text, not TLS\r\n" * 10)
            await writer.drain()
            writer.close()

        async def closer(reader, writer):
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        closing = await asyncio.start_server(closer, "127.0.0.1", 0)
        port = port_of(server)
        with pytest.raises(ssl.SSLError):
            await tls_connect(flavor, certs, port)
        # What the server got was a TLS handshake record.
        assert hellos[0][:1] == b"\x16"
        # A peer that closes during the handshake: ConnectionResetError.
        with pytest.raises(ConnectionResetError):
            await tls_connect(flavor, certs, port_of(closing))
        # The plain server survives.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"plain")
        assert (await reader.readline()) == b"220 plain text, not TLS\r\n"
        await close_all(writer)
        for s in (server, closing):
            await close_all(s)

    isolated(flavor, main)


def test_client_handshake_timeout(flavor, certs):
    async def main(loop):
        # A listener that never answers (the kernel accepts for it).
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        try:
            t0 = loop.time()
            with pytest.raises(ConnectionAbortedError):
                await asyncio.wait_for(
                    loop.create_connection(
                        asyncio.Protocol, "127.0.0.1", lsock.getsockname()[1],
                        ssl=client_context(flavor, certs), server_hostname="localhost",
                        ssl_handshake_timeout=0.3,
                    ),
                    5,
                )
            assert 0.25 <= loop.time() - t0 < 3
            # The connection was closed: after the ClientHello, EOF.
            conn, _ = await loop.sock_accept(lsock)
            with conn:
                conn.setblocking(False)
                received = b""
                while True:
                    data = await asyncio.wait_for(loop.sock_recv(conn, 65536), 5)
                    if not data:
                        break
                    received += data
                assert received[:1] == b"\x16"
        finally:
            lsock.close()

    isolated(flavor, main)


def test_server_handshake_timeout(flavor, certs):
    async def main(loop):
        made = []
        server = await loop.create_server(
            _counting_echo_factory(loop, made), "127.0.0.1", 0,
            ssl=server_context(flavor, certs), ssl_handshake_timeout=0.3,
        )
        port = port_of(server)
        # A client that connects and says nothing: the server drops it.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = loop.time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.25 <= loop.time() - t0 < 3
        await close_all(writer)
        await _check_good_client(loop, flavor, certs, port)
        assert len(made) == 1
        await close_all(server)

    isolated(flavor, main)


# ----- client certificates ---------------------------------------------------


def test_client_certificate_required(flavor, certs):
    async def main(loop):
        made = []
        server = await loop.create_server(
            _counting_echo_factory(loop, made), "127.0.0.1", 0,
            ssl=server_context(flavor, certs, client_auth="required"),
        )
        port = port_of(server)
        # Without a certificate: refused. In TLS 1.3 the client's handshake
        # ends before the server checks, so the refusal may come at the first
        # read (an error or EOF); it never reaches the server's protocol.
        try:
            reader, writer = await tls_connect(flavor, certs, port)
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            writer.write(b"no cert\n")
            try:
                got = await reader.read()
            except (ssl.SSLError, ConnectionError):
                pass
            else:
                assert got == b""
            writer.close()
        # With TLS 1.2 the refusal is within the handshake.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls_connect(flavor, certs, port, versions=["TLSv1.2"])
        # With one: served, and the server sees it.
        reader, writer = await tls_connect(flavor, certs, port, client_cert=True)
        writer.write(b"with cert\n")
        assert await reader.readline() == b"with cert\n"
        assert len(made) == 1
        peercert = made[0].transport.get_extra_info("peercert")
        assert (("commonName", "client"),) in peercert["subject"]
        assert (("commonName", "ferroloop test CA"),) in peercert["issuer"]
        assert made[0].transport.get_extra_info("ssl_object").getpeercert() == peercert
        await close_all(writer, server)

    isolated(flavor, main)


def test_client_certificate_optional(flavor, certs):
    async def main(loop):
        made = []
        server = await loop.create_server(
            _counting_echo_factory(loop, made), "127.0.0.1", 0,
            ssl=server_context(flavor, certs, client_auth="optional"),
        )
        port = port_of(server)
        for client_cert in (False, True):
            reader, writer = await tls_connect(flavor, certs, port, client_cert=client_cert)
            writer.write(b"hi\n")
            assert await reader.readline() == b"hi\n"
            await close_all(writer)
        assert len(made) == 2
        assert made[0].transport.get_extra_info("peercert") is None
        assert (("commonName", "client"),) in made[1].transport.get_extra_info("peercert")["subject"]
        await close_all(server)

    isolated(flavor, main)


# ----- versions, context side --------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server", "both"])
def test_versions_tls12(flavor, certs, side):
    async def main(loop):
        v12 = ["TLSv1.2"]
        sctx = server_context(flavor, certs, versions=v12 if side in ("server", "both") else None)
        cctx = client_context(flavor, certs, versions=v12 if side in ("client", "both") else None)
        servers = []
        server = await loop.create_server(
            lambda: servers.append(Recorder(loop, echo=True)) or servers[-1], "127.0.0.1", 0, ssl=sctx
        )
        tr, cp = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port_of(server), ssl=cctx, server_hostname="localhost"
        )
        tr.write(b"v12")
        await cp.until(3)
        for t in (tr, servers[0].transport):
            obj = t.get_extra_info("ssl_object")
            assert obj.version() == "TLSv1.2"
            assert_cipher_shape(obj.cipher(), "TLSv1.2")
        tr.close()
        await servers[0].lost
        await close_all(server)

    isolated(flavor, main)


def test_versions_disjoint(flavor, certs):
    async def main(loop):
        made = []
        server = await loop.create_server(
            _counting_echo_factory(loop, made), "127.0.0.1", 0,
            ssl=server_context(flavor, certs, versions=["TLSv1.3"]),
        )
        port = port_of(server)
        # OpenSSL's server closes (ConnectionResetError), rustls's sends a
        # protocol_version alert (SSLError): a connection error either way.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port,
                ssl=client_context(flavor, certs, versions=["TLSv1.2"]), server_hostname="localhost",
            )
        await _check_good_client(loop, flavor, certs, port)
        assert len(made) == 1
        await close_all(server)

    isolated(flavor, main)


def test_ferroloop_only_context_side_mismatch(certs):
    """ferroloop only (no asyncio equivalent: an ssl.SSLContext has no fixed
    side): a client TLSContext where a server one is needed, and the reverse,
    is a ValueError before anything is connected."""
    flavor = FLAVORS["ferroloop"]

    async def main(loop):
        sctx, cctx = server_context(flavor, certs), client_context(flavor, certs)
        assert sctx.server_side is True and cctx.server_side is False
        with pytest.raises(ValueError):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=cctx)
        with pytest.raises(ValueError):
            await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=cctx)
        server = await loop.create_server(lambda: Recorder(loop, echo=True), "127.0.0.1", 0, ssl=sctx)
        port = port_of(server)
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=sctx, server_hostname="localhost")
        # start_tls with the wrong side, on a plain connection.
        tr, cp = await loop.create_connection(lambda: Recorder(loop), "127.0.0.1", port)
        with pytest.raises(ValueError):
            await loop.start_tls(tr, cp, sctx, server_hostname="localhost")
        with pytest.raises(ValueError):
            await loop.start_tls(tr, cp, cctx, server_side=True)
        tr.close()
        await close_all(server)

    isolated(flavor, main)


# ----- start_tls ---------------------------------------------------------------


def test_start_tls_upgrade_both_sides(flavor, certs):
    payload = os.urandom(256 * 1024)

    async def main(loop):
        sctx, cctx = server_context(flavor, certs), client_context(flavor, certs)
        server_result = loop.create_future()

        async def handler(reader, writer):
            try:
                assert await reader.readline() == b"STARTTLS\n"
                writer.write(b"OK\n")
                await writer.drain()
                plain = writer.transport
                await writer.start_tls(sctx)
                assert writer.transport is not plain
                del plain
                gc.collect()
                data = await reader.readexactly(len(payload))
                writer.write(data[::-1])
                await writer.drain()
                server_result.set_result(writer.get_extra_info("ssl_object").version())
                assert await reader.read() == b""
                writer.close()
            except BaseException as e:
                if not server_result.done():
                    server_result.set_exception(e)
                raise

        class Client(Recorder):
            def data_received(self, data):
                super().data_received(data)
                if bytes(self.data) == b"OK\n" and not self.ok.done():
                    self.data.clear()
                    self.ok.set_result(None)

        cp = Client(loop)
        cp.ok = loop.create_future()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        plain, _ = await loop.create_connection(lambda: cp, "127.0.0.1", port_of(server))
        plain.write(b"STARTTLS\n")
        await cp.ok
        tls = await loop.start_tls(plain, cp, cctx, server_hostname="localhost")
        assert tls is not plain
        assert tls.get_protocol() is cp
        assert tls.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert tls.get_extra_info("sslcontext") is cctx
        assert (("commonName", "localhost"),) in tls.get_extra_info("peercert")["subject"]
        # start_tls does not call connection_made again.
        assert cp.transport is plain
        cp.transport = tls
        # The plain transport, dropped and collected, does not close the connection.
        old = weakref.ref(plain)
        del plain
        gc.collect()
        if flavor.is_ferroloop:
            # (asyncio's SSLProtocol keeps the plain transport: nothing to collect.)
            assert old() is None, "the plain transport was not collected: the test is void"
        for i in range(0, len(payload), 8192):
            tls.write(payload[i : i + 8192])
        assert await cp.until(len(payload)) == payload[::-1]
        assert await server_result == tls.get_extra_info("ssl_object").version()
        gc.collect()
        tls.close()
        assert await cp.lost is None
        await close_all(server)

    isolated(flavor, main)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Server.close_clients()/abort_clients() are new in 3.13")
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_server_close_clients_reaches_a_connection_upgraded_by_start_tls(flavor, certs, method):
    """3.13's Server.close_clients()/abort_clients() end every connection the
    server accepted, one upgraded by start_tls (its transport replaced)
    included; then wait_closed() returns."""

    async def main(loop):
        sctx, cctx = server_context(flavor, certs), client_context(flavor, certs)
        upgraded, handler_done = loop.create_future(), loop.create_future()

        async def handler(reader, writer):
            try:
                assert await reader.readline() == b"STARTTLS\n"
                writer.write(b"OK\n")
                await writer.drain()
                await writer.start_tls(sctx)
                upgraded.set_result(None)
                await reader.read()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                handler_done.set_result(None)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(cctx, server_hostname="localhost")
        await upgraded
        server.close()
        getattr(server, method)()
        await asyncio.wait_for(server.wait_closed(), 5)
        await asyncio.wait_for(handler_done, 5)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except (ConnectionError, ssl.SSLError):
            pass
        writer.close()

    isolated(flavor, main)


def test_start_tls_on_a_transport_whose_reading_is_paused(flavor, certs):
    # asyncio's start_tls reads the handshake even if the plain protocol had
    # paused reading (it resumes reading on the transport).
    async def main(loop):
        server_side = loop.create_future()

        class Plain(asyncio.Protocol):
            def connection_made(self, transport):
                transport.pause_reading()
                server_side.set_result(transport)

        server = await loop.create_server(Plain, "127.0.0.1", 0)
        client_task = loop.create_task(
            tls_connect(flavor, certs, port_of(server))
        )
        plain = await server_side
        proto = Recorder(loop, echo=True)
        tls = await asyncio.wait_for(loop.start_tls(plain, proto, server_context(flavor, certs), server_side=True), 5)
        proto.transport = tls  # start_tls does not call connection_made
        reader, writer = await client_task
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        await close_all(writer)
        tls.close()
        await close_all(server)

    isolated(flavor, main)


def test_start_tls_handshake_failure(flavor, certs):
    """start_tls against a certificate the client does not trust: the
    verification error from start_tls, and the connection is closed."""

    async def main(loop):
        server_saw = loop.create_future()

        async def handler(reader, writer):
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"OK\n")
            await writer.drain()
            try:
                await writer.start_tls(server_context(flavor, certs))
            except (ssl.SSLError, ConnectionError) as e:
                server_saw.set_result(e)
            else:
                server_saw.set_result(None)
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            await writer.start_tls(client_context(flavor, certs, ca="other_ca"), server_hostname="localhost")
        # (StreamWriter.start_tls failed before replacing its transport.)
        assert writer.transport.is_closing()
        # The server's start_tls failed too (the client refused its certificate).
        assert isinstance(await server_saw, (ssl.SSLError, ConnectionError))
        writer.close()
        await close_all(server)

    isolated(flavor, main)


# ----- transport API -------------------------------------------------------------


def test_write_eof_not_supported(flavor, certs):
    async def main(loop):
        server = await loop.create_server(
            lambda: Recorder(loop, echo=True), "127.0.0.1", 0, ssl=server_context(flavor, certs)
        )
        tr, cp = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port_of(server), ssl=client_context(flavor, certs),
            server_hostname="localhost",
        )
        assert isinstance(tr, asyncio.Transport)
        assert tr.can_write_eof() is False
        with pytest.raises(NotImplementedError):
            tr.write_eof()
        # Still usable afterwards.
        tr.write(b"after")
        assert await cp.until(5) == b"after"
        # Reading can be paused and resumed.
        assert tr.is_reading() is True
        tr.pause_reading()
        assert tr.is_reading() is False
        tr.resume_reading()
        assert tr.is_reading() is True
        tr.set_write_buffer_limits(high=1000, low=100)
        assert tr.get_write_buffer_limits() == (100, 1000)
        tr.close()
        await cp.lost
        await close_all(server)

    isolated(flavor, main)


def test_flow_control_pause_and_resume_writing(flavor, certs):
    async def main(loop):
        servers = []

        class Sink(Recorder):
            def connection_made(self, transport):
                super().connection_made(transport)
                transport.pause_reading()
                self.sha = hashlib.sha256()
                self.count = 0

            def data_received(self, data):
                self.sha.update(data)
                self.count += len(data)
                if self.waiting and self.count >= self.waiting[0] and not self.waiting[1].done():
                    self.waiting[1].set_result(None)

        class Writer(Recorder):
            def __init__(self, loop):
                super().__init__(loop)
                self.events = []
                self.paused = loop.create_future()
                self.resumed = loop.create_future()

            def pause_writing(self):
                self.events.append("pause")
                if not self.paused.done():
                    self.paused.set_result(None)

            def resume_writing(self):
                self.events.append("resume")
                if not self.resumed.done():
                    self.resumed.set_result(None)

        server = await loop.create_server(
            lambda: servers.append(Sink(loop)) or servers[-1], "127.0.0.1", 0, ssl=server_context(flavor, certs)
        )
        tr, cp = await loop.create_connection(
            lambda: Writer(loop), "127.0.0.1", port_of(server), ssl=client_context(flavor, certs),
            server_hostname="localhost",
        )
        tr.set_write_buffer_limits(high=64 * 1024)
        sha = hashlib.sha256()
        sent = 0
        block = os.urandom(64 * 1024)
        # The peer does not read: writing fills the buffers until pause_writing.
        while not cp.paused.done():
            assert sent < 256 * MIB, "pause_writing was never called"
            chunk = block[sent % 4096 :] + block[: sent % 4096]
            tr.write(chunk)
            sha.update(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        assert cp.events == ["pause"]
        assert tr.get_write_buffer_size() > 0
        assert not cp.resumed.done()
        # The peer's pause_reading held: nothing was delivered to it.
        assert servers[0].count == 0
        assert servers[0].transport.is_reading() is False
        # The peer reads: the buffer drains, resume_writing.
        sp = servers[0]
        sp.waiting = (sent, loop.create_future())
        sp.transport.resume_reading()
        await cp.resumed
        assert cp.events == ["pause", "resume"]
        await sp.waiting[1]
        assert sp.count == sent
        assert sp.sha.digest() == sha.digest()
        tr.close()
        await cp.lost
        await close_all(server)

    isolated(flavor, main)


# ----- interop -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_interop_blocking_stdlib_client(flavor, certs, version):
    """The loop's TLS server, and a blocking stdlib ssl client in a thread."""
    payload = os.urandom(200 * 1024)

    async def main(loop):
        servers = []

        class EchoThenClose(Recorder):
            def data_received(self, data):
                super().data_received(data)
                self.transport.write(data)
                if len(self.data) >= len(payload):
                    self.transport.close()

        server = await loop.create_server(
            lambda: servers.append(EchoThenClose(loop)) or servers[-1], "127.0.0.1", 0,
            ssl=server_context(flavor, certs),
        )
        got_version, got = await loop.run_in_executor(
            None, _blocking_client, port_of(server), _oracle_client_context(certs, version), payload
        )
        assert got_version == version
        assert got == payload
        sp = servers[0]
        assert await sp.lost is None
        assert sp.transport.get_extra_info("ssl_object").version() == version
        await close_all(server)

    isolated(flavor, main)


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_interop_openssl_s_server(flavor, certs, version):
    """The loop's TLS client against ``openssl s_server -rev`` (it sends each
    line back reversed)."""
    flag = {"TLSv1.2": "-tls1_2", "TLSv1.3": "-tls1_3"}[version]
    proc = subprocess.Popen(
        [
            "openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-rev", flag,
            "-cert", certs["server"], "-key", certs["server_key"], "-alpn", "h2,http/1.1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        lines = []
        for _ in range(20):
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith(b"ACCEPT") or not line:
                break
        assert lines[-1].startswith(b"ACCEPT"), lines
        port = int(lines[-1].rsplit(b":", 1)[1])

        async def main(loop):
            reader, writer = await tls_connect(flavor, certs, port, alpn=["http/1.1"])
            obj = writer.get_extra_info("ssl_object")
            assert obj.version() == version
            assert_cipher_shape(obj.cipher(), version)
            assert obj.selected_alpn_protocol() == "http/1.1"
            for i in range(20):
                line = b"line %d of the interop test " % i + b"x" * i
                writer.write(line + b"\n")
                assert await reader.readline() == line[::-1] + b"\n"
            await close_all(writer)

        isolated(flavor, main)
        # -naccept 1: s_server ends after our connection.
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# ----- Unix sockets, sendfile, configuration errors ---------------------------


def test_unix_socket_tls_echo(flavor, certs, tmp_path):
    path = str(tmp_path / "tls.sock")
    payload = os.urandom(256 * 1024)

    async def main(loop):
        async def handler(reader, writer):
            writer.write(await reader.readexactly(len(payload)))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handler, path, ssl=server_context(flavor, certs))
        reader, writer = await asyncio.open_unix_connection(
            path, ssl=client_context(flavor, certs), server_hostname="localhost"
        )
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        assert await reader.read() == b""
        await close_all(writer, server)

    isolated(flavor, main)


def test_sendfile_over_tls_falls_back_to_writes(flavor, certs, tmp_path):
    blob = os.urandom(300 * 1024)
    f = tmp_path / "blob.bin"
    f.write_bytes(blob)

    async def main(loop):
        got = loop.create_future()

        async def handler(reader, writer):
            got.set_result(await reader.readexactly(len(blob) - 1000))
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context(flavor, certs))
        reader, writer = await tls_connect(flavor, certs, port_of(server))
        with open(f, "rb") as fh:
            sent = await loop.sendfile(writer.transport, fh, offset=1000)
        assert sent == len(blob) - 1000
        assert await got == blob[1000:]
        await close_all(writer, server)

    isolated(flavor, main)


def test_tls_context_configuration_errors(certs, tmp_path):
    # ferroloop only: the TLSContext constructors (ssl.SSLContext's own
    # load_cert_chain raises the same kinds: OSError, ssl.SSLError).
    with pytest.raises(FileNotFoundError):
        ferroloop.TLSContext.server(str(tmp_path / "missing.pem"), certs["server_key"])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        ferroloop.TLSContext.server(str(junk), certs["server_key"])
    with pytest.raises(ssl.SSLError):
        ferroloop.TLSContext.server(certs["server"], str(junk))
    # A key that is not the certificate's.
    with pytest.raises(ssl.SSLError):
        ferroloop.TLSContext.server(certs["server"], certs["client_key"])
    with pytest.raises(ValueError):
        ferroloop.TLSContext.server(certs["server"], certs["server_key"], client_auth="sometimes")
    with pytest.raises(ValueError):
        ferroloop.TLSContext.server(certs["server"], certs["server_key"], client_auth="required")  # no cafile
    with pytest.raises(ssl.SSLError):
        ferroloop.TLSContext.client(cafile=certs["ca"], versions=["TLSv1.1"])
    with pytest.raises(FileNotFoundError):
        ferroloop.TLSContext.client(cafile=str(tmp_path / "nope.pem"))
    ctx = ferroloop.TLSContext.client(cafile=certs["ca"], alpn_protocols=["h2", "http/1.1"])
    assert not ctx.server_side and ctx.verify and ctx.alpn_protocols == ("h2", "http/1.1")



@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_session_resumption_with_one_client_context(flavor, certs, version):
    # ferroloop only: clients of one TLSContext share a session cache, and a
    # second connection resumes (SSLObject.session_reused). Stock asyncio has
    # no way to hand a session to a new connection, so there is no oracle.
    if not flavor.is_ferroloop:
        pytest.skip("asyncio cannot pass an ssl session to create_connection")

    async def main(loop):
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context(flavor, certs, versions=[version])
        )
        cctx = client_context(flavor, certs, versions=[version])
        reused = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port_of(server), ssl=cctx, server_hostname="localhost"
            )
            # Reading to the end also takes in TLS 1.3's session tickets.
            assert await reader.read() == b""
            obj = writer.get_extra_info("ssl_object")
            assert obj.version() == version
            reused.append(obj.session_reused)
            await close_all(writer)
        # A fresh context has no session to resume.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port_of(server), ssl=client_context(flavor, certs, versions=[version]),
            server_hostname="localhost",
        )
        assert await reader.read() == b""
        reused.append(writer.get_extra_info("ssl_object").session_reused)
        await close_all(writer, server)
        assert reused == [False, True, False], reused

    isolated(flavor, main)
