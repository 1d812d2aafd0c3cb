"""Servers: ``create_server``, ``create_unix_server`` and the ``Server`` they
return, made by ferroloop on the engine's accept loop.

asyncio's own ``create_server`` builds ``base_events.Server``, which calls
the loop's private ``_start_serving``/``_stop_serving`` hooks, whose
signatures change between releases (3.15 added ``context=``). Here the
sockets are set up as asyncio sets them up (the public behaviour: which
sockets, which options, which errors), the ``Server`` is ferroloop's, and
each listening socket is served by the engine's accept loop
(``_ferroloop.AcceptorCore``: a backlog's worth of connections per
readiness, asyncio's back-off on EMFILE), which hands each connection's
descriptor to ``Server._accepted``. One accept loop serves both faces.
"""

from __future__ import annotations

import collections.abc
import contextvars
import errno
import functools
import itertools
import os
import socket
import stat
import sys

from asyncio import base_events, exceptions, tasks, trsock
from asyncio.log import logger

from . import _ferroloop
from ._resolve import check_ssl_socket, ensure_resolved
from ._transports import StreamTransport, TLSTransport, socket_kind

# 3.15: a server captures the contextvars context when it is made; each
# connection runs (protocol factory and callbacks) in a copy of it. Before,
# in a copy of the context current when the server started serving.
_SERVER_CONTEXT_AT_CREATION = sys.version_info >= (3, 15)
# 3.11's Server.wait_closed() returned at once once the server was closed,
# connections or not (3.12.1 waits for the connections too).
_WAIT_CLOSED_RETURNS_ONCE_CLOSED = sys.version_info < (3, 12)


def check_tls_side(context, server_side):
    """A ``ferroloop.TLSContext`` made for the other side: ``ValueError``."""
    if context.server_side != bool(server_side):
        side = "a server" if context.server_side else "a client"
        raise ValueError(f"{context!r} is {side} context; server_side={server_side!r} was asked for")


