"""Differential test harness: every test runs on stock asyncio and on ferroloop.

The ``flavor`` fixture is parametrized with ``asyncio`` (the oracle: the stdlib
loop from ``asyncio.new_event_loop()`` under the default policy) and
``ferroloop``; ``loop`` is a fresh loop of that flavor. A test states what
asyncio does; the same assertions must hold on ferroloop.

A known ferroloop bug is marked with ``@ferroloop_bug("precise description")``
(from this module): the ferroloop run of that test becomes a strict xfail, the
asyncio run stays a normal test. Never weaken an assertion instead.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

import pytest

import ferroloop

# Seconds a single test may take (pytest-timeout), unless it says otherwise.
DEFAULT_TIMEOUT = 60

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


if sys.version_info >= (3, 14):
    # asyncio deprecates its policy API from 3.14 on: the harness uses the
    # non-deprecated private names, so that its own set-up warns nothing.
    from asyncio import events as _events, unix_events as _unix_events

    set_event_loop_policy = _events._set_event_loop_policy
    get_event_loop_policy = _events._get_event_loop_policy
    _STOCK_POLICY = _unix_events._DefaultEventLoopPolicy
else:
    set_event_loop_policy = asyncio.set_event_loop_policy
    get_event_loop_policy = asyncio.get_event_loop_policy
    _STOCK_POLICY = asyncio.DefaultEventLoopPolicy


class Flavor:
    """One event loop implementation under test."""

    def __init__(self, name, new_event_loop, run, policy_class, loop_class, runner_argv):
        self.name = name
        self.new_event_loop = new_event_loop
        self.run = run
        self.policy_class = policy_class
        self.loop_class = loop_class
        # argv prefix that runs a script with this flavor as the default loop
        self.runner_argv = runner_argv

    def install(self):
        set_event_loop_policy(self.policy_class())

    @property
    def is_ferroloop(self):
        return self.name == "ferroloop"

    def __repr__(self):
        return f"<Flavor {self.name}>"


# How a script runs with stock asyncio as its loop. From 3.14 on,
# asyncio.get_event_loop() makes no loop when none is set, so that the spec's
# examples (which call it at top level) cannot run as they are: the stock
# side then sets a new loop as current first, as `python -m ferroloop` does.
_STOCK_BOOTSTRAP = (
    "import asyncio, runpy, sys; loop = asyncio.new_event_loop(); asyncio.set_event_loop(loop); "
    "sys.argv = sys.argv[1:]\n"
    "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    if not loop.is_running() and not loop.is_closed(): loop.close()"
)
_STOCK_RUNNER = [sys.executable] if sys.version_info < (3, 14) else [sys.executable, "-c", _STOCK_BOOTSTRAP]


def _stock_new_event_loop():
    # The default policy, whatever a previous test installed.
    set_event_loop_policy(None)
    return asyncio.new_event_loop()


FLAVORS = {
    "asyncio": Flavor(
        "asyncio",
        _stock_new_event_loop,
        asyncio.run,
        _STOCK_POLICY,
        asyncio.SelectorEventLoop,
        _STOCK_RUNNER,
    ),
    "ferroloop": Flavor(
        "ferroloop",
        ferroloop.new_event_loop,
        ferroloop.run,
        ferroloop._EventLoopPolicy,
        ferroloop.Loop,
        [sys.executable, "-m", "ferroloop"],
    ),
}


def ferroloop_bug(reason, strict=True):
    """Mark a test whose ferroloop run fails because of a ferroloop bug.

    ``strict=False`` only for a failure that depends on timing (it cannot be
    made deterministic from the outside); a deterministic test of the same
    bug should carry the strict marker.
    """
    return pytest.mark.ferroloop_bug(reason=reason, strict=strict)


def asyncio_differs(reason, since, strict=True):
    """Mark a test whose stock-asyncio run fails from Python ``since`` (a
    version tuple) on, because stock asyncio changed there while ferroloop
    keeps the behaviour the test states: the asyncio run on those versions
    becomes a strict xfail, the ferroloop run stays a normal test.

    ``strict=False`` for a stock-asyncio bug of some releases that later
    patch releases fix."""
    return pytest.mark.asyncio_differs(reason=reason, since=since, strict=strict)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ferroloop_bug(reason): known ferroloop bug; the ferroloop run is a strict xfail",
    )
    config.addinivalue_line(
        "markers",
        "asyncio_differs(reason, since): stock asyncio differs from Python `since` on; its run is a strict xfail there",
    )
    config.addinivalue_line("markers", "timeout(seconds): pytest-timeout per-test limit")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        callspec = getattr(item, "callspec", None)
        differs = item.get_closest_marker("asyncio_differs")
        if differs is not None and callspec is not None and callspec.params.get("flavor") == "asyncio":
            if sys.version_info >= differs.kwargs["since"]:
                reason = differs.kwargs["reason"]
                strict = differs.kwargs.get("strict", True)
                item.add_marker(pytest.mark.xfail(strict=strict, reason=f"stock asyncio differs: {reason}"))
        bug = item.get_closest_marker("ferroloop_bug")
        if bug is None:
            continue
        if callspec is not None and callspec.params.get("flavor") == "ferroloop":
            reason = bug.kwargs.get("reason") or (bug.args[0] if bug.args else "")
            strict = bug.kwargs.get("strict", True)
            item.add_marker(pytest.mark.xfail(strict=strict, reason=f"ferroloop bug: {reason}"))


@pytest.fixture(params=list(FLAVORS), ids=list(FLAVORS))
def flavor(request):
    yield FLAVORS[request.param]
    set_event_loop_policy(None)


@pytest.fixture
def loop(flavor):
    lp = flavor.new_event_loop()
    yield lp
    if not lp.is_closed():
        if lp.is_running():  # pragma: no cover - a test left it running
            lp.stop()
        try:
            pending = asyncio.all_tasks(lp)
            for t in pending:
                t.cancel()
            if pending:
                lp.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            lp.run_until_complete(lp.shutdown_asyncgens())
        except Exception:
            pass
        lp.close()
    asyncio.set_event_loop(None)
    # Transports dropped by a test warn here, not in the next test.
    gc.collect()


def run(loop, coro, timeout=20):
    """Run ``coro`` on ``loop`` with a time limit, so a hang fails the test."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def tcp_pair(sndbuf=None, rcvbuf=None):
    """Two connected TCP sockets on 127.0.0.1 (blocking)."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        a = socket.socket()
        if sndbuf:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        a.connect(lsock.getsockname())
        b, _ = lsock.accept()
        if sndbuf:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return a, b


def run_isolated(flavor, body, timeout=DEFAULT_TIMEOUT - 10, gc_threshold=None):
    """Run ``body(loop)`` on a fresh ``flavor`` loop in a forked child process.

    For tests that can crash the interpreter (a segfault would end the whole
    pytest run): a failure in the child, or its death by a signal, fails the test
    in the parent with the child's traceback. ``gc_threshold`` (generation 0)
    makes the cyclic collector run often, so lifetime bugs show deterministically.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        report = b"ok"
        try:
            faulthandler.disable()  # the parent reports the signal
            if gc_threshold is not None:
                gc.set_threshold(gc_threshold, 5, 5)
            lp = flavor.new_event_loop()
            try:
                body(lp)
            finally:
                lp.close()
        except BaseException:
            report = traceback.format_exc().encode()
        try:
            view = memoryview(report)
            while view:
                view = view[os.write(wfd, view) :]
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"isolated test did not finish in {timeout}s")
            ready, _, _ = select.select([rfd], [], [], left)
            if ready:
                data = os.read(rfd, 65536)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise AssertionError(f"the test process was killed by {name} (crash in the loop under test)")
    report = b"".join(chunks).decode(errors="replace")
    if report != "ok":
        raise AssertionError("in the isolated test process:\n" + report)
