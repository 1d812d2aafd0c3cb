"""The ferroloop event loop: asyncio's API on the Rust engine.

Scheduling (``call_soon``, timers, ``call_soon_threadsafe``), the run loop,
file-descriptor watching and stream transports are the engine's
(``_ferroloop.LoopCore``); this class adapts them to
``asyncio.AbstractEventLoop``. Servers, connections, datagram endpoints and
pipes are ferroloop's own (``_network.py`` and the modules it calls), as are
the ``sock_*`` operations (``_sockops.py``); what only combines public
primitives (executors, ``run_until_complete``, ``start_tls`` with an
``ssl.SSLContext``, subprocesses) comes from
``asyncio.base_events.BaseEventLoop`` (docs/python-versions.md lists the
private asyncio names still touched). Python's selector loop is never used.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import signal
import socket
import sys
import threading
import time
import warnings

from asyncio import base_events, constants, coroutines, events, sslproto, unix_events

from . import _ferroloop
from ._network import NetworkMethods
from ._server import check_tls_side
from ._sockops import SocketOps
from ._timers import TimerMethods
from ._transports import ReadPipeTransport, StreamTransport, TLSTransport, WritePipeTransport

TLSContext = _ferroloop.TLSContext

_monotonic = time.monotonic

# Python 3.14+: call_soon_threadsafe's handle holds a lock while it runs, so
# that cancel() and cancelled() from another thread wait for a callback that
# has started (asyncio's events._ThreadSafeHandle).
_ThreadSafeHandle = getattr(events, "_ThreadSafeHandle", events.Handle)

# asyncio's own check, without 3.14's deprecation of the public name.
_iscoroutinefunction = getattr(coroutines, "_iscoroutinefunction", coroutines.iscoroutinefunction)

# Python 3.14+: asyncio's unix loop owns its child watcher (loop._watcher),
# asyncio's child watcher API having gone.
_LOOP_HAS_WATCHER = hasattr(unix_events, "_ThreadedChildWatcher")

__all__ = ("Loop",)


def _fileobj_to_fd(fileobj):
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _sighandler_noop(signum, frame):
    """Dummy signal handler: the wakeup fd does the work."""


def _format_handle(handle):
    """A slow callback as debug mode logs it: its task's repr for a task step."""
    owner = getattr(handle._callback, "__self__", None)
    return repr(owner) if isinstance(owner, asyncio.Task) else str(handle)