class Server(base_events.Server):
    """asyncio's ``Server`` (an instance of ``asyncio.Server``), on the
    engine's accept loop. Every method is ferroloop's: nothing here reaches
    the loop's private hooks."""

    def __init__(self, loop, sockets, protocol_factory, ssl_context, backlog, ssl_handshake_timeout,
                 ssl_shutdown_timeout=None):
        self._loop = loop
        self._sockets = sockets
        self._acceptors = []
        # The live transports (asyncio 3.13's close_clients/abort_clients);
        # a transport leaves in its _finish(), after connection_lost.
        self._clients = set()
        self._anonymous = 0
        self._waiters = []
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut = None
        self._context = contextvars.copy_context() if _SERVER_CONTEXT_AT_CREATION else None
        # Unix sockets whose path close() unlinks (cleanup_socket): socket -> inode.
        self._unix_paths = {}
        self._kind = None
        # A loop subclass's own _make_socket_transport makes the transports
        # of accepted connections (on a socket object); else the engine's
        # stream transport is made on the bare descriptor.
        make = type(loop)._make_socket_transport
        self._make_transport = None if getattr(make, "_ferroloop_default", False) else loop._make_socket_transport
        # The last connection's local address and peer host: equal ones are
        # shared, so that an idle connection holds little of its own.
        self._sockname = None
        self._peer_host = None

    def __repr__(self):
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    # ----- connections ----------------------------------------------------

    # asyncio 3.13+ passes the transport; 3.11 and 3.12 call these without
    # one (a count of connections), which code and tests of those versions do.
    def _attach(self, transport=None):
        assert self._sockets is not None
        if transport is None:
            self._anonymous += 1
        else:
            self._clients.add(transport)

    def _detach(self, transport=None):
        if transport is None:
            self._anonymous -= 1
        else:
            self._clients.discard(transport)
        if not self._clients and not self._anonymous and self._sockets is None:
            self._wakeup()

    def _wakeup(self):
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _accepted(self, fd, peername, sockname, sock):
        """The engine accepted a connection on ``sock``: ``fd`` is ours."""
        if self._sockets is None:
            os.close(fd)  # closed meanwhile (from an earlier connection's callback)
            return
        context = self._context.copy() if self._context is not None else contextvars.copy_context()
        if sockname == self._sockname:
            sockname = self._sockname
        else:
            self._sockname = sockname
        if peername.__class__ is tuple:
            host = peername[0]
            if host != self._peer_host:
                self._peer_host = host
            elif host is not self._peer_host:
                peername = (self._peer_host, *peername[1:])
        extra = {"peername": peername, "sockname": sockname}
        ssl_context = self._ssl_context
        if ssl_context:
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
            if isinstance(ssl_context, _ferroloop.TLSContext):
                context.run(self._accept_fast_tls, conn, extra, context)
            else:
                self._loop.create_task(self._accept_tls(conn, extra, context), context=context)
            return
        if self._make_transport is not None:
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
            context.run(self._accept_with_hook, conn, extra)
            return
        protocol = transport = None
        try:
            protocol = context.run(self._protocol_factory)
            if self._kind is None:
                self._kind = socket_kind(sock)
            transport = StreamTransport._accepted(self._loop, fd, self._kind, protocol, extra, self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                os.close(fd)
            self._report_accept_error(exc, protocol, transport)

    def _connect(self, make, conn):
        """The protocol of a new connection and ``make(protocol)``, its
        transport on ``conn``; on failure ``conn`` is closed (unless a
        transport took it) and the error reported as asyncio reports it."""
        protocol = None
        try:
            protocol = self._protocol_factory()
            return make(protocol)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            self._report_accept_error(exc, protocol, None)
        return None

    def _accept_with_hook(self, conn, extra):
        self._connect(lambda protocol: self._make_transport(conn, protocol, extra=extra, server=self), conn)

    def _accept_fast_tls(self, conn, extra, context):
        # The engine does the handshake: no task needed.
        transport = self._connect(
            lambda protocol: TLSTransport(self._loop, conn, protocol, self._ssl_context, None, extra, self, None,
                                          self._ssl_handshake_timeout, self._ssl_shutdown_timeout,
                                          run_context=context),
            conn,
        )
        if transport is not None:
            if self._kind is None:
                self._kind = socket_kind(conn)
            transport._keep_fd_only(self._kind)

    async def _accept_tls(self, conn, extra, context):
        # asyncio's SSLProtocol over the engine's stream transport.
        protocol = transport = None
        try:
            protocol = self._protocol_factory()
            waiter = self._loop.create_future()
            transport = self._loop._make_ssl_transport(
                conn, protocol, self._ssl_context, waiter, server_side=True, extra=extra, server=self,
                ssl_handshake_timeout=self._ssl_handshake_timeout,
                ssl_shutdown_timeout=self._ssl_shutdown_timeout, context=context)
            try:
                await waiter
            except BaseException:
                transport.close()
                waiter = None
                raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            self._report_accept_error(exc, protocol, transport)

    def _report_accept_error(self, exc, protocol, transport):
        # As asyncio: reported only in debug mode.
        if self._loop.get_debug():
            context = {"message": "Error on transport creation for incoming connection", "exception": exc}
            if protocol is not None:
                context["protocol"] = protocol
            if transport is not None:
                context["transport"] = transport
            self._loop.call_exception_handler(context)

    def _accept_failed(self, exc, sock):
        """Out of a resource: the engine paused accepting and retries later."""
        self._loop.call_exception_handler({
            "message": "socket.accept() out of system resource",
            "exception": exc,
            "socket": trsock.TransportSocket(sock),
        })

    # ----- serving ---------------------------------------------------------

    def _start_serving(self):
        if self._serving:
            return
        self._serving = True
        if self._context is None and not _SERVER_CONTEXT_AT_CREATION:
            self._context = contextvars.copy_context()
        core = self._loop._core
        for sock in self._sockets:
            sock.listen(self._backlog)
            acceptor = _ferroloop.AcceptorCore(
                core, sock.fileno(), max(self._backlog, 0) + 1,
                # partial: no Python frame of its own per connection.
                functools.partial(self._accepted, sock=sock),
                functools.partial(self._accept_failed, sock=sock),
            )
            self._acceptors.append(acceptor)
            acceptor.start()

    def get_loop(self):
        return self._loop

    def is_serving(self):
        return self._serving

    @property
    def sockets(self):
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def close(self):
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        acceptors, self._acceptors = self._acceptors, []
        for acceptor in acceptors:
            acceptor.close()
        for sock in sockets:
            path = sock.getsockname() if sock in self._unix_paths else None
            sock.close()
            if path is not None:
                _unlink_if_same(path, self._unix_paths.pop(sock))
        self._serving = False
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if not self._clients and not self._anonymous:
            self._wakeup()

    def close_clients(self):
        for transport in self._clients.copy():
            transport.close()

    def abort_clients(self):
        for transport in self._clients.copy():
            transport.abort()

    async def start_serving(self):
        self._start_serving()
        # As asyncio: one iteration, so that connections already waiting are taken.
        await tasks.sleep(0)

    async def serve_forever(self):
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                if sys.version_info >= (3, 13):
                    self.close_clients()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self):
        """Wait until the server is closed and all its connections are gone
        (3.12.1+; on 3.11, as there, return at once once the server is closed)."""
        if self._waiters is None or (_WAIT_CLOSED_RETURNS_ONCE_CLOSED and self._sockets is None):
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter


