"""The event loop API (scheduling, running, futures, handlers, fds, sockets, signals)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import REPO, asyncio_differs, run, tcp_pair

# ----------------------------------------------------------------------------- scheduling


def test_call_soon_fifo(loop):
    order = []
    for i in range(20):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == list(range(20))


def test_call_soon_returns_handle_with_args(loop):
    got = []
    h = loop.call_soon(lambda *a: got.append(a), 1, "two", None)
    assert isinstance(h, asyncio.Handle)
    assert not isinstance(h, asyncio.TimerHandle)
    assert not h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == [(1, "two", None)]


def test_call_soon_arguments_as_asyncio(loop):
    """call_soon(callback, *args, context=None): callback and context also
    as keywords; other keywords, a missing or doubled callback raise
    asyncio's TypeErrors; its signature is asyncio's."""
    import inspect

    assert str(inspect.signature(loop.call_soon)) == "(callback, *args, context=None)"
    got = []
    var = contextvars.ContextVar("var", default="outer")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")
    loop.call_soon(callback=lambda: got.append("kw"))
    loop.call_soon(lambda *a: got.append((a, var.get())), 1, 2, context=ctx)
    loop.call_soon(context=ctx, callback=lambda: got.append(var.get()))
    for bad, message in (
        (lambda: loop.call_soon(), "missing 1 required positional argument: 'callback'"),
        (lambda: loop.call_soon(print, callback=print), "got multiple values for argument 'callback'"),
        (lambda: loop.call_soon(print, ctx=ctx), "got an unexpected keyword argument 'ctx'"),
    ):
        with pytest.raises(TypeError) as ei:
            bad()
        assert str(ei.value).endswith(message)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == ["kw", ((1, 2), "inner"), "inner"]


def test_call_soon_from_callback_runs_next_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "nested")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    # "nested" was scheduled after stop(): it runs in the next run.
    assert order == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["first", "second", "nested"]


def test_call_soon_before_due_timer_scheduled_in_same_callback(loop):
    order = []

    def schedule():
        loop.call_later(0, order.append, "later(0)")
        loop.call_soon(order.append, "soon")
        loop.call_at(loop.time() - 1, order.append, "at(past)")

    loop.call_soon(schedule)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    # Ready callbacks first, then the due timers in deadline order.
    assert order == ["soon", "at(past)", "later(0)"]


def test_io_callbacks_before_due_timers(loop):
    """asyncio polls before each batch of ready callbacks and runs that
    poll's I/O callbacks after them: I/O a callback makes ready is handled
    after what that callback scheduled, and before what those schedule in
    turn. (uvloop runs ready callbacks before its poll: I/O first there.)"""
    r, w = socket.socketpair()
    r.setblocking(False)
    order = []
    try:
        loop.add_reader(r, lambda: (order.append("io"), r.recv(10)))

        def schedule():
            w.send(b"x")
            loop.call_later(0, order.append, "later(0)")
            loop.call_soon(soon)

        def soon():
            order.append("soon")
            loop.call_soon(order.append, "soon2")

        loop.call_soon(schedule)
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        loop.remove_reader(r)
    finally:
        r.close()
        w.close()
    assert order == ["soon", "io", "later(0)", "soon2"]


def test_due_timer_scheduled_with_stop_waits_for_next_run(loop):
    ran = []

    def cb():
        loop.call_later(0, ran.append, "timer")
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert ran == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["timer"]


def test_call_soon_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []

    def cb(tag):
        seen.append((tag, var.get()))
        var.set("changed-by-" + tag)

    loop.call_soon(cb, "explicit", context=ctx)
    loop.call_soon(cb, "explicit-again", context=ctx)
    loop.call_soon(cb, "implicit")
    # Without context=, the handle captures the context current at call time.
    ctx.run(loop.call_soon, cb, "captured")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen[0] == ("explicit", "in-ctx")
    # The same explicit context is shared: the first callback's set() is seen.
    assert seen[1] == ("explicit-again", "changed-by-explicit")
    assert seen[2] == ("implicit", "default")
    # The captured copy was taken before the callbacks ran.
    assert seen[3] == ("captured", "in-ctx")
    assert var.get() == "default"


class _RunOnlyContext:
    """Not a ``contextvars.Context``, but with its ``run()``: asyncio's
    Handle calls ``context.run(callback, *args)`` on whatever it was given."""

    def __init__(self):
        self.runs = []

    def run(self, callback, *args):
        self.runs.append(args)
        return callback(*args)


@pytest.mark.parametrize("debug", [False, True], ids=["", "debug"])
def test_context_that_is_not_a_context(loop, debug):
    """A ``context=`` that is not a ``contextvars.Context`` is no error at
    scheduling time: asyncio's Handle keeps it as given, and calls its
    ``run(callback, *args)`` when the handle runs. Without a ``run``, that is
    an AttributeError, which goes to the exception handler like any
    exception of the callback ("Exception in callback ..."), and the loop
    goes on. The same for call_soon, call_later, call_at and
    call_soon_threadsafe."""
    import inspect
    from asyncio import format_helpers

    loop.set_debug(debug)
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    ran = []
    handles = {
        "soon": loop.call_soon(ran.append, "soon", context=1),
        "later": loop.call_later(0, ran.append, "later", context=1),
        "at": loop.call_at(loop.time(), ran.append, "at", context=1),
        "threadsafe": loop.call_soon_threadsafe(ran.append, "threadsafe", context=1),
    }
    assert [h._context for h in handles.values()] == [1, 1, 1, 1]
    duck = _RunOnlyContext()
    loop.call_soon(ran.append, "duck", context=duck)
    loop.call_later(0, ran.append, "duck-later", context=duck)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(ran) == ["duck", "duck-later"]
    assert sorted(duck.runs) == [("duck",), ("duck-later",)]
    tags = {id(h): tag for tag, h in handles.items()}
    assert sorted(tags[id(ctx["handle"])] for ctx in errors) == sorted(handles)
    for ctx in errors:
        assert type(ctx["exception"]) is AttributeError
        assert str(ctx["exception"]) == "'int' object has no attribute 'run'"
        # Python 3.13 shows the arguments in debug mode only.
        shown = {"debug": debug} if "debug" in inspect.signature(format_helpers._format_callback_source).parameters else {}
        source = format_helpers._format_callback_source(ran.append, (tags[id(ctx["handle"])],), **shown)
        assert ctx["message"] == f"Exception in callback {source}"


def test_call_later_ordering_and_when(loop):
    order = []
    t0 = loop.time()
    h3 = loop.call_later(0.06, order.append, "c")
    h1 = loop.call_later(0.02, order.append, "a")
    h2 = loop.call_later(0.04, order.append, "b")
    for h in (h1, h2, h3):
        assert isinstance(h, asyncio.TimerHandle)
    assert t0 + 0.02 <= h1.when() <= loop.time() + 0.02
    assert h1.when() < h2.when() < h3.when()
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    assert order == ["a", "b", "c"]
    assert loop.time() - t0 >= 0.09


def test_timer_handle_repr_and_logged_context_as_asyncio(loop, caplog):
    # A timer handle prints as asyncio's TimerHandle: in its repr, and so in
    # the "handle: <TimerHandle when=... cb()>" line of the default
    # exception handler's log and the debug-mode slow-callback warning.
    def boom():
        raise ZeroDivisionError

    h = loop.call_later(10, print)
    assert type(h).__name__ == "TimerHandle"
    assert repr(h).startswith("<TimerHandle when=") and repr(h).endswith(" print()>"), repr(h)
    h.cancel()
    assert repr(h).startswith("<TimerHandle cancelled when="), repr(h)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_later(0.001, boom)
        loop.run_until_complete(asyncio.sleep(0.02))
    text = caplog.text
    assert "handle: <TimerHandle when=" in text, text


def test_handle_repr_info_as_asyncio(loop):
    """Handles have asyncio's ``_repr_info()`` (libraries call it to build
    their own reprs): the class name, "cancelled", "when=..." for a timer,
    and the callback with its arguments while not cancelled; the repr is
    those parts between angle brackets."""
    from asyncio import format_helpers

    def cb(*args):
        pass

    source = format_helpers._format_callback_source(cb, (1, "two"))
    h = loop.call_soon(cb, 1, "two")
    assert h._repr_info() == ["Handle", source]
    assert repr(h) == f"<Handle {source}>"
    h.cancel()
    assert h._repr_info() == ["Handle", "cancelled"]
    assert repr(h) == "<Handle cancelled>"
    t = loop.call_later(10, cb, 1, "two")
    assert t._repr_info() == ["TimerHandle", f"when={t.when()}", source]
    assert repr(t) == f"<TimerHandle when={t.when()} {source}>"
    t.cancel()
    assert t._repr_info() == ["TimerHandle", "cancelled", f"when={t.when()}"]
    assert repr(t) == f"<TimerHandle cancelled when={t.when()}>"


def test_call_at_when_and_not_early(loop):
    fired = []
    when = loop.time() + 0.05
    h = loop.call_at(when, lambda: fired.append(loop.time()))
    assert h.when() == when
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert len(fired) == 1
    assert fired[0] >= when - 0.001


def test_call_later_and_call_at_with_a_time_that_is_not_a_number(loop):
    """A delay or time that is not a number raises asyncio's TypeError at
    once, and schedules nothing: call_later() adds it to ``loop.time()``,
    and call_at() (stock asyncio: pushing its TimerHandle on the timer heap)
    compares it with the time of a pending timer. A numeric string is no
    number: asyncio never converts it."""
    ran = []
    with pytest.raises(TypeError, match="unsupported operand type"):
        loop.call_later("x", ran.append, "x")
    loop.call_later(10, ran.append, "pending")
    for when in ("x", "1", b"1"):
        with pytest.raises(TypeError, match=r"\bstr\b|\bbytes\b"):
            loop.call_at(when, ran.append, when)
    assert ran == []


def test_call_at_with_a_time_that_is_not_a_number_and_no_timer_pending(loop, flavor):
    """With no timer pending, stock asyncio's call_at("x") returns a
    TimerHandle (nothing compares its time yet) and the loop fails later:
    run_forever() raises the TypeError of comparing "x" with a number.
    uvloop raises at once (TypeError, from ``when - loop.time()``).

    ferroloop's choice: raise at once in every case, with the exception type
    asyncio raises (TypeError) and a message naming the argument ("when must
    be a real number, not str"); nothing is scheduled, so the loop runs on. Its engine keeps times as floats, so it could not
    keep "x" for later; and a time that cannot be compared is a bug best
    reported where it was made."""
    ran = []
    if flavor.is_ferroloop:
        with pytest.raises(TypeError, match=r"^when must be a real number, not str$"):
            loop.call_at("x", ran.append, "x")
        loop.call_soon(loop.stop)
        loop.run_forever()
    else:
        h = loop.call_at("x", ran.append, "x")
        assert isinstance(h, asyncio.TimerHandle)
        loop.call_soon(loop.stop)
        with pytest.raises(TypeError, match="not supported between instances of 'str' and 'float'"):
            loop.run_forever()
        h.cancel()
    assert ran == []


def test_call_later_zero_and_negative_delay(loop):
    order = []
    loop.call_later(-1, order.append, "neg")
    loop.call_later(0, order.append, "zero")
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(order) == ["neg", "zero"]


def test_time_is_monotonic(loop):
    a = loop.time()
    b = loop.time()
    assert b >= a
    assert abs(loop.time() - time.monotonic()) < 1.0


def test_cancel(loop):
    ran = []
    h = loop.call_soon(ran.append, "soon")
    t = loop.call_later(0.01, ran.append, "later")
    t2 = loop.call_at(loop.time() + 0.02, ran.append, "at")
    for x in (h, t, t2):
        assert not x.cancelled()
        x.cancel()
        assert x.cancelled()
        x.cancel()  # idempotent
        assert x.cancelled()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert ran == []


def test_cancel_timer_from_callback(loop):
    ran = []
    t = loop.call_later(0.03, ran.append, "cancelled")
    loop.call_later(0.01, t.cancel)
    loop.call_later(0.06, loop.stop)
    loop.run_forever()
    assert ran == []
    assert t.cancelled()


def test_many_timers_cancelled(loop):
    ran = []
    handles = [loop.call_later(0.001 * (i % 10), ran.append, i) for i in range(500)]
    for h in handles[::2]:
        h.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(ran) == list(range(1, 500, 2))


def test_call_soon_threadsafe(loop):
    fut = loop.create_future()
    main = threading.get_ident()
    seen = []

    def on_loop(value):
        seen.append(threading.get_ident())
        fut.set_result(value)

    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(on_loop, 42)

    th = threading.Thread(target=worker)
    th.start()
    assert run(loop, fut) == 42
    th.join()
    assert seen == [main]


def test_call_soon_threadsafe_many_threads(loop):
    n_threads, per_thread = 8, 200
    got = []
    done = loop.create_future()

    def on_loop(item):
        got.append(item)
        if len(got) == n_threads * per_thread and not done.done():
            done.set_result(None)

    def worker(t):
        for i in range(per_thread):
            loop.call_soon_threadsafe(on_loop, (t, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    run(loop, done)
    for th in threads:
        th.join()
    assert sorted(got) == [(t, i) for t in range(n_threads) for i in range(per_thread)]
    # Per thread, FIFO.
    for t in range(n_threads):
        assert [i for (tt, i) in got if tt == t] == list(range(per_thread))


def test_call_soon_threadsafe_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctx")
    fut = loop.create_future()
    threading.Thread(
        target=lambda: loop.call_soon_threadsafe(lambda: fut.set_result(var.get()), context=ctx)
    ).start()
    assert run(loop, fut) == "ctx"


def test_call_soon_threadsafe_source_traceback_ends_at_the_caller(loop):
    loop.set_debug(True)
    handle = loop.call_soon_threadsafe(print); line = sys._getframe().f_lineno  # noqa: E702
    handle.cancel()
    assert handle._source_traceback[-1][:3] == (__file__, line, "test_call_soon_threadsafe_source_traceback_ends_at_the_caller")


@pytest.mark.skipif(sys.version_info < (3, 14), reason="events._ThreadSafeHandle is 3.14+")
def test_call_soon_threadsafe_handle_locks_while_running(loop):
    """3.14+: call_soon_threadsafe returns an events._ThreadSafeHandle, whose
    cancel() from another thread waits for a callback already running."""
    from asyncio import events

    started, finished = threading.Event(), threading.Event()
    seen = []

    def callback():
        started.set()
        time.sleep(0.2)
        finished.set()

    def other_thread():
        handle = loop.call_soon_threadsafe(callback)
        seen.append(isinstance(handle, events._ThreadSafeHandle))
        started.wait(5)
        handle.cancel()
        seen.append(finished.is_set())
        loop.call_soon_threadsafe(loop.stop)

    th = threading.Thread(target=other_thread)
    th.start()
    loop.call_later(10, loop.stop)
    loop.run_forever()
    th.join()
    assert seen == [True, True]


# ----------------------------------------------------------------------------- running


def test_run_until_complete_result_and_exception(loop):
    async def ok():
        await asyncio.sleep(0)
        return "ok"

    async def bad():
        await asyncio.sleep(0)
        raise ValueError("boom")

    assert loop.run_until_complete(ok()) == "ok"
    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(bad())
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 7)
    assert loop.run_until_complete(fut) == 7


def test_is_running(loop):
    assert not loop.is_running()
    seen = []

    async def main():
        seen.append(loop.is_running())
        seen.append(asyncio.get_running_loop() is loop)

    loop.run_until_complete(main())
    assert seen == [True, True]
    assert not loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_stop_before_run_forever_runs_one_iteration(loop):
    ran = []
    loop.call_soon(ran.append, 1)
    loop.stop()
    loop.run_forever()
    assert ran == [1]
    assert not loop.is_running()


def test_stop_then_run_forever_again(loop):
    ran = []

    def cb():
        ran.append(len(ran))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    loop.call_soon(cb)
    loop.run_forever()
    assert ran == [0, 1]


@asyncio_differs(
    "3.13.0's run_forever() on a running loop raises, then its cleanup unsets the running loop, "
    "so the next run_until_complete() runs (CPython gh-130145, fixed in later patch releases)",
    since=(3, 13),
    strict=False,
)
def test_run_forever_while_running_and_close_while_running(loop):
    errors = []

    def inner():
        coro = asyncio.sleep(0)
        for f in (loop.run_forever, lambda: loop.run_until_complete(coro), loop.close):
            try:
                f()
            except RuntimeError as exc:
                errors.append(str(exc))
        coro.close()
        loop.stop()

    loop.call_soon(inner)
    loop.run_forever()
    assert errors[0] == "This event loop is already running"
    assert errors[1] == "This event loop is already running"
    assert errors[2] == "Cannot close a running event loop"
    assert not loop.is_closed()


@pytest.mark.skipif(
    not hasattr(asyncio.BaseEventLoop, "_run_forever_setup"), reason="the run_forever() hooks of Python 3.13"
)
def test_run_forever_calls_the_setup_and_cleanup_hooks(flavor):
    """Python 3.13 split run_forever() into ``_run_forever_setup()``, the
    loop, and ``_run_forever_cleanup()`` (gh-110771), for subclasses that
    run another event loop in between (GUI toolkits) or add to the set-up:
    run_forever() calls the hooks around the loop, run_until_complete() too,
    and the cleanup even when the run ends with an exception."""
    events = []

    class Loop(flavor.loop_class):
        def _run_forever_setup(self):
            events.append(("setup", self.is_running()))
            super()._run_forever_setup()
            events.append(("set up", self.is_running(), asyncio._get_running_loop() is self))

        def _run_forever_cleanup(self):
            events.append(("cleanup", self.is_running()))
            super()._run_forever_cleanup()
            events.append(("cleaned up", self.is_running(), asyncio._get_running_loop()))

    lp = Loop()
    try:
        lp.call_soon(lambda: events.append("callback"))
        lp.call_soon(lp.stop)
        lp.run_forever()
        assert events == [
            ("setup", False),
            ("set up", True, True),
            "callback",
            ("cleanup", True),
            ("cleaned up", False, None),
        ]
        del events[:]

        def boom():
            raise KeyboardInterrupt

        lp.call_soon(boom)
        with pytest.raises(KeyboardInterrupt):
            lp.run_forever()
        assert events == [("setup", False), ("set up", True, True), ("cleanup", True), ("cleaned up", False, None)]
        del events[:]
        assert lp.run_until_complete(asyncio.sleep(0, "done")) == "done"
        assert events[0] == ("setup", False) and events[-1] == ("cleaned up", False, None)
    finally:
        lp.close()


def test_close(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon_threadsafe(print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_until_complete(coro)
    coro.close()



def _open_fds():
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fds.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:  # the descriptor listdir itself used
            pass
    return fds


def test_close_releases_the_loops_descriptors(flavor):
    """close() releases the loop's own descriptors at once (asyncio: its
    selector and self-pipe; ferroloop: the epoll instance, its second handle
    and the waker's eventfd), even while the loop object stays referenced
    (a reference cycle, e.g. anyio.run's runner, keeps it until the GC runs)."""
    before = _open_fds()
    lp = flavor.new_event_loop()
    try:
        lp.run_until_complete(asyncio.sleep(0))
        assert _open_fds() - before  # a loop holds descriptors while open
    finally:
        lp.close()
    # Still referenced here: close() itself must have released them.
    assert _open_fds() - before == set()
    del lp


def test_run_until_complete_with_other_loops_future(loop, flavor):
    other = flavor.new_event_loop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError, match="The future belongs to a different loop"):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_stopped_early(loop):
    async def forever():
        await asyncio.sleep(10)

    loop.call_later(0.02, loop.stop)
    task = loop.create_task(forever())
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(task)
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))