class Loop(TimerMethods, SocketOps, NetworkMethods, base_events.BaseEventLoop):
    """An asyncio event loop driven by the ferroloop engine."""

    def __init__(self):
        super().__init__()
        self._core = _ferroloop.LoopCore(self)
        self._core.set_debug(self._debug)
        self._bind_call_soon()
        self._init_timers()
        self._remote = self._core.remote()
        # fd -> its socket transport, for asyncio's "File descriptor ... is
        # used by transport" checks. A plain dict: the engine holds every
        # transport until its connection_lost anyway, after which the
        # transport's _finish() takes its entry out (a weak reference would
        # cost about 80 bytes per connection); close() empties it.
        self._transports = {}
        self._readers = {}
        self._writers = {}
        self._signal_handlers = {}
        self._sig_rsock = None
        self._sig_wsock = None
        if _LOOP_HAS_WATCHER:
            # Python 3.14+: the loop owns its child watcher, chosen as
            # asyncio's unix loop chooses it. A pidfd watcher stands for the
            # engine's own (a pidfd in the poll, see _make_subprocess_transport);
            # where pidfds cannot be used, asyncio's threaded watcher runs.
            if unix_events.can_use_pidfd():
                self._watcher = unix_events._PidfdChildWatcher()
            else:
                self._watcher = unix_events._ThreadedChildWatcher()

    def __repr__(self):
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # ----- time and scheduling -------------------------------------------

    def time(self):
        return _monotonic()

    _own_time = time

    def call_soon(self, callback, *args, context=None):
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_soon")
        handle = events.Handle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._core.call_soon(handle)
        return handle

    def _call_soon(self, callback, args, context):
        handle = events.Handle(callback, args, self, context)
        self._core.call_soon(handle)
        return handle

    def call_soon_threadsafe(self, callback, *args, context=None):
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        handle = _ThreadSafeHandle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        if _ThreadSafeHandle is not events.Handle and handle._source_traceback:
            # And _ThreadSafeHandle.__init__'s frame (asyncio drops it too).
            del handle._source_traceback[-1]
        # Engine calls are serialised by the GIL, so another thread may append
        # to the ready queue directly: FIFO order with call_soon, as asyncio.
        self._core.call_soon(handle)
        self._remote.wake()
        return handle

    def set_debug(self, enabled):
        super().set_debug(enabled)
        core = self.__dict__.get("_core")
        if core is not None:
            core.set_debug(bool(enabled))
            self._bind_call_soon()

    def _bind_call_soon(self):
        # The methods asyncio's C futures and tasks call per wake-up, bound
        # from the core into the instance dict (no Python frame per call),
        # unless a subclass overrides them. Outside debug mode, call_soon is
        # the core's: the handle is a Rust object with asyncio.Handle's
        # interface, run without Python frames. Debug mode keeps asyncio's
        # Handle (source traceback, slow-callback log).
        d = self.__dict__
        cls = type(self)
        core = self._core
        if self._debug or cls.call_soon is not Loop.call_soon:
            d.pop("call_soon", None)
        else:
            d["call_soon"] = core.bound_call_soon()
        # get_debug() answers the core's flag, which set_debug keeps equal to
        # self._debug; create_future() is Future(loop=self).
        if cls.get_debug is base_events.BaseEventLoop.get_debug and cls.set_debug is Loop.set_debug:
            d.setdefault("get_debug", core.get_debug)
        if cls.create_future is base_events.BaseEventLoop.create_future:
            d.setdefault("create_future", core.create_future)
        # create_task(): the core makes the task outside debug mode without a
        # task factory (see tasks.rs); else it calls asyncio's own method.
        if cls.create_task is base_events.BaseEventLoop.create_task:
            d.setdefault("create_task", core.create_task)
        # time() is time.monotonic() itself (a builtin: no frame per call;
        # servers read the loop's time per request for their timeouts).
        if cls.time is Loop.time:
            d.setdefault("time", _monotonic)

    def _run_debug(self, handle):
        """Run ``handle`` in debug mode: log it if slower than slow_callback_duration."""
        self._current_handle = handle
        try:
            t0 = self.time()
            handle._run()
            dt = self.time() - t0
            if dt >= self.slow_callback_duration:
                base_events.logger.warning(
                    "Executing %s took %.3f seconds", _format_handle(handle), dt
                )
        finally:
            self._current_handle = None
            # As asyncio's _run_once: a frame that an exception's traceback
            # keeps (through f_back) must not keep the handle, which would
            # keep its task, and the task that exception (a cycle).
            handle = None

    def _write_to_self(self):
        self._remote.wake()

    # ----- running ---------------------------------------------------------

    if hasattr(base_events.BaseEventLoop, "_run_forever_setup"):
        # Python 3.13+: asyncio's run_forever() with the engine as its loop,
        # between the set-up and clean-up hooks that subclasses override
        # (gh-110771). The set-up is outside the try, as in later 3.13
        # releases (gh-130145: a failed set-up, such as on a loop already
        # running, must not clean up the running loop's state).
        def run_forever(self):
            self._run_forever_setup()
            try:
                self._core.run_forever()
            finally:
                self._run_forever_cleanup()

    else:

        def run_forever(self):
            self._check_closed()
            self._check_running()
            self._set_coroutine_origin_tracking(self._debug)
            old_agen_hooks = sys.get_asyncgen_hooks()
            try:
                self._thread_id = threading.get_ident()
                sys.set_asyncgen_hooks(
                    firstiter=self._asyncgen_firstiter_hook,
                    finalizer=self._asyncgen_finalizer_hook,
                )
                events._set_running_loop(self)
                self._core.run_forever()
            finally:
                self._stopping = False
                self._thread_id = None
                events._set_running_loop(None)
                self._set_coroutine_origin_tracking(False)
                sys.set_asyncgen_hooks(*old_agen_hooks)

    def _run_once(self):
        self._core.run_once()

    def stop(self):
        self._stopping = True
        self._core.stop()

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on a non-main thread; "
                f"signal handlers were not removed",
                ResourceWarning,
                source=self,
            )
            self._signal_handlers.clear()
        if self._sig_rsock is not None:
            self._sig_rsock.close()
            self._sig_wsock.close()
            self._sig_rsock = self._sig_wsock = None
        super().close()
        self._readers.clear()
        self._writers.clear()
        self._transports.clear()
        self._core.close()

    # ----- file descriptors -------------------------------------------------

    def _ensure_fd_no_transport(self, fd):
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def _watch(self, table, core_add, fd, callback, args):
        """Install ``callback(*args)`` as the reader or writer of ``fd``
        (``table``: self._readers or self._writers); a replaced handle is
        cancelled, as the selector loop does."""
        self._check_closed()
        fd = _fileobj_to_fd(fd)
        handle = events.Handle(callback, args, self, None)
        old = table.get(fd)
        core_add(fd, handle)
        table[fd] = handle
        if old is not None:
            old.cancel()
        return handle

    def _unwatch(self, table, core_remove, fd):
        if self.is_closed():
            return False
        fd = _fileobj_to_fd(fd)
        handle = table.pop(fd, None)
        core_remove(fd)
        if handle is not None:
            handle.cancel()
            return True
        return False

    def _add_reader(self, fd, callback, *args):
        return self._watch(self._readers, self._core.add_reader, fd, callback, args)

    def _remove_reader(self, fd):
        return self._unwatch(self._readers, self._core.remove_reader, fd)

    def _add_writer(self, fd, callback, *args):
        return self._watch(self._writers, self._core.add_writer, fd, callback, args)

    def _remove_writer(self, fd):
        return self._unwatch(self._writers, self._core.remove_writer, fd)

    def add_reader(self, fd, callback, *args):
        """Call ``callback(*args)`` whenever ``fd`` is readable."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd):
        """Stop watching ``fd`` for reading; True if it was watched."""
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd, callback, *args):
        """Call ``callback(*args)`` whenever ``fd`` is writable."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd):
        """Stop watching ``fd`` for writing; True if it was watched."""
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # ----- transports ---------------------------------------------------------

    def _socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None, context=None):
        """The engine's stream transport on connected ``sock``; the protocol's
        callbacks run in ``context`` (a ``contextvars.Context``)."""
        return StreamTransport(self, sock, protocol, waiter, extra, server, context)

    def _ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
        context=None,
    ):
        """A TLS transport on connected ``rawsock``: the engine's (rustls)
        with a ``ferroloop.TLSContext``, else asyncio's SSLProtocol over the
        engine's stream transport."""
        if isinstance(sslcontext, TLSContext):
            # The fast path: the engine's TLS transport (rustls).
            check_tls_side(sslcontext, server_side)
            return TLSTransport(
                self,
                rawsock,
                protocol,
                sslcontext,
                waiter,
                extra,
                server,
                server_hostname,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
                run_context=context,
            )
        # With an ssl.SSLContext, TLS is asyncio's own SSLProtocol (a
        # BufferedProtocol) over the engine's stream transport.
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        StreamTransport(self, rawsock, ssl_protocol, None, extra, server, context)
        return ssl_protocol._app_transport

    # Named as asyncio's, so that a subclass (or a test) that replaces them
    # is used for the connections ferroloop makes; nothing in asyncio calls
    # them on this loop any more.
    _socket_transport._ferroloop_default = _ssl_transport._ferroloop_default = True
    _make_socket_transport = _socket_transport
    _make_ssl_transport = _ssl_transport

    async def start_tls(
        self,
        transport,
        protocol,
        sslcontext,
        *,
        server_side=False,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Upgrade ``transport`` to TLS. A ``ferroloop.TLSContext`` takes the
        engine's TLS transport; an ``ssl.SSLContext`` asyncio's SSLProtocol."""
        if not isinstance(sslcontext, TLSContext):
            return await super().start_tls(
                transport,
                protocol,
                sslcontext,
                server_side=server_side,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        if type(transport) is not StreamTransport:
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        check_tls_side(sslcontext, server_side)
        waiter = self.create_future()
        tls_transport = TLSTransport._upgrade(
            transport, protocol, sslcontext, waiter, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout
        )
        try:
            await waiter
        except BaseException:
            tls_transport.close()
            raise
        return tls_transport

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        from ._datagram import DatagramTransport

        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        # asyncio's own subprocess transport (subprocess.Popen, pipes through
        # connect_read_pipe/connect_write_pipe, i.e. the engine's pipe
        # transports); the child's exit comes from the engine's watcher (a
        # pidfd in the loop's poll), not from asyncio's child watcher: no
        # thread, no SIGCHLD handler, any thread may run the loop. (3.14+
        # where pidfds cannot be used: the loop's own asyncio watcher.)
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs
        )
        try:
            watcher = self._watcher if _LOOP_HAS_WATCHER else None
            if watcher is None or isinstance(watcher, unix_events._PidfdChildWatcher):
                self._core.watch_child(transp.get_pid(), functools.partial(self._child_exited, transp))
            else:
                watcher.add_child_handler(transp.get_pid(), self._child_watcher_callback, transp)
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _child_watcher_callback(self, pid, returncode, transp):
        # asyncio's threaded child watcher (3.14+) reaps on the loop's thread
        # and publishes at once.
        transp._process_exited(returncode)

    def _child_exited(self, transp, returncode):
        """The engine reaped ``transp``'s child (``returncode`` None: reaped
        elsewhere first, e.g. by ``Popen.poll()``)."""
        if returncode is None:
            proc = transp._proc
            returncode = proc.returncode if proc is not None else None
            if returncode is None:
                base_events.logger.warning(
                    "child process pid %d exit status already read:  will report returncode 255",
                    transp.get_pid(),
                )
                returncode = 255
        # As asyncio's watcher callback: skip one iteration, so that what the
        # pipes delivered meanwhile is handled first.
        self.call_soon(self.call_soon, transp._process_exited, returncode)

    # ----- signals ------------------------------------------------------------

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _read_signals(self):
        while True:
            try:
                data = self._sig_rsock.recv(4096)
            except InterruptedError:
                continue
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            for signum in data:
                handle = self._signal_handlers.get(signum)
                if handle is None:
                    continue
                if handle._cancelled:
                    self.remove_signal_handler(signum)
                else:
                    self._core.call_soon(handle)

    def add_signal_handler(self, sig, callback, *args):
        """Run ``callback(*args)`` on the loop when signal ``sig`` arrives."""
        if coroutines.iscoroutine(callback) or _iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if self._sig_rsock is None:
            self._sig_rsock, self._sig_wsock = socket.socketpair()
            self._sig_rsock.setblocking(False)
            self._sig_wsock.setblocking(False)
        try:
            # Raises ValueError outside the main thread.
            signal.set_wakeup_fd(self._sig_wsock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        if self._sig_rsock.fileno() not in self._readers:
            self._add_reader(self._sig_rsock.fileno(), self._read_signals)
        handle = events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError):
                    pass
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def remove_signal_handler(self, sig):
        """Remove the handler of ``sig``; True if there was one."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError):
                pass
        return True