def remove_stale_unix_socket(path):
    """Before binding ``path``: a socket file left there goes (as asyncio,
    which logs what it cannot check or remove); an abstract name has none."""
    if not path or path[0] in (0, "\x00"):
        return
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)


def _unlink_if_same(path, inode):
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)


def _check_ssl_args(ssl, ssl_handshake_timeout, ssl_shutdown_timeout):
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    if ssl_handshake_timeout is not None and ssl is None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and ssl is None:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    if isinstance(ssl, _ferroloop.TLSContext):
        check_tls_side(ssl, True)


async def _serve(loop, sockets, protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout,
                 start_serving, unix_paths=None):
    for sock in sockets:
        sock.setblocking(False)
    server = Server(loop, sockets, protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)
    if unix_paths:
        server._unix_paths.update(unix_paths)
    if start_serving:
        server._start_serving()
        await tasks.sleep(0)
    if loop.get_debug():
        logger.info("%r is serving", server)
    return server


async def create_server(loop, protocol_factory, host=None, port=None, *, family=socket.AF_UNSPEC,
                        flags=socket.AI_PASSIVE, sock=None, backlog=100, ssl=None, reuse_address=None,
                        reuse_port=None, keep_alive=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                        start_serving=True):
    """``loop.create_server``, as asyncio sets up its sockets."""
    _check_ssl_args(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
    if sock is not None:
        check_ssl_socket(sock)
    if host is not None or port is not None:
        if sock is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        if reuse_address is None:
            reuse_address = True
        if host == "":
            hosts = [None]
        elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
            hosts = [host]
        else:
            hosts = host
        infos = await tasks.gather(*[_server_addrinfo(loop, h, port, family, flags) for h in hosts])
        infos = set(itertools.chain.from_iterable(infos))
        sockets = _bind_all(loop, infos, reuse_address, reuse_port, keep_alive)
    else:
        if sock is None:
            raise ValueError("Neither host/port nor sock were specified")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        sockets = [sock]
    return await _serve(loop, sockets, protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout,
                        start_serving)


async def _server_addrinfo(loop, host, port, family, flags):
    infos = await ensure_resolved(loop, (host, port), family=family, type=socket.SOCK_STREAM, flags=flags)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    return infos


def _bind_all(loop, infos, reuse_address, reuse_port, keep_alive):
    """One listening socket per address (a family this host lacks is skipped)."""
    sockets = []
    completed = False
    try:
        for af, socktype, proto, _canonname, sa in infos:
            try:
                sock = socket.socket(af, socktype, proto)
            except OSError:
                if loop.get_debug():
                    logger.warning("create_server() failed to create socket.socket(%r, %r, %r)",
                                   af, socktype, proto, exc_info=True)
                continue
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
            if reuse_port and af in (socket.AF_INET, socket.AF_INET6):
                set_reuse_port(sock)
            if keep_alive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
            if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # One socket per family: no dual-stack listening.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
            try:
                sock.bind(sa)
            except OSError as err:
                msg = f"error while attempting to bind on address {sa!r}: {str(err).lower()}"
                if err.errno == errno.EADDRNOTAVAIL:
                    # That family is not enabled here (as asyncio, skipped).
                    sockets.pop()
                    sock.close()
                    if loop.get_debug():
                        logger.warning(msg)
                    continue
                raise OSError(err.errno, msg) from None
        if not sockets:
            raise OSError(f"could not bind on any address out of {[info[4] for info in infos]!r}")
        completed = True
    finally:
        if not completed:
            for sock in sockets:
                sock.close()
    return sockets


def set_reuse_port(sock):
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError("reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented.")


async def create_unix_server(loop, protocol_factory, path=None, *, sock=None, backlog=100, ssl=None,
                             ssl_handshake_timeout=None, ssl_shutdown_timeout=None, start_serving=True,
                             cleanup_socket=True):
    """``loop.create_unix_server``, as asyncio sets up its socket."""
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    if ssl_handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    if isinstance(ssl, _ferroloop.TLSContext):
        check_tls_side(ssl, True)
    if path is not None:
        if sock is not None:
            raise ValueError("path and sock can not be specified at the same time")
        path = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        remove_stale_unix_socket(path)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
            raise
        except BaseException:
            sock.close()
            raise
    else:
        if sock is None:
            raise ValueError("path was not specified, and no sock specified")
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
    unix_paths = {}
    if cleanup_socket:
        name = sock.getsockname()
        if name and name[0] not in (0, "\x00"):
            try:
                unix_paths[sock] = os.stat(name).st_ino
            except FileNotFoundError:
                pass
    return await _serve(loop, [sock], protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout,
                        start_serving, unix_paths)
