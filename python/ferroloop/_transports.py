"""Python transport classes over the engine's Rust transports.

A transport must be an instance of ``asyncio.Transport`` (libraries and
CPython's tests check), which a Rust class cannot inherit from. So the
transport is a small Python subclass holding the Rust core; its methods
(``write``, ``close``, ...) are C-level method descriptors of the class that
call the core's (``forward_to_core``), so no Python frame runs per call and a
transport holds nothing per method.
"""

from __future__ import annotations

import inspect
import math
import os
import socket
import stat
import types
import warnings

from asyncio import constants, events, format_helpers, transports, trsock

from . import _ferroloop

# The core's methods every stream transport forwards to: C-level method
# descriptors of the class (``_ferroloop.core_method``), so a call runs no
# Python frame and a transport holds no bound method.
_STREAM_METHODS = (
    "write",
    "writelines",
    "is_closing",
    "get_write_buffer_size",
    "pause_reading",
    "resume_reading",
    "write_eof",
    "can_write_eof",
    "close",
    "abort",
    "is_reading",
    "get_protocol",
    "set_protocol",
    "_force_close",
)


def forward_to_core(cls, names):
    """Give ``cls`` one method per name, calling the same-named method of
    the instance's ``_core`` (``_force_close`` calls ``force_close``)."""
    for name in names:
        setattr(cls, name, _ferroloop.core_method(cls, name))


# format_helpers._format_callback_source takes debug= from 3.12 (a callback's
# repr then includes its source location only in debug mode).
_FORMAT_TAKES_DEBUG = "debug" in inspect.signature(format_helpers._format_callback_source).parameters


def report_callback_error(loop, callback, args, exc, context):
    """What asyncio's ``Handle._run`` reports when ``callback(*args)``
    raised: ``message``, ``exception`` and ``handle`` (an ``asyncio.Handle``
    of that call, so that handlers that read ``context['handle']`` work),
    and ``source_traceback`` in debug mode."""
    handle = events.Handle(callback, args, loop, context)
    kwargs = {"debug": loop.get_debug()} if _FORMAT_TAKES_DEBUG else {}
    source = format_helpers._format_callback_source(callback, args, **kwargs)
    ctx = {"message": f"Exception in callback {source}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        ctx["source_traceback"] = handle._source_traceback
    loop.call_exception_handler(ctx)


# The most a limit can be in the engine (a byte count): larger ones mean "never".
_MAX_LIMIT = (1 << 63) - 1


def _byte_count(limit):
    """A water mark as the engine counts bytes: the floor of any real
    number (a buffer of whole bytes is over 1000.5 when it is over 1000),
    at most _MAX_LIMIT."""
    if limit.__class__ is not int:
        try:
            limit = math.floor(limit)
        except OverflowError:  # inf
            return _MAX_LIMIT
    return min(limit, _MAX_LIMIT)


def set_write_buffer_limits(self, high=None, low=None):
    """asyncio's ``set_write_buffer_limits``: any numbers asyncio takes
    (floats, ints past 64 bits), its defaults and its ``ValueError``; the
    engine applies them as byte counts, and ``get_write_buffer_limits``
    gives back what asyncio would."""
    if high is None:
        high = 64 * 1024 if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    self._core.set_write_buffer_limits(_byte_count(high), _byte_count(low))
    if high.__class__ is int and low.__class__ is int and high <= _MAX_LIMIT:
        self.__dict__.pop("_fl_limits", None)
    else:
        self._fl_limits = (low, high)


def get_write_buffer_limits(self):
    """``(low, high)``, as set (asyncio's order)."""
    limits = self.__dict__.get("_fl_limits")
    return limits if limits is not None else self._core.get_write_buffer_limits()


def with_write_limits(cls):
    """Give ``cls`` the two methods above, named as its own (Python's
    argument errors name the defining class, as asyncio's do)."""
    for func in (set_write_buffer_limits, get_write_buffer_limits):
        qualname = f"{cls.__name__}.{func.__name__}"
        method = types.FunctionType(
            func.__code__.replace(co_qualname=qualname), func.__globals__, func.__name__, func.__defaults__
        )
        method.__qualname__ = qualname
        method.__doc__ = func.__doc__
        setattr(cls, func.__name__, method)


# The sockname of the last socket transport: connections accepted by one
# listener have equal socknames, which then share one tuple.
_last_sockname = None


def socket_extra(extra, sock):
    """asyncio's extra info of a socket transport: ``sockname``, ``peername``
    (unless given), ``None`` where the socket cannot tell. The ``socket``
    entry is made on first request (``SocketBacked``)."""
    global _last_sockname
    try:
        sockname = sock.getsockname()
    except OSError:
        sockname = None
    else:
        if sockname == _last_sockname:
            sockname = _last_sockname
        else:
            _last_sockname = sockname
    extra["sockname"] = sockname
    if "peername" not in extra:
        try:
            extra["peername"] = sock.getpeername()
        except OSError:
            extra["peername"] = None


class CoreBacked:
    """What every transport on an engine core (``self._core``) answers the
    same way: its protocol, whether it paused the protocol's writing, its
    extra info."""

    __slots__ = ()

    @property
    def _protocol(self):
        return self._core.get_protocol()

    @property
    def _protocol_paused(self):
        return self._core.is_writing_paused()

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)


