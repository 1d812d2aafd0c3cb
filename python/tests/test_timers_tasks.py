"""Timers and tasks as asyncio makes them: call_at/call_later handles,
cancel, contexts, errors, debug-mode source tracebacks, create_task's
keywords, task factories and a closed loop. ferroloop makes them through
its own short paths outside debug mode; these tests hold both loops to
asyncio's behaviour on every version."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

from conftest import run

VAR = contextvars.ContextVar("VAR", default="outer")


def test_call_later_and_call_at_give_asyncio_timer_handles_in_order(loop):
    fired = []
    h1 = loop.call_later(0.02, fired.append, "later")
    h2 = loop.call_at(loop.time() + 0.01, fired.append, "at")
    h3 = loop.call_later(0.015, fired.append, "cancelled")
    assert all(isinstance(h, asyncio.TimerHandle) for h in (h1, h2, h3))
    assert type(h1).__name__ == "TimerHandle"
    assert h2.when() < h1.when()
    assert not h3.cancelled()
    h3.cancel()
    assert h3.cancelled()
    h3.cancel()  # a second cancel is a no-op
    assert "cancelled" in repr(h3) and "when=" in repr(h3)
    run(loop, asyncio.sleep(0.05))
    assert fired == ["at", "later"]
    assert "list.append" in repr(h1) or "append" in repr(h1)


def test_a_timer_runs_in_its_context_or_a_copy_of_the_current_one(loop):
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "given")

    async def main():
        VAR.set("caller")
        loop.call_later(0, lambda: seen.append(("copy", VAR.get())))
        loop.call_at(loop.time(), lambda: seen.append(("given", VAR.get())), context=ctx)
        VAR.set("changed after")
        await asyncio.sleep(0.01)

    run(loop, main())
    assert sorted(seen) == [("copy", "caller"), ("given", "given")]


def test_call_later_reads_the_loops_time_even_when_replaced_on_the_instance(loop):
    loop.time = lambda: 1000.0
    try:
        h = loop.call_later(1.5, print)
        assert h.when() == 1001.5
        h.cancel()
    finally:
        del loop.time
    assert abs(loop.time() - __import__("time").monotonic()) < 1.0


def test_timer_argument_errors_are_asyncios(loop):
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, print)
    with pytest.raises(TypeError):
        loop.call_later("1", print)


def test_timers_on_a_closed_loop_raise(flavor):
    lp = flavor.new_event_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.call_later(1, print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.call_at(1, print)


def test_debug_mode_source_traceback_ends_at_the_caller(loop):
    loop.set_debug(True)
    h = loop.call_later(10, print)
    h2 = loop.call_at(loop.time() + 10, print)
    try:
        assert h._source_traceback[-1].name == "test_debug_mode_source_traceback_ends_at_the_caller"
        assert h2._source_traceback[-1].name == "test_debug_mode_source_traceback_ends_at_the_caller"
    finally:
        h.cancel()
        h2.cancel()
        loop.set_debug(False)
    assert h._repr is not None  # debug mode keeps the repr of a cancelled handle


async def _value(v):
    return v


def test_create_task_takes_name_and_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "task context")

    async def read():
        return VAR.get()

    async def main():
        t1 = loop.create_task(_value(1), name="first")
        t2 = loop.create_task(read(), context=ctx)
        t3 = asyncio.create_task(_value(3))
        assert isinstance(t1, asyncio.Task) and t1.get_name() == "first"
        return await t1, await t2, await t3

    assert run(loop, main()) == (1, "task context", 3)


def test_create_task_outside_a_run_and_with_a_factory(loop):
    t = loop.create_task(_value(5))
    assert loop.run_until_complete(t) == 5
    made = []

    def factory(lp, coro, **kwargs):
        made.append(kwargs.get("name"))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    try:
        async def main():
            task = loop.create_task(_value(6), name="n")
            assert task.get_name() == "n"
            return await task

        assert run(loop, main()) == 6
    finally:
        loop.set_task_factory(None)
    assert made  # the factory made the tasks (3.11/3.12 name them after it returns)


def test_create_task_errors_are_asyncios(flavor):
    lp = flavor.new_event_loop()
    try:
        async def main():
            coro = _value(0)
            try:
                lp.create_task(coro, bogus=1)
            finally:
                coro.close()

        if sys.version_info >= (3, 14):
            # 3.14+ passes unknown keywords on to Task().
            with pytest.raises(TypeError, match="bogus"):
                lp.run_until_complete(main())
        else:
            with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
                lp.run_until_complete(main())
    finally:
        lp.close()
    coro = _value(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.create_task(coro)
    coro.close()
