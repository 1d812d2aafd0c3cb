"""The loop's low-level socket operations (``sock_recv`` ... ``sock_accept``)
and native ``sendfile``: a mixin of ``ferroloop.Loop``, over its fd watching
(``add_reader``/``add_writer`` on the engine)."""

from __future__ import annotations

import errno
import io
import os
import socket

from asyncio import exceptions, unix_events

from ._resolve import check_ssl_socket, ensure_resolved

# Whether asyncio's native sock_sendfile leaves the file at the end of what it
# sent even when it sent nothing (newer 3.13 releases, 3.14+): its helper then takes no
# total_sent argument.
_SENDFILE_ALWAYS_SEEKS = (
    unix_events._UnixSelectorEventLoop._sock_sendfile_update_filepos.__code__.co_argcount == 3
)


class SocketOps:
    """``sock_*`` and sendfile of ``ferroloop.Loop``."""

    # ----- low-level socket operations --------------------------------------

    def _check_sock(self, sock):
        check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _wait_io(self, sock, writer, attempt):
        """Run ``attempt(fut)`` now and, while it raises BlockingIOError,
        again each time ``sock`` is ready; ``attempt`` completes ``fut``."""
        fut = self.create_future()

        def step():
            if fut.done():
                return True
            try:
                attempt(fut)
            except (BlockingIOError, InterruptedError):
                return False
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                fut.set_exception(exc)
            return True

        if not step():
            fd = sock.fileno()
            self._ensure_fd_no_transport(fd)
            if writer:
                handle = self._add_writer(fd, step)
                remove = self._remove_writer
            else:
                handle = self._add_reader(fd, step)
                remove = self._remove_reader

            def done(_fut, fd=fd, handle=handle, remove=remove):
                if not handle.cancelled():
                    remove(fd)

            fut.add_done_callback(done)
        return fut

    async def sock_recv(self, sock, n):
        self._check_sock(sock)
        return await self._wait_io(sock, False, lambda fut: fut.set_result(sock.recv(n)))

    async def sock_recv_into(self, sock, buf):
        self._check_sock(sock)
        return await self._wait_io(sock, False, lambda fut: fut.set_result(sock.recv_into(buf)))

    async def sock_recvfrom(self, sock, bufsize):
        self._check_sock(sock)
        return await self._wait_io(sock, False, lambda fut: fut.set_result(sock.recvfrom(bufsize)))

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        return await self._wait_io(sock, False, lambda fut: fut.set_result(sock.recvfrom_into(buf, nbytes)))

    async def sock_sendall(self, sock, data):
        self._check_sock(sock)
        view = memoryview(data)
        pos = [0]

        def attempt(fut):
            while pos[0] < len(view):
                pos[0] += sock.send(view[pos[0]:])
            fut.set_result(None)

        return await self._wait_io(sock, True, attempt)

    async def sock_sendto(self, sock, data, address):
        self._check_sock(sock)
        return await self._wait_io(sock, True, lambda fut: fut.set_result(sock.sendto(data, address)))

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        if sock.family == socket.AF_INET or sock.family == getattr(socket, "AF_INET6", None):
            resolved = await ensure_resolved(self, address, family=sock.family, type=sock.type, proto=sock.proto)
            _, _, _, _, address = resolved[0]
        started = [False]

        def attempt(fut):
            if not started[0]:
                started[0] = True
                sock.connect(address)
            else:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err != 0:
                    raise OSError(err, f"Connect call failed {address}")
            fut.set_result(None)

        fut = self._wait_io(sock, True, attempt)
        try:
            return await fut
        finally:
            fut = None

    async def sock_accept(self, sock):
        self._check_sock(sock)

        def attempt(fut):
            conn, address = sock.accept()
            conn.setblocking(False)
            fut.set_result((conn, address))

        return await self._wait_io(sock, False, attempt)

    # ----- sendfile -------------------------------------------------------------

    async def _sock_sendfile_native(self, sock, file, offset, count):
        """``os.sendfile`` from ``file`` to ``sock``, waiting for writability
        between chunks (zero-copy; BaseEventLoop.sock_sendfile falls back to
        read+send when this raises SendfileNotAvailableError)."""
        try:
            os.sendfile
        except AttributeError:
            raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # empty file
        fd = sock.fileno()
        state = {"offset": offset, "total": 0}

        def update_filepos():
            # As asyncio's: the file's position ends where sending stopped
            # (after a partial send, an error or a cancellation too).
            if _SENDFILE_ALWAYS_SEEKS or state["total"] > 0:
                os.lseek(fileno, state["offset"], os.SEEK_SET)

        def attempt(fut):
            while True:
                remaining = (count - state["total"]) if count else blocksize
                if remaining <= 0:
                    break
                try:
                    sent = os.sendfile(fd, fileno, state["offset"], remaining)
                except (BlockingIOError, InterruptedError):
                    raise
                except OSError as exc:
                    if state["total"] == 0 and exc.errno in (errno.ENOTSOCK, errno.ENOTCONN, errno.EINVAL) and not isinstance(exc, ConnectionError):
                        raise exceptions.SendfileNotAvailableError("os.sendfile call failed") from exc
                    raise
                if sent == 0:
                    break  # EOF
                state["offset"] += sent
                state["total"] += sent
            update_filepos()
            fut.set_result(state["total"])

        try:
            return await self._wait_io(sock, True, attempt)
        except BaseException:
            update_filepos()
            raise

    async def _sendfile_native(self, transp, file, offset, count):
        # The transport hands its socket to os.sendfile once its buffer is empty.
        self._transports.pop(transp._sock_fd, None)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            self._transports[transp._sock_fd] = transp