class SocketKind:
    """Family, type and protocol of a socket whose Python object is not made
    yet: an accepted connection's transport keeps only the descriptor, and
    makes the ``socket.socket`` when something asks for it (``_sock``,
    ``get_extra_info('socket')``). One instance is shared by all the
    connections of a listener."""

    __slots__ = ("family", "type", "proto", "closed")

    def __init__(self, family, type, proto, closed):
        self.family = family
        self.type = type
        self.proto = proto
        # A closed socket object of this kind (``get_extra_info('socket')``
        # of a transport that closed its descriptor without making one).
        self.closed = closed

    def make(self, fd):
        """The Python socket object of ``fd`` (which it then owns)."""
        sock = socket.socket(self.family, self.type, self.proto, fileno=fd)
        try:
            sock.setblocking(False)
        except BaseException:
            sock.detach()  # the descriptor stays the transport's
            raise
        return sock


def socket_kind(listener, _kinds={}):
    """The shared ``SocketKind`` of ``listener``'s family, type and protocol
    (those of the connections it accepts)."""
    key = (listener.family, listener.type, listener.proto)
    kind = _kinds.get(key)
    if kind is None:
        # A closed socket object without opening a descriptor: one made on
        # the listener's, which it lets go of at once.
        closed = socket.socket(*key, fileno=listener.fileno())
        closed.setblocking(False)
        closed.detach()
        kind = _kinds[key] = SocketKind(*key, closed)
    return kind


class SocketBacked(CoreBacked):
    """A ``CoreBacked`` transport on a socket (``self._sock``): its extra
    info's ``socket`` entry, asyncio's ``TransportSocket``, is made when
    first asked for, or when the transport lets go of the socket."""

    __slots__ = ()

    def _socket_extra(self):
        """Add the ``socket`` entry to the extra info (if not there yet)."""
        extra = self._extra
        entry = extra.get("socket", extra)
        if entry is extra:
            sock = self._sock
            if sock is not None:
                extra["socket"] = trsock.TransportSocket(sock)
        elif entry.__class__ is SocketKind:
            # Left by _finish() of a transport that never made its socket object.
            extra["socket"] = trsock.TransportSocket(entry.closed)

    def get_extra_info(self, name, default=None):
        if name == "socket":
            self._socket_extra()
        return self._extra.get(name, default)

    def _forget_fd(self):
        """Take this transport's entry out of the loop's fd table (after
        ``connection_lost``: the descriptor is about to be closed)."""
        transports = self._loop._transports
        if transports.get(self._sock_fd) is self:
            del transports[self._sock_fd]