# ----------------------------------------------------------------------------- futures and tasks


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    loop.call_soon(fut.set_result, "x")
    assert loop.run_until_complete(fut) == "x"


def test_create_task(loop):
    async def coro(x):
        await asyncio.sleep(0.01)
        return x * 2

    task = loop.create_task(coro(21), name="my-task")
    assert isinstance(task, asyncio.Task)
    assert task.get_name() == "my-task"
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 42


def test_create_task_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctx")

    async def coro():
        return var.get()

    task = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(task) == "ctx"


def test_task_cancel(loop):
    started = loop.create_future()

    async def sleeper():
        started.set_result(None)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "cancelled"

    task = loop.create_task(sleeper())
    loop.run_until_complete(started)
    task.cancel()
    assert loop.run_until_complete(task) == "cancelled"


def test_set_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(lp)
        task = asyncio.Task(coro, loop=lp, **kwargs)
        task.custom = True
        return task

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def main():
        return 5

    task = loop.create_task(main())
    assert task.custom
    assert loop.run_until_complete(task) == 5
    assert calls and calls[0] is loop
    with pytest.raises(TypeError):
        loop.set_task_factory(42)
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_gather_and_wait_for(loop):
    async def work(i):
        await asyncio.sleep(0.001 * i)
        return i

    async def main():
        res = await asyncio.gather(*(work(i) for i in range(20)))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.02)
        return res

    assert loop.run_until_complete(main()) == list(range(20))


