"""Datagram endpoints and pipes, made by ferroloop (``create_datagram_endpoint``,
``connect_read_pipe``, ``connect_write_pipe``): the sockets are set up as
asyncio sets them up (which addresses, options and errors), and the transport
is the engine's, made by the loop's ``_make_datagram_transport`` /
``_make_read_pipe_transport`` / ``_make_write_pipe_transport`` (ferroloop's
methods, named as asyncio's so that a subclass may replace them)."""

from __future__ import annotations

import socket
import sys

from asyncio.log import logger

from ._resolve import ensure_resolved
from ._server import remove_stale_unix_socket, set_reuse_port

# 3.13 accepts any socket but a stream one (SOCK_SEQPACKET, raw...); before,
# only SOCK_DGRAM.
_ANY_NON_STREAM_SOCKET = sys.version_info >= (3, 13)


async def _endpoint_sockets(loop, local_addr, remote_addr, family, proto, flags):
    """The (family, proto), (local, remote) pairs to try, in order."""
    if not (local_addr or remote_addr):
        if family == 0:
            raise ValueError("unexpected address family")
        return (((family, proto), (None, None)),)
    if family == getattr(socket, "AF_UNIX", None):
        for addr in (local_addr, remote_addr):
            if addr is not None and not isinstance(addr, str):
                raise TypeError("string is expected")
        if local_addr:
            remove_stale_unix_socket(local_addr)
        return (((family, proto), (local_addr, remote_addr)),)
    by_key = {}  # (family, proto) -> [local, remote], in resolution order
    for idx, addr in ((0, local_addr), (1, remote_addr)):
        if addr is None:
            continue
        if not (isinstance(addr, tuple) and len(addr) == 2):
            raise TypeError("2-tuple is expected")
        infos = await ensure_resolved(loop, addr, family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags)
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        for fam, _, pro, _, address in infos:
            by_key.setdefault((fam, pro), [None, None])[idx] = address
    # Each given address needs an address of the pair's (family, proto).
    pairs = [(key, pair) for key, pair in by_key.items()
             if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))]
    if not pairs:
        raise ValueError("can not get address information")
    return pairs


async def create_datagram_endpoint(loop, protocol_factory, local_addr=None, remote_addr=None, *, family=0, proto=0,
                                   flags=0, reuse_port=None, allow_broadcast=None, sock=None):
    """``loop.create_datagram_endpoint``."""
    if sock is not None:
        if _ANY_NON_STREAM_SOCKET:
            if sock.type == socket.SOCK_STREAM:
                raise ValueError(f"A datagram socket was expected, got {sock!r}")
        elif sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"A UDP Socket was expected, got {sock!r}")
        if local_addr or remote_addr or family or proto or flags or reuse_port or allow_broadcast:
            opts = dict(local_addr=local_addr, remote_addr=remote_addr, family=family, proto=proto, flags=flags,
                        reuse_port=reuse_port, allow_broadcast=allow_broadcast)
            problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
            raise ValueError(f"socket modifier keyword arguments can not be used when sock is specified. ({problems})")
        sock.setblocking(False)
        r_addr = None
    else:
        errors = []
        for (fam, pro), (local_address, remote_address) in await _endpoint_sockets(
                loop, local_addr, remote_addr, family, proto, flags):
            sock = r_addr = None
            try:
                sock = socket.socket(family=fam, type=socket.SOCK_DGRAM, proto=pro)
                if reuse_port:
                    set_reuse_port(sock)
                if allow_broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if local_addr:
                    sock.bind(local_address)
                if remote_addr:
                    if not allow_broadcast:
                        await loop.sock_connect(sock, remote_address)
                    r_addr = remote_address
            except OSError as exc:
                if sock is not None:
                    sock.close()
                errors.append(exc)
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
            else:
                break
        else:
            raise errors[0]
    protocol = protocol_factory()
    waiter = loop.create_future()
    transport = loop._make_datagram_transport(sock, protocol, r_addr, waiter)
    if loop.get_debug():
        if local_addr:
            logger.info("Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                        local_addr, remote_addr, transport, protocol)
        else:
            logger.debug("Datagram endpoint remote_addr=%r created: (%r, %r)", remote_addr, transport, protocol)
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


async def connect_pipe(loop, make, protocol_factory, pipe, what):
    """``connect_read_pipe``/``connect_write_pipe``: ``make`` is the loop's
    transport maker; ``what`` names the pipe in debug mode's log."""
    protocol = protocol_factory()
    waiter = loop.create_future()
    transport = make(pipe, protocol, waiter)
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    if loop.get_debug():
        logger.debug("%s pipe %r connected: (%r, %r)", what, pipe.fileno(), transport, protocol)
    return transport, protocol