class StreamTransport(SocketBacked, transports._FlowControlMixin, transports.Transport):
    """A TCP or Unix stream transport driven by the engine."""

    # BaseEventLoop.start_tls() and sendfile() look for these.
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    # ``_core`` in a slot: the forwarding methods read it at a fixed offset
    # (``_ferroloop.core_method``) instead of looking it up. The other
    # attributes every transport sets are slots too, so that no instance
    # dict is made for them (``__dict__`` stays for anything else).
    # ``_sock_obj`` is the socket object, or the ``SocketKind`` of the
    # descriptor while no object is made (``_keep_fd_only``), or None once
    # the transport let go of the socket.
    __slots__ = ("_core", "_sock_obj", "_sock_fd", "_server", "__dict__", "__weakref__")

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None, run_context=None):
        # Flow control lives in the engine: _FlowControlMixin.__init__ is not called.
        self._extra = {} if extra is None else extra
        self._loop = loop
        self._sock_obj = sock
        self._sock_fd = sock.fileno()
        socket_extra(self._extra, sock)
        self._server = server
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        # As asyncio: attached to the server before the socket is polled
        # (a closed server refuses, and nothing may be polled then).
        if server is not None:
            server._attach(self)
        try:
            self._core = self._make_core(loop, protocol, waiter, run_context)
        except BaseException:
            self._server = None
            if server is not None:
                server._detach(self)
            raise
        loop._transports[self._sock_fd] = self

    @classmethod
    def _accepted(cls, loop, fd, kind, protocol, extra, server, run_context):
        """The transport of a connection the engine accepted for ``server``:
        on descriptor ``fd`` (now the transport's), with no socket object
        until one is asked for (``kind`` makes it)."""
        self = cls.__new__(cls)
        self._extra = extra
        self._loop = loop
        self._sock_obj = kind
        self._sock_fd = fd
        self._server = None
        try:
            # As asyncio: a closed server refuses (AssertionError), before
            # anything is polled.
            server._attach(self)
            self._server = server
            self._core = _ferroloop.StreamCore(loop._core, loop, self, fd, protocol, None, None, None, None, None,
                                               run_context)
        except BaseException:
            # The caller closes the descriptor; the finalizer must not.
            self._sock_obj = None
            if self._server is not None:
                self._server = None
                server._detach(self)
            raise
        loop._transports[fd] = self
        return self

    def _make_core(self, loop, protocol, waiter, run_context):
        return _ferroloop.StreamCore(loop._core, loop, self, self._sock_fd, protocol, waiter, None, None, None, None,
                                     run_context)

    @property
    def _sock(self):
        """The transport's socket object (made now if it was not), or None
        once the transport let go of it."""
        sock = self._sock_obj
        if sock.__class__ is SocketKind:
            sock = self._sock_obj = sock.make(self._sock_fd)
        return sock

    @_sock.setter
    def _sock(self, sock):
        self._sock_obj = sock

    def _keep_fd_only(self, kind):
        """Let go of the socket object (an accepted connection's, which
        nothing else holds) and keep its descriptor: the object is made
        again when asked for. Saves its memory on every idle connection."""
        sock = self._sock_obj
        if sock is not None and sock.__class__ is not SocketKind and "socket" not in self._extra:
            # Detached first: interrupted in between, the descriptor leaks
            # rather than being closed twice.
            sock.detach()
            self._sock_obj = kind

    def _finish(self):
        """After ``connection_lost``: close the socket, leave the server."""
        # _forget_fd(), without its frame: this runs once per connection.
        transports = self._loop._transports
        if transports.get(self._sock_fd) is self:
            del transports[self._sock_fd]
        sock, self._sock_obj = self._sock_obj, None
        if sock.__class__ is SocketKind:
            # No object was made: close the descriptor, and leave the kind
            # for get_extra_info('socket') to make a closed socket of.
            self._extra.setdefault("socket", sock)
            os.close(self._sock_fd)
        elif sock is not None:
            if "socket" not in self._extra:
                self._extra["socket"] = trsock.TransportSocket(sock)
            sock.close()
        server, self._server = self._server, None
        if server is not None:
            server._detach(self)

    _empty_waiter = None

    def _make_empty_waiter(self):
        """A future done once the write buffer is empty; write() is refused
        until ``_reset_empty_waiter`` (asyncio's sendfile protocol)."""
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        waiter = self._empty_waiter = self._loop.create_future()
        self._core.set_write_blocked(True)

        def drained(exc, waiter=waiter):
            if waiter.done():
                return
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

        self._core.wait_drained(drained)
        return waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None
        self._core.set_write_blocked(False)

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._core.fileno() == -1:
            info.append("closed")
        elif self._core.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._core.fileno() != -1:
            info.append("read=" + ("polling" if self._core.is_reading() else "idle"))
            size = self._core.get_write_buffer_size()
            info.append(f"write=<{'polling' if size else 'idle'}, bufsize={size}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn, _close=os.close, _kind=SocketKind):
        sock = getattr(self, "_sock_obj", None)
        if sock is None:
            return  # finished, or handed over to a TLS transport by start_tls()
        core = getattr(self, "_core", None)
        try:
            if core is not None and core.fileno() != -1 and not core.is_closing():
                _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
        finally:
            # Even when the warning is an error: out of the engine's poll,
            # then the descriptor closed.
            if core is not None and core.fileno() != -1:
                core.close_socket()
            if sock.__class__ is _kind:
                _close(self._sock_fd)
            else:
                sock.close()


forward_to_core(StreamTransport, _STREAM_METHODS)
with_write_limits(StreamTransport)


# ----- TLS fast path ---------------------------------------------------------


def _cipher_name(name):
    # rustls names TLS 1.3 suites "TLS13_..."; their IANA (and OpenSSL) name is "TLS_...".
    if name and name.startswith("TLS13_"):
        return "TLS_" + name[6:]
    return name


class TLSObject:
    """``get_extra_info('ssl_object')`` on the fast path: the read-only part
    of ``ssl.SSLObject`` that applications use after the handshake."""

    def __init__(self, info, context, server_side, server_hostname):
        self._info = info
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname

    def version(self):
        """``"TLSv1.3"`` or ``"TLSv1.2"``."""
        return self._info[0]

    def cipher(self):
        """``(name, protocol version, secret bits)``, as ``SSLObject.cipher()``
        (the suite's IANA name)."""
        return (_cipher_name(self._info[1]), self._info[0], self._info[2])

    def selected_alpn_protocol(self):
        return self._info[3]

    def compression(self):
        return None

    @property
    def session_reused(self):
        """Whether the handshake resumed an earlier session (TLS 1.3 ticket
        or TLS 1.2 session; clients of one ``TLSContext`` share a cache)."""
        return self._info[6]

    def getpeercert(self, binary_form=False):
        """The peer's certificate: DER bytes with ``binary_form=True``, else
        the dict ``ssl.SSLObject.getpeercert()`` gives (``{}`` when it was
        not verified; ``None`` when the peer sent none)."""
        chain = self._info[4]
        if not chain:
            return None
        if binary_form:
            return chain[0]
        if not self.context.verify:
            return {}
        return _decode_cert(chain[0])

    def __repr__(self):
        return f"<ferroloop.TLSObject {self._info[0]} {_cipher_name(self._info[1])}>"


def _decode_cert(der):
    """A DER certificate as the dict ``ssl`` gives (CPython's own decoder)."""
    import ssl
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(ssl.DER_cert_to_PEM_cert(der))
        f.flush()
        return ssl._ssl._test_decode_cert(f.name)


_TLS_EXTRA = frozenset(("ssl_object", "cipher", "compression", "peercert"))


class TLSTransport(StreamTransport):
    """The engine's TLS transport (``ssl=`` a ``ferroloop.TLSContext``):
    records are encrypted and decrypted in Rust. asyncio's SSL transport
    semantics: ``connection_made`` after the handshake, no half-close,
    ``close()`` sends close_notify."""

    _start_tls_compatible = False
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(
        self,
        loop,
        sock,
        protocol,
        context,
        waiter=None,
        extra=None,
        server=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        run_context=None,
    ):
        self._tls = (context, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout)
        self._tls_waiter = waiter
        StreamTransport.__init__(self, loop, sock, protocol, None, extra, server, run_context)
        self._extra["sslcontext"] = context

    def _make_core(self, loop, protocol, waiter, run_context):
        context, server_hostname, hs_timeout, sd_timeout = self._tls
        return _ferroloop.StreamCore(
            loop._core, loop, self, self._sock_fd, protocol, None, context, server_hostname, hs_timeout, sd_timeout,
            run_context,
        )

    @classmethod
    def _upgrade(cls, transport, protocol, context, waiter, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout):
        """``start_tls``: a TLS transport over ``transport``'s connection,
        which it takes over (socket, server attachment)."""
        self = cls.__new__(cls)
        self._tls = (context, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout)
        self._tls_waiter = waiter
        self._loop = transport._loop
        transport._socket_extra()
        self._extra = dict(transport._extra)
        self._extra["sslcontext"] = context
        self._sock_fd = transport._sock_fd
        self._core = transport._core.start_tls(
            self, protocol, context, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout
        )
        self._sock_obj, transport._sock_obj = transport._sock_obj, None
        self._server, transport._server = transport._server, None
        if self._server is not None:
            # The server's live transports: the TLS one replaces the plain one.
            self._server._clients.discard(transport)
            self._server._clients.add(self)
        self._loop._transports[self._sock_fd] = self
        return self

    def _tls_extra(self):
        """Add what the handshake negotiated to the extra info (once it is done)."""
        if "ssl_object" in self._extra:
            return
        info = self._core.tls_info()
        if info is None or info[0] is None:
            return  # handshake not done
        context, server_hostname = self._tls[0], self._tls[1]
        obj = TLSObject(info, context, context.server_side, server_hostname or info[5])
        self._extra.update(ssl_object=obj, cipher=obj.cipher(), compression=None)

    def _tls_done(self, exc):
        """The engine's word on the handshake, after ``connection_made``."""
        waiter, self._tls_waiter = self._tls_waiter, None
        if exc is None:
            self._tls_extra()
            if waiter is not None and not waiter.cancelled():
                waiter.set_result(None)
            return
        # The protocol never heard of the connection: no connection_lost
        # will come to finish the transport. The engine calls this once the
        # socket is out of its poll, so closing it now is safe.
        self._finish()
        if waiter is not None:
            if not waiter.cancelled():
                waiter.set_exception(exc)
        elif self._loop.get_debug():
            self._loop.call_exception_handler(
                {
                    "message": "SSL handshake failed",
                    "exception": exc,
                    "transport": self,
                }
            )

    def get_extra_info(self, name, default=None):
        if name in _TLS_EXTRA and "ssl_object" not in self._extra:
            # Asked in connection_made, before _tls_done: as asyncio, the
            # handshake's results are there already.
            self._tls_extra()
        if name == "peercert" and "peercert" not in self._extra:
            obj = self._extra.get("ssl_object")
            if obj is None:
                return default
            self._extra["peercert"] = obj.getpeercert()
        return StreamTransport.get_extra_info(self, name, default)

    def write_eof(self):
        raise NotImplementedError("SSL doesn't support half-closes")

    def can_write_eof(self):
        return False


# ----- pipe transports ------------------------------------------------------

_READ_PIPE_METHODS = (
    "pause_reading",
    "resume_reading",
    "is_reading",
    "close",
    "is_closing",
    "get_protocol",
    "set_protocol",
    "_force_close",
)

_WRITE_PIPE_METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "close",
    "abort",
    "is_closing",
    "get_write_buffer_size",
    "get_protocol",
    "set_protocol",
    "_force_close",
)


