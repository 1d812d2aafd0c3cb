"""Client connections: ``create_connection``, ``create_unix_connection``,
``connect_accepted_socket``, made by ferroloop.

The sockets are made, bound and connected as asyncio makes them (the
public behaviour: the order addresses are tried in, Happy Eyeballs with
``happy_eyeballs_delay``, ``interleave``, the errors raised), through the
loop's public ``getaddrinfo`` and ``sock_connect``; the transport is the
engine's, made by the loop's own ``_make_socket_transport``/
``_make_ssl_transport`` (ferroloop's methods, named as asyncio's so that a
subclass may replace them).
"""

from __future__ import annotations

import contextvars
import dis
import os
import socket
import sys

from asyncio import base_events, staggered
from asyncio.log import logger

from ._resolve import check_ssl_socket, ensure_resolved, interleave_addrinfos

# 3.15: the transport makers take the context their callbacks run in.
_PASS_CONTEXT = sys.version_info >= (3, 15)


def _closes_socket_on_failure():
    """Whether this release's asyncio closes a socket whose transport could
    not be made (gh-153133: 3.15, and later 3.14 patch releases): its
    _create_connection_transport then closes twice (the socket on failure,
    the transport after a failed handshake) instead of once."""
    code = base_events.BaseEventLoop._create_connection_transport.__code__
    return sum(1 for i in dis.get_instructions(code) if i.argval == "close") >= 2


_CLOSE_SOCKET_ON_FAILURE = _closes_socket_on_failure()


def _context_kwarg(make, run_context):
    """``context=`` for ferroloop's own transport makers, and for a
    replacement where asyncio passes it too (3.15+); none otherwise (a
    subclass written for an earlier asyncio does not take it)."""
    if getattr(make, "_ferroloop_default", None) is True or _PASS_CONTEXT:
        return {"context": run_context}
    return {}


async def connection_transport(loop, sock, protocol_factory, ssl, server_hostname, server_side=False,
                               ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
    """The transport and protocol on connected ``sock``, once the protocol
    heard ``connection_made`` (and, with ``ssl``, the handshake is done)."""
    try:
        sock.setblocking(False)
        # The transport's callbacks run in a copy of the caller's context.
        run_context = contextvars.copy_context()
        protocol = protocol_factory()
        waiter = loop.create_future()
        if ssl:
            sslcontext = None if isinstance(ssl, bool) else ssl
            make = loop._make_ssl_transport
            kwargs = _context_kwarg(make, run_context)
            transport = make(sock, protocol, sslcontext, waiter, server_side=server_side,
                             server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,
                             ssl_shutdown_timeout=ssl_shutdown_timeout, **kwargs)
        else:
            make = loop._make_socket_transport
            transport = make(sock, protocol, waiter, **_context_kwarg(make, run_context))
    except BaseException:
        if _CLOSE_SOCKET_ON_FAILURE:
            sock.close()
        raise
    try:
        await waiter
    except BaseException:
        transport.close()
        waiter = None  # no cycle through the exception's traceback
        raise
    return transport, protocol


async def _connect_sock(loop, errors, addr_info, local_addr_infos=None):
    """Make, bind and connect one socket; its errors go to a list of ``errors``."""
    mine = []
    errors.append(mine)
    family, type_, proto, _, address = addr_info
    sock = None
    try:
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_addr_infos is not None:
                for lfamily, _, _, _, laddr in local_addr_infos:
                    if lfamily != family:
                        continue
                    try:
                        sock.bind(laddr)
                        break
                    except OSError as exc:
                        mine.append(OSError(exc.errno, f"error while attempting to bind on address "
                                                       f"{laddr!r}: {str(exc).lower()}"))
                else:
                    if mine:
                        raise mine.pop()
                    raise OSError(f"no matching local address with {family=} found")
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            mine.append(exc)
            raise
    except BaseException:
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass  # not the error worth raising
        raise
    finally:
        errors = mine = None


def _raise_connect_errors(errors, all_errors):
    errors = [exc for sub in errors for exc in sub]
    try:
        if all_errors:
            raise ExceptionGroup("create_connection failed", errors)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            model = str(errors[0])
            if all(str(exc) == model for exc in errors):
                raise errors[0]
            raise OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in errors)))
        raise TimeoutError("create_connection failed")
    finally:
        errors = None


