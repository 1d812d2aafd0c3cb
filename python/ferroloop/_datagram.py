"""The datagram transport (UDP and Unix datagram sockets) over the engine.

``DatagramTransport`` is what ``loop.create_datagram_endpoint()`` returns on
ferroloop: an instance of ``asyncio.DatagramTransport`` (and, as asyncio's own
``_SelectorDatagramTransport``, of ``asyncio.Transport``) whose methods
(``sendto``, ``close``...) are C-level method descriptors calling the Rust
core's (``_transports.forward_to_core``), so no Python frame runs per datagram. Receiving, the send
queue and flow control are the engine's (``DatagramCore``).
"""

from __future__ import annotations

import socket
import warnings

from asyncio import transports

from . import _ferroloop
from ._transports import SocketBacked, forward_to_core, socket_extra, with_write_limits

_METHODS = (
    "sendto",
    "close",
    "abort",
    "is_closing",
    "pause_reading",
    "resume_reading",
    "is_reading",
    "get_write_buffer_size",
    "get_protocol",
    "set_protocol",
    "_force_close",
)


def _sendto_address(family, addr):
    """Normalise ``addr`` for a ``family`` socket as ``socket.sendto`` reads
    it: ``(ip_literal, port[, flowinfo, scope_id])``, names resolved (blocking,
    as ``socket.sendto`` resolves them). Raises what ``socket.sendto`` would:
    ``TypeError``/``OverflowError`` for a malformed address, ``socket.gaierror``
    for an unknown name. (The Rust core handles IP literals itself; this is
    its slow path.)"""
    fam = "AF_INET6" if family == socket.AF_INET6 else "AF_INET"
    if not isinstance(addr, tuple):
        raise TypeError(f"sendto(): {fam} address must be tuple, not {type(addr).__name__}")
    if family == socket.AF_INET6:
        if not 2 <= len(addr) <= 4:
            raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])")
    elif len(addr) != 2:
        raise TypeError("AF_INET address must be a pair (host, port)")
    host, port = addr[0], addr[1]
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("idna")
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if not isinstance(port, int):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 0xFFFF:
        raise OverflowError("sendto(): port must be 0-65535.")
    if family != socket.AF_INET6:
        if host == "":
            return ("0.0.0.0", port)
        if host == "<broadcast>":
            return ("255.255.255.255", port)
    elif host == "":
        host = "::"
    info = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    resolved = info[0][4]
    if family == socket.AF_INET6:
        flowinfo = addr[2] if len(addr) > 2 else resolved[2]
        scope_id = addr[3] if len(addr) > 3 else resolved[3]
        return (resolved[0].split("%")[0], port, flowinfo, scope_id)
    return (resolved[0], port)


class DatagramTransport(SocketBacked, transports._FlowControlMixin, transports.DatagramTransport):
    """A UDP or Unix datagram transport driven by the engine."""

    max_size = 256 * 1024  # the engine's read buffer, asyncio's max_size

    # ``_core`` in a slot: the forwarding methods read it at a fixed offset
    # (``_ferroloop.core_method``) instead of looking it up; the other
    # attributes every transport sets are slots too (no instance dict).
    __slots__ = ("_core", "_sock", "_sock_fd", "_address", "__dict__", "__weakref__")

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        # Flow control lives in the engine: _FlowControlMixin.__init__ is not called.
        self._extra = {} if extra is None else extra
        self._loop = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._address = address
        socket_extra(self._extra, sock)
        core = _ferroloop.DatagramCore(loop._core, loop, self, self._sock_fd, sock.family, protocol, address, waiter)
        self._core = core
        loop._transports[self._sock_fd] = self

    def _finish(self):
        """After ``connection_lost``: close the socket."""
        self._socket_extra()
        self._forget_fd()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def _buffer_size(self):
        return self._core.get_write_buffer_size()

    def _fatal_error(self, exc, message="Fatal error on transport"):
        """asyncio's ``_fatal_error``: report (unless an OSError), close with ``exc``."""
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler(
                {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
            )
        self._core.force_close(exc)

    def __repr__(self):
        info = [self.__class__.__name__]
        core = getattr(self, "_core", None)
        if core is None or core.fileno() == -1:
            info.append("closed")
        elif core.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if core is not None and core.fileno() != -1:
            info.append("read=" + ("polling" if core.is_reading() else "idle"))
            size = core.get_write_buffer_size()
            info.append(f"write=<{'polling' if size else 'idle'}, bufsize={size}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        core = getattr(self, "_core", None)
        if core is not None and core.fileno() != -1 and not core.is_closing():
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core.close_socket()
            sock = getattr(self, "_sock", None)
            if sock is not None:
                sock.close()


forward_to_core(DatagramTransport, _METHODS)
with_write_limits(DatagramTransport)