# ----------------------------------------------------------------------------- exception handler


def test_exception_handler_set_get_call(loop):
    assert loop.get_exception_handler() is None
    calls = []

    def handler(lp, context):
        calls.append((lp, context))

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    ctx = {"message": "hello", "extra": 1}
    loop.call_exception_handler(ctx)
    assert len(calls) == 1
    assert calls[0][0] is loop
    assert calls[0][1]["message"] == "hello"
    assert calls[0][1]["extra"] == 1
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_exception_in_callback_reaches_handler_and_loop_continues(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    ran = []

    def bad():
        raise ZeroDivisionError("bad callback")

    loop.call_soon(bad)
    loop.call_soon(ran.append, "after")
    loop.call_later(0.01, bad)
    loop.call_later(0.02, ran.append, "after-timer")
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert ran == ["after", "after-timer"]
    assert len(calls) == 2
    for ctx in calls:
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["message"].startswith("Exception in callback ")
        assert "handle" in ctx


def test_exception_in_threadsafe_callback_reaches_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    def bad():
        raise KeyError("threadsafe")

    fut = loop.create_future()
    threading.Thread(target=lambda: (loop.call_soon_threadsafe(bad), loop.call_soon_threadsafe(fut.set_result, 1))).start()
    run(loop, fut)
    assert len(calls) == 1
    assert isinstance(calls[0]["exception"], KeyError)


def test_default_exception_handler_logs(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        raise ValueError("logged")
    except ValueError as e:
        exc = e
    loop.call_exception_handler({"message": "custom message", "exception": exc})
    assert any(
        r.getMessage().startswith("custom message") and r.exc_info and r.exc_info[1] is exc for r in caplog.records
    )
    caplog.clear()
    loop.default_exception_handler({"message": "direct"})
    assert [r.getMessage() for r in caplog.records] == ["direct"]


def test_default_exception_handler_from_custom(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")

    def handler(lp, ctx):
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and msgs[0].startswith("Exception in callback")


def test_exception_handler_that_raises(loop, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")

    def handler(lp, ctx):
        raise RuntimeError("handler failed")

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    ran = []
    loop.call_soon(ran.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == [1]
    assert any("Unhandled error in exception handler" in r.getMessage() for r in caplog.records)


def test_unretrieved_task_exception_reaches_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    async def bad():
        raise ValueError("never retrieved")

    async def main():
        t = loop.create_task(bad())
        await asyncio.sleep(0.01)
        del t

    loop.run_until_complete(main())
    import gc

    gc.collect()
    assert any(isinstance(c.get("exception"), ValueError) for c in calls)
    assert any(c["message"] == "Task exception was never retrieved" for c in calls)


# ----------------------------------------------------------------------------- debug


def test_debug_flag(loop):
    loop.set_debug(False)
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.parametrize("task_class", ["_CTask", "_PyTask"])
@pytest.mark.parametrize("debug", [False, True])
def test_unretrieved_task_exception_reported_once_the_task_is_done(loop, debug, task_class):
    """A task that failed and that nothing references is freed once its last
    step ran, in debug mode too: "Task exception was never retrieved" reaches
    the exception handler before the next step of another task (no reference
    cycle through the traceback's frames). From Python 3.12 the handler runs
    in the task's context (gh-96704)."""
    loop.set_debug(debug)
    name = contextvars.ContextVar("name", default="outside")
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append((ctx["message"], name.get())))

    async def failing():
        name.set("in the task")
        1 / 0

    async def main():
        getattr(asyncio.tasks, task_class)(failing())
        await asyncio.sleep(0)
        return list(seen)

    expected = "in the task" if sys.version_info >= (3, 12) else "outside"
    assert run(loop, main()) == [("Task exception was never retrieved", expected)]


def test_debug_non_threadsafe_call_raises(loop):
    loop.set_debug(True)
    errors = []

    def in_loop():
        def other_thread():
            try:
                loop.call_soon(print)
            except RuntimeError as exc:
                errors.append(str(exc))

        th = threading.Thread(target=other_thread)
        th.start()
        th.join()
        loop.stop()

    loop.call_soon(in_loop)
    loop.run_forever()
    assert len(errors) == 1
    assert "Non-thread-safe operation invoked on an event loop other than the current one" in errors[0]


def test_debug_call_soon_with_coroutine_function_raises(loop):
    loop.set_debug(True)

    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
        loop.call_soon(coro)
    with pytest.raises(TypeError, match="coroutines cannot be used with call_at"):
        loop.call_later(1, coro)


# ----------------------------------------------------------------------------- asyncgens, executors


def test_shutdown_asyncgens(loop):
    events = []

    async def agen():
        try:
            events.append("start")
            yield 1
            yield 2
        finally:
            events.append("finally")

    g = agen()

    async def main():
        assert await g.__anext__() == 1

    loop.run_until_complete(main())
    assert events == ["start"]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == ["start", "finally"]


def test_asyncgen_finalized_on_gc(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("finally")

    async def main():
        g = agen()
        await g.__anext__()
        del g
        import gc

        gc.collect()
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    assert events == ["finally"]


def test_run_in_executor_default(loop):
    main = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident()

    fut = loop.run_in_executor(None, work, 2, 3)
    assert isinstance(fut, asyncio.Future)
    res, tid = run(loop, fut)
    assert res == 5
    assert tid != main


def test_run_in_executor_custom_and_exception(loop):
    def bad():
        raise OSError(5, "io")

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        assert run(loop, loop.run_in_executor(ex, pow, 2, 10)) == 1024
        with pytest.raises(OSError):
            run(loop, loop.run_in_executor(ex, bad))


def test_set_default_executor_and_shutdown(loop):
    ex = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(ex)
    assert run(loop, loop.run_in_executor(None, lambda: "x")) == "x"
    run(loop, loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        ex.submit(print)


def test_shutdown_default_executor(loop):
    run(loop, loop.run_in_executor(None, time.sleep, 0.01))
    run(loop, loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, print)


def test_to_thread(loop):
    async def main():
        return await asyncio.to_thread(lambda x: x * 3, 5)

    assert run(loop, main()) == 15


# ----------------------------------------------------------------------------- DNS


def test_getaddrinfo(loop):
    got = run(loop, loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM))
    assert got == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    got = run(loop, loop.getaddrinfo("localhost", "http", family=socket.AF_INET, proto=socket.IPPROTO_TCP))
    assert got == socket.getaddrinfo("localhost", "http", family=socket.AF_INET, proto=socket.IPPROTO_TCP)


def test_getaddrinfo_error(loop):
    with pytest.raises(socket.gaierror):
        run(loop, loop.getaddrinfo("no-such-host.invalid", 80))


def test_getnameinfo(loop):
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert run(loop, loop.getnameinfo(("127.0.0.1", 80), flags)) == ("127.0.0.1", "80")
    assert run(loop, loop.getnameinfo(("127.0.0.1", 80))) == socket.getnameinfo(("127.0.0.1", 80), 0)


# ----------------------------------------------------------------------------- readers and writers


def test_add_remove_reader(loop):
    r, w = socket.socketpair()
    r.setblocking(False)
    try:
        got = []

        def on_read(tag):
            data = r.recv(100)
            got.append((tag, data))
            if len(got) == 2:
                loop.stop()

        assert loop.remove_reader(r.fileno()) is False
        loop.add_reader(r.fileno(), on_read, "t")
        loop.call_soon(w.send, b"one")
        loop.call_later(0.02, w.send, b"two")
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert got == [("t", b"one"), ("t", b"two")]
        assert loop.remove_reader(r.fileno()) is True
        assert loop.remove_reader(r.fileno()) is False
        # Removed: no more calls.
        w.send(b"three")
        loop.call_later(0.03, loop.stop)
        loop.run_forever()
        assert len(got) == 2
    finally:
        r.close()
        w.close()


def test_add_reader_with_file_object_and_replace(loop):
    r, w = socket.socketpair()
    r.setblocking(False)
    try:
        got = []

        def first():
            got.append("first")

        def second():
            got.append(("second", r.recv(10)))
            loop.stop()

        loop.add_reader(r, first)
        loop.add_reader(r, second)  # replaces the first
        w.send(b"x")
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert got == [("second", b"x")]
        assert loop.remove_reader(r) is True
    finally:
        r.close()
        w.close()


def test_add_remove_writer(loop):
    r, w = socket.socketpair()
    w.setblocking(False)
    try:
        calls = []

        def on_write():
            calls.append(1)
            loop.remove_writer(w.fileno())
            loop.stop()

        assert loop.remove_writer(w.fileno()) is False
        loop.add_writer(w.fileno(), on_write)
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert calls == [1]
        assert loop.remove_writer(w.fileno()) is False
        loop.add_writer(w, on_write)
        assert loop.remove_writer(w) is True
        assert loop.remove_writer(w) is False
    finally:
        r.close()
        w.close()


def test_writer_called_repeatedly_while_writable(loop):
    r, w = socket.socketpair()
    w.setblocking(False)
    try:
        calls = []

        def on_write():
            calls.append(1)
            if len(calls) == 3:
                loop.remove_writer(w)
                loop.stop()

        loop.add_writer(w, on_write)
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert len(calls) == 3
    finally:
        r.close()
        w.close()


def test_reader_writer_invalid_fd(loop):
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError):
        loop.add_reader(object(), print)
    with pytest.raises(ValueError):
        loop.remove_writer("x")


def test_add_reader_on_transport_fd_refused(loop):
    a, b = tcp_pair()

    async def main():
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(a.fileno(), print)
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_writer(a.fileno(), print)
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.remove_reader(a.fileno())
        finally:
            tr.close()
            await asyncio.sleep(0.01)

    run(loop, main())
    b.close()


# ----------------------------------------------------------------------------- sock_* coroutines


def test_sock_accept_connect_sendall_recv(loop):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    payload = os.urandom(1 << 20)

    async def main():
        accept = loop.create_task(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        conn, addr = await accept
        assert addr == client.getsockname()
        assert conn.gettimeout() == 0  # non-blocking

        async def reader():
            chunks = []
            total = 0
            while total < len(payload):
                data = await loop.sock_recv(conn, 65536)
                assert data
                chunks.append(data)
                total += len(data)
            return b"".join(chunks)

        rtask = loop.create_task(reader())
        assert await loop.sock_sendall(client, payload) is None
        got = await rtask
        assert got == payload
        # recv_into
        buf = bytearray(10)
        await loop.sock_sendall(conn, b"hello")
        n = await loop.sock_recv_into(client, buf)
        assert buf[:n] == b"hello"
        # EOF
        client.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(conn, 10) == b""
        conn.close()

    try:
        run(loop, main())
    finally:
        client.close()
        listener.close()


def test_sock_recv_waits_for_data(loop):
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.05)
        assert not task.done()
        b.send(b"late")
        return await task

    try:
        assert run(loop, main()) == b"late"
    finally:
        a.close()
        b.close()


def test_sock_recv_cancel(loop):
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The socket is usable again afterwards.
        b.send(b"again")
        return await loop.sock_recv(a, 100)

    try:
        assert run(loop, main()) == b"again"
    finally:
        a.close()
        b.close()


def test_sock_connect_refused(loop):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        addr = probe.getsockname()
    s = socket.socket()
    s.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError) as ei:
            run(loop, loop.sock_connect(s, addr))
        assert ei.value.errno == 111
    finally:
        s.close()


def test_sock_recvfrom_sendto(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        task = loop.create_task(loop.sock_recvfrom(a, 100))
        await asyncio.sleep(0.01)
        await loop.sock_sendto(b, b"dgram", a.getsockname())
        data, addr = await task
        assert data == b"dgram"
        assert addr == b.getsockname()
        buf = bytearray(100)
        t2 = loop.create_task(loop.sock_recvfrom_into(a, buf))
        await loop.sock_sendto(b, b"into", a.getsockname())
        n, addr = await t2
        assert buf[:n] == b"into"

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- signals


def test_add_signal_handler(loop):
    got = []

    def handler(*args):
        got.append(args)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "arg")
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert got == [("arg",)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_wakes_loop_blocked_in_poll(loop):
    got = []

    def handler():
        got.append(loop.time())
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR2, handler)
    t0 = loop.time()
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR2)).start()
    loop.call_later(5, loop.stop)  # the loop would sleep until then
    loop.run_forever()
    assert len(got) == 1
    assert got[0] - t0 < 2.0
    loop.remove_signal_handler(signal.SIGUSR2)


def test_signal_handler_replaced_and_removed_on_close(flavor):
    lp = flavor.new_event_loop()
    got = []
    lp.add_signal_handler(signal.SIGUSR1, got.append, "first")
    lp.add_signal_handler(signal.SIGUSR1, got.append, "second")
    lp.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    lp.call_later(0.1, lp.stop)
    lp.run_forever()
    assert got == ["second"]
    lp.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_errors(loop):
    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGUSR1", print)
    with pytest.raises(ValueError):
        loop.add_signal_handler(10000, print)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(ValueError):
        loop.remove_signal_handler(10000)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signal_handler_outside_main_thread(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert len(errors) == 1
    assert type(errors[0]) is RuntimeError, repr(errors[0])
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


# ----------------------------------------------------------------------------- threads


def test_loop_created_in_one_thread_runs_in_another(loop):
    # The common "background loop thread" pattern.
    results = []

    def worker():
        try:
            asyncio.set_event_loop(loop)
            results.append(loop.run_until_complete(asyncio.sleep(0.01, result="ran")))
        except BaseException as exc:
            results.append(exc)

    th = threading.Thread(target=worker)
    th.start()
    th.join(10)
    assert results == ["ran"]


def test_background_loop_thread_with_run_coroutine_threadsafe(loop):
    errors = []

    def worker():
        try:
            loop.run_forever()
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=worker)
    th.start()

    async def double(x):
        await asyncio.sleep(0.01)
        return 2 * x

    try:
        th.join(0.1)
        assert errors == []
        assert th.is_alive()
        fut = asyncio.run_coroutine_threadsafe(double(21), loop)
        assert fut.result(10) == 42
    finally:
        if th.is_alive():
            loop.call_soon_threadsafe(loop.stop)
        th.join(10)
    assert errors == []
    assert not th.is_alive()


def test_call_soon_from_other_thread_without_debug(loop):
    errors = []

    def worker():
        try:
            loop.call_soon(ran.append, "soon")
            loop.call_later(0.01, ran.append, "later")
        except BaseException as exc:
            errors.append(exc)

    ran = []
    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert errors == []
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert ran == ["soon", "later"]


def test_time_from_other_thread(loop):
    got = []
    th = threading.Thread(target=lambda: got.append(loop.time()))
    th.start()
    th.join()
    assert abs(got[0] - loop.time()) < 1.0


def _default_sigint():
    # A background job of a non-interactive shell starts with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: restore the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading, time
    sys.path.insert(0, {repo_python!r})
    import ferroloop
    flavor = sys.argv[1]
    mode = sys.argv[2]
    new_loop = ferroloop.new_event_loop if flavor == "ferroloop" else asyncio.new_event_loop
    loop = new_loop()
    print(type(loop).__name__, flush=True)
    def kill():
        os.kill(os.getpid(), signal.SIGINT)
    if mode == "from-thread":
        # The loop is blocked in poll (its next timer is far away).
        threading.Timer(0.2, kill).start()
        loop.call_later(30, loop.stop)
    elif mode == "from-callback":
        loop.call_later(0.05, kill)
        loop.call_later(30, loop.stop)
    elif mode == "busy":
        # Python code keeps running on the loop: callbacks reschedule themselves.
        def spin():
            loop.call_soon(spin)
        loop.call_soon(spin)
        threading.Timer(0.2, kill).start()
        loop.call_later(30, loop.stop)
    try:
        if mode == "run_until_complete":
            threading.Timer(0.2, kill).start()
            loop.run_until_complete(asyncio.sleep(30))
        else:
            loop.run_forever()
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    else:
        print("no interrupt", flush=True)
    print("running:", loop.is_running(), flush=True)
    loop.close()
    print("closed", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["from-thread", "from-callback", "busy", "run_until_complete"])
def test_ctrl_c_raises_keyboard_interrupt(flavor, mode, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT.format(repo_python=os.path.join(REPO, "python")))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), flavor.name, mode],
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=_default_sigint,
    )
    elapsed = time.monotonic() - t0
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[1:] == ["KeyboardInterrupt", "running: False", "closed"], proc.stdout + proc.stderr
    assert elapsed < 10