async def create_connection(loop, protocol_factory, host=None, port=None, *, ssl=None, family=0, proto=0, flags=0,
                            sock=None, local_addr=None, server_hostname=None, ssl_handshake_timeout=None,
                            ssl_shutdown_timeout=None, happy_eyeballs_delay=None, interleave=None,
                            all_errors=False):
    """``loop.create_connection``."""
    if server_hostname is not None and not ssl:
        raise ValueError("server_hostname is only meaningful with ssl")
    if server_hostname is None and ssl:
        if not host:
            raise ValueError("You must set server_hostname when using ssl without a host")
        server_hostname = host
    if ssl_handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    if sock is not None:
        check_ssl_socket(sock)
    if happy_eyeballs_delay is not None and interleave is None:
        interleave = 1  # RFC 8305's default
    if host is not None or port is not None:
        if sock is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        infos = await ensure_resolved(loop, (host, port), family=family, type=socket.SOCK_STREAM, proto=proto,
                                      flags=flags)
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        laddr_infos = None
        if local_addr is not None:
            laddr_infos = await ensure_resolved(loop, local_addr, family=family, type=socket.SOCK_STREAM,
                                                proto=proto, flags=flags)
            if not laddr_infos:
                raise OSError("getaddrinfo() returned empty list")
        if interleave:
            infos = interleave_addrinfos(infos, interleave)
        errors = []
        if happy_eyeballs_delay is None:
            for addr_info in infos:
                try:
                    sock = await _connect_sock(loop, errors, addr_info, laddr_infos)
                    break
                except OSError:
                    continue
        else:
            # Staggered attempts; [0] only: the rest of the result would
            # keep the error lists alive.
            sock = (await staggered.staggered_race(
                (lambda addr_info=addr_info: _connect_sock(loop, errors, addr_info, laddr_infos)
                 for addr_info in infos),
                happy_eyeballs_delay,
                loop=loop,
            ))[0]
        if sock is None:
            _raise_connect_errors(errors, all_errors)
    else:
        if sock is None:
            raise ValueError("host and port was not specified and no sock specified")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
    transport, protocol = await connection_transport(loop, sock, protocol_factory, ssl, server_hostname,
                                                     ssl_handshake_timeout=ssl_handshake_timeout,
                                                     ssl_shutdown_timeout=ssl_shutdown_timeout)
    if loop.get_debug():
        logger.debug("%r connected to %s:%r: (%r, %r)", transport.get_extra_info("socket"), host, port,
                     transport, protocol)
    return transport, protocol


async def create_unix_connection(loop, protocol_factory, path=None, *, ssl=None, sock=None, server_hostname=None,
                                 ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
    """``loop.create_unix_connection``."""
    assert server_hostname is None or isinstance(server_hostname, str)
    if ssl:
        if server_hostname is None:
            raise ValueError("you have to pass server_hostname when using ssl")
    else:
        if server_hostname is not None:
            raise ValueError("server_hostname is only meaningful with ssl")
        if ssl_handshake_timeout is not None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    if path is not None:
        if sock is not None:
            raise ValueError("path and sock can not be specified at the same time")
        path = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, path)
        except BaseException:
            sock.close()
            raise
    else:
        if sock is None:
            raise ValueError("no path and sock were specified")
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        sock.setblocking(False)
    return await connection_transport(loop, sock, protocol_factory, ssl, server_hostname,
                                      ssl_handshake_timeout=ssl_handshake_timeout,
                                      ssl_shutdown_timeout=ssl_shutdown_timeout)


async def connect_accepted_socket(loop, protocol_factory, sock, *, ssl=None, ssl_handshake_timeout=None,
                                  ssl_shutdown_timeout=None):
    """``loop.connect_accepted_socket``: the server side of ``sock``."""
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")
    if ssl_handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    check_ssl_socket(sock)
    transport, protocol = await connection_transport(loop, sock, protocol_factory, ssl, "", server_side=True,
                                                     ssl_handshake_timeout=ssl_handshake_timeout,
                                                     ssl_shutdown_timeout=ssl_shutdown_timeout)
    if loop.get_debug():
        logger.debug("%r handled: (%r, %r)", transport.get_extra_info("socket"), transport, protocol)
    return transport, protocol
