"""The loop's servers, connections, datagram endpoints and pipes: a mixin of
``ferroloop.Loop`` whose methods have each version's signature (a keyword
argument that version's asyncio lacks is a TypeError at the call, as there)
and call ferroloop's own implementations (``_server``, ``_connect``,
``_endpoints``)."""

from __future__ import annotations

import socket
import sys

from . import _connect, _endpoints, _server


class NetworkMethods:
    """``create_server`` ... ``connect_write_pipe`` of ``ferroloop.Loop``."""

    # ----- servers and connections ---------------------------------------------
    # ferroloop's own (_server.py, _connect.py): asyncio's versions reach the
    # loop's private hooks, whose signatures change between releases.

    # Each version's signature: a keyword argument that version's asyncio
    # lacks is a TypeError at the call, as there.
    if sys.version_info >= (3, 13):

        async def create_server(self, protocol_factory, host=None, port=None, *, family=socket.AF_UNSPEC,
                                flags=socket.AI_PASSIVE, sock=None, backlog=100, ssl=None, reuse_address=None,
                                reuse_port=None, keep_alive=None, ssl_handshake_timeout=None,
                                ssl_shutdown_timeout=None, start_serving=True):
            return await _server.create_server(
                self, protocol_factory, host, port, family=family, flags=flags, sock=sock, backlog=backlog,
                ssl=ssl, reuse_address=reuse_address, reuse_port=reuse_port, keep_alive=keep_alive,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving)

        async def create_unix_server(self, protocol_factory, path=None, *, sock=None, backlog=100, ssl=None,
                                     ssl_handshake_timeout=None, ssl_shutdown_timeout=None, start_serving=True,
                                     cleanup_socket=True):
            return await _server.create_unix_server(
                self, protocol_factory, path, sock=sock, backlog=backlog, ssl=ssl,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving, cleanup_socket=cleanup_socket)

    else:

        async def create_server(self, protocol_factory, host=None, port=None, *, family=socket.AF_UNSPEC,
                                flags=socket.AI_PASSIVE, sock=None, backlog=100, ssl=None, reuse_address=None,
                                reuse_port=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                                start_serving=True):
            return await _server.create_server(
                self, protocol_factory, host, port, family=family, flags=flags, sock=sock, backlog=backlog,
                ssl=ssl, reuse_address=reuse_address, reuse_port=reuse_port,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving)

        async def create_unix_server(self, protocol_factory, path=None, *, sock=None, backlog=100, ssl=None,
                                     ssl_handshake_timeout=None, ssl_shutdown_timeout=None, start_serving=True):
            # Before 3.13 the socket file stays after close.
            return await _server.create_unix_server(
                self, protocol_factory, path, sock=sock, backlog=backlog, ssl=ssl,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving, cleanup_socket=False)

    if sys.version_info >= (3, 12):

        async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None, family=0,
                                    proto=0, flags=0, sock=None, local_addr=None, server_hostname=None,
                                    ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                                    happy_eyeballs_delay=None, interleave=None, all_errors=False):
            return await _connect.create_connection(
                self, protocol_factory, host, port, ssl=ssl, family=family, proto=proto, flags=flags, sock=sock,
                local_addr=local_addr, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave, all_errors=all_errors)

    else:

        async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None, family=0,
                                    proto=0, flags=0, sock=None, local_addr=None, server_hostname=None,
                                    ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                                    happy_eyeballs_delay=None, interleave=None):
            return await _connect.create_connection(
                self, protocol_factory, host, port, ssl=ssl, family=family, proto=proto, flags=flags, sock=sock,
                local_addr=local_addr, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave)

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, *, family=0,
                                       proto=0, flags=0, reuse_port=None, allow_broadcast=None, sock=None):
        return await _endpoints.create_datagram_endpoint(
            self, protocol_factory, local_addr, remote_addr, family=family, proto=proto, flags=flags,
            reuse_port=reuse_port, allow_broadcast=allow_broadcast, sock=sock)

    async def connect_read_pipe(self, protocol_factory, pipe):
        return await _endpoints.connect_pipe(self, self._make_read_pipe_transport, protocol_factory, pipe, "Read")

    async def connect_write_pipe(self, protocol_factory, pipe):
        return await _endpoints.connect_pipe(self, self._make_write_pipe_transport, protocol_factory, pipe, "Write")

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None, sock=None,
                                     server_hostname=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        return await _connect.create_unix_connection(
            self, protocol_factory, path, ssl=ssl, sock=sock, server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)

    async def connect_accepted_socket(self, protocol_factory, sock, *, ssl=None, ssl_handshake_timeout=None,
                                      ssl_shutdown_timeout=None):
        return await _connect.connect_accepted_socket(
            self, protocol_factory, sock, ssl=ssl, ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