RUNNER_CTRL_C_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading
    sys.path.insert(0, {repo_python!r})
    import ferroloop
    flavor = sys.argv[1]
    run = ferroloop.run if flavor == "ferroloop" else asyncio.run
    async def main():
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            print("main cancelled", flush=True)
            raise
    try:
        run(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    """
)


def test_ctrl_c_in_runner_cancels_main_task(flavor, tmp_path):
    script = tmp_path / "runner_ctrl_c.py"
    script.write_text(RUNNER_CTRL_C_SCRIPT.format(repo_python=os.path.join(REPO, "python")))
    proc = subprocess.run(
        [sys.executable, str(script), flavor.name],
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=_default_sigint,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["main cancelled", "KeyboardInterrupt"], proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- edge cases


def test_huge_and_infinite_delays(loop):
    h1 = loop.call_later(1e10, print)
    h2 = loop.call_at(float("inf"), print)
    assert h1.when() > loop.time() + 1e9
    assert h2.when() == float("inf")
    ran = []
    loop.call_later(0.01, ran.append, "short")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()  # the far timers neither fire nor block the near ones
    assert ran == ["short"]
    h1.cancel()
    h2.cancel()


def test_reader_and_writer_on_same_fd(loop):
    r, w = socket.socketpair()
    r.setblocking(False)
    try:
        events = []

        def on_read():
            events.append(("r", r.recv(10)))

        def on_write():
            events.append("w")
            assert loop.remove_writer(r) is True

        loop.add_reader(r, on_read)
        loop.add_writer(r, on_write)
        w.send(b"x")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        assert events.count("w") == 1
        assert ("r", b"x") in events
        # The reader survived the writer's removal.
        w.send(b"y")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        assert events[-1] == ("r", b"y")
        assert loop.remove_reader(r) is True
    finally:
        r.close()
        w.close()


def test_exception_in_reader_callback_reaches_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    r, w = socket.socketpair()
    r.setblocking(False)
    try:

        def on_read():
            r.recv(10)
            raise KeyError("reader failed")

        loop.add_reader(r, on_read)
        w.send(b"x")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        loop.remove_reader(r)
    finally:
        r.close()
        w.close()
    assert len(calls) == 1
    assert isinstance(calls[0]["exception"], KeyError)
    assert calls[0]["message"].startswith("Exception in callback ")


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_callback_ends_run_and_loop_is_reusable(loop, exc_type):
    ran = []

    def boom():
        raise exc_type("out")

    loop.call_soon(boom)
    loop.call_soon(ran.append, "same batch")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_exception_in_signal_handler_reaches_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))

    def bad():
        raise ValueError("in signal handler")

    loop.add_signal_handler(signal.SIGUSR1, bad)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    loop.remove_signal_handler(signal.SIGUSR1)
    assert len(calls) == 1
    assert isinstance(calls[0]["exception"], ValueError)


def test_sigint_handler_replaces_keyboard_interrupt(loop):
    got = []
    loop.add_signal_handler(signal.SIGINT, got.append, "handled")
    loop.call_soon(os.kill, os.getpid(), signal.SIGINT)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert got == ["handled"]
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_debug_logs_slow_callbacks(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def slow():
        time.sleep(0.08)

    async def slow_coro():
        time.sleep(0.08)

    loop.call_soon(slow)
    loop.call_later(0.001, slow)
    loop.run_until_complete(slow_coro())
    loop.call_soon(loop.stop)
    loop.run_forever()
    slow_msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Executing <")]
    assert len(slow_msgs) == 3, slow_msgs
    assert all(" took " in m and m.endswith(" seconds") for m in slow_msgs)
    assert sum("slow()" in m for m in slow_msgs) == 2
    assert sum("slow_coro()" in m for m in slow_msgs) == 1
