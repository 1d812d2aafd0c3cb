"""Python transport classes over the engine's Rust transports.

A transport must be an instance of ``asyncio.Transport`` (libraries and
CPython's tests check), which a Rust class cannot inherit from. So the
transport is a small Python subclass holding the Rust core; its hot methods
(``write``, ``close``, ...) are the core's builtin methods placed in the
instance dict, so no Python frame runs per call.
"""

from __future__ import annotations

import inspect
import os
import socket
import stat
import warnings

from asyncio import base_events, constants, transports, trsock

from . import _ferroloop

# asyncio 3.12 changed Server._attach()/_detach() to take the transport.
_SERVER_ATTACH_TAKES_TRANSPORT = "transport" in inspect.signature(base_events.Server._attach).parameters

_BOUND = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "close",
    "abort",
    "is_closing",
    "pause_reading",
    "resume_reading",
    "is_reading",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
    "get_protocol",
    "set_protocol",
)


class StreamTransport(transports._FlowControlMixin, transports.Transport):
    """A TCP or Unix stream transport driven by the engine."""

    # BaseEventLoop.start_tls() and sendfile() look for these.
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        # Flow control lives in the engine: _FlowControlMixin.__init__ is not called.
        self._extra = {} if extra is None else extra
        self._loop = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._server = server
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        core = _ferroloop.StreamCore(loop._core, loop, self, self._sock_fd, protocol, waiter)
        self._core = core
        d = self.__dict__
        for name in _BOUND:
            d[name] = getattr(core, name)
        d["_force_close"] = core.force_close
        loop._transports[self._sock_fd] = self
        if server is not None:
            if _SERVER_ATTACH_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()

    def _finish(self):
        """After ``connection_lost``: close the socket, leave the server."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        server, self._server = self._server, None
        if server is not None:
            if _SERVER_ATTACH_TAKES_TRANSPORT:
                server._detach(self)
            else:
                server._detach()

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

    @property
    def _protocol_paused(self):
        return self._core.is_writing_paused()

    @property
    def _protocol(self):
        return self._core.get_protocol()

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

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

    def __del__(self, _warn=warnings.warn):
        core = self.__dict__.get("_core")
        if core is not None and core.fileno() != -1 and not core.is_closing():
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core.close_socket()
            sock = self.__dict__.get("_sock")
            if sock is not None:
                sock.close()


# ----- pipe transports ------------------------------------------------------

_READ_PIPE_BOUND = (
    "pause_reading",
    "resume_reading",
    "is_reading",
    "close",
    "is_closing",
    "get_protocol",
    "set_protocol",
)

_WRITE_PIPE_BOUND = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "close",
    "abort",
    "is_closing",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
    "get_protocol",
    "set_protocol",
)


class _PipeTransport:
    """What the read and write pipe transports share: the engine core on a
    duplicate of the pipe's descriptor, asyncio's checks, ``_finish``."""

    _BOUND = ()
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
        core = _ferroloop.pipe_core(loop._core, loop, self, self._fileno, protocol, waiter, write=self._WRITE)
        self._core = core
        d = self.__dict__
        for name in self._BOUND:
            d[name] = getattr(core, name)
        d["_force_close"] = core.force_close

    def _finish(self):
        """After ``connection_lost``: close the pipe object."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    @property
    def _protocol(self):
        return self._core.get_protocol()

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

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
            core = self.__dict__.get("_core")
            if core is not None and not core.is_closing():
                core.abort()


class ReadPipeTransport(_PipeTransport, transports.ReadTransport):
    """asyncio's read pipe transport (``connect_read_pipe``) on the engine."""

    _BOUND = _READ_PIPE_BOUND
    _WRITE = False
    _MODE_ERROR = "Pipe transport is for pipes/sockets only."

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        self._init_pipe(loop, pipe, protocol, waiter, extra)


class WritePipeTransport(_PipeTransport, transports._FlowControlMixin, transports.WriteTransport):
    """asyncio's write pipe transport (``connect_write_pipe``) on the engine."""

    _BOUND = _WRITE_PIPE_BOUND
    _WRITE = True
    _MODE_ERROR = "Pipe transport is only for pipes, sockets and character devices"

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        # Flow control lives in the engine: _FlowControlMixin.__init__ is not called.
        self._init_pipe(loop, pipe, protocol, waiter, extra)

    @property
    def _protocol_paused(self):
        return self._core.is_writing_paused()