class _PipeTransport(CoreBacked):
    """What the read and write pipe transports share: the engine core on a
    duplicate of the pipe's descriptor, asyncio's checks, ``_finish``."""

    _WRITE = False
    _MODE_ERROR = ""

    def _init_pipe(self, loop, pipe, protocol, waiter, extra):
        self._extra = {} if extra is None else extra
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        mode = os.fstat(self._fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            self._pipe = None
            self._fileno = None
            raise ValueError(self._MODE_ERROR)
        os.set_blocking(self._fileno, False)
        self._core = _ferroloop.pipe_core(loop._core, loop, self, self._fileno, protocol, waiter, write=self._WRITE)

    def _finish(self):
        """After ``connection_lost``: close the pipe object."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._core.is_closing():
            info.append("closing")
        info.append(f"fd={self._fileno}")
        if self._pipe is not None:
            info.append("open")
            if self._WRITE:
                info.append(f"bufsize={self._core.get_write_buffer_size()}")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        pipe = self.__dict__.get("_pipe")
        if pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            pipe.close()
            core = getattr(self, "_core", None)
            if core is not None and not core.is_closing():
                core.abort()


class ReadPipeTransport(_PipeTransport, transports.ReadTransport):
    """asyncio's read pipe transport (``connect_read_pipe``) on the engine."""

    _WRITE = False
    _MODE_ERROR = "Pipe transport is for pipes/sockets only."

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        self._init_pipe(loop, pipe, protocol, waiter, extra)


class WritePipeTransport(_PipeTransport, transports._FlowControlMixin, transports.WriteTransport):
    """asyncio's write pipe transport (``connect_write_pipe``) on the engine."""

    _WRITE = True
    _MODE_ERROR = "Pipe transport is only for pipes, sockets and character devices"

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        # Flow control lives in the engine: _FlowControlMixin.__init__ is not called.
        self._init_pipe(loop, pipe, protocol, waiter, extra)


forward_to_core(ReadPipeTransport, _READ_PIPE_METHODS)
forward_to_core(WritePipeTransport, _WRITE_PIPE_METHODS)
with_write_limits(WritePipeTransport)
