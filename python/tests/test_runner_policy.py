"""asyncio.Runner(loop_factory=...), flavor.run() (ferroloop.run / asyncio.run), install(), policies."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import ferroloop
from conftest import REPO, get_event_loop_policy, set_event_loop_policy


def test_runner_with_loop_factory(flavor):
    async def main(x):
        await asyncio.sleep(0.001)
        return type(asyncio.get_running_loop()), x

    with asyncio.Runner(loop_factory=flavor.new_event_loop) as runner:
        lp = runner.get_loop()
        assert isinstance(lp, flavor.loop_class)
        assert runner.run(main(1)) == (type(lp), 1)
        # The same loop serves several run() calls.
        assert runner.run(main(2)) == (type(lp), 2)
        assert runner.get_loop() is lp
    assert lp.is_closed()


def test_runner_debug_and_context(flavor):
    var = contextvars.ContextVar("var", default="default")

    async def setter():
        var.set("set-by-first-run")
        return asyncio.get_running_loop().get_debug()

    async def getter():
        return var.get()

    with asyncio.Runner(loop_factory=flavor.new_event_loop, debug=True) as runner:
        assert runner.run(setter()) is True
        # Runner keeps one context across run() calls.
        assert runner.run(getter()) == "set-by-first-run"
    ctx = contextvars.copy_context()
    with asyncio.Runner(loop_factory=flavor.new_event_loop) as runner:
        assert runner.run(getter(), context=ctx) == "default"


def test_runner_cancels_leftover_tasks_and_closes_asyncgens(flavor):
    events = []

    async def background():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("background cancelled")
            raise

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("agen closed")

    gens = []

    async def main():
        asyncio.get_running_loop().create_task(background())
        g = agen()
        gens.append(g)
        await g.__anext__()
        await asyncio.sleep(0.01)
        return "done"

    assert flavor.run(main()) == "done"
    assert sorted(events) == ["agen closed", "background cancelled"]


def test_run_returns_and_raises(flavor):
    async def ok():
        return asyncio.get_running_loop()

    lp = flavor.run(ok())
    assert isinstance(lp, flavor.loop_class)
    assert lp.is_closed()

    async def bad():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        flavor.run(bad())


def test_run_debug(flavor):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert flavor.run(main(), debug=True) is True
    assert flavor.run(main(), debug=False) is False


def test_run_rejects_nested_call(flavor):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
                flavor.run(coro)
        finally:
            coro.close()

    flavor.run(main())


def test_install_makes_default(flavor):
    flavor.install()
    try:
        assert isinstance(get_event_loop_policy(), flavor.policy_class)
        lp = asyncio.new_event_loop()
        try:
            assert isinstance(lp, flavor.loop_class)
        finally:
            lp.close()

        async def main():
            return type(asyncio.get_running_loop())

        assert issubclass(asyncio.run(main()), flavor.loop_class)
    finally:
        set_event_loop_policy(None)
    # The default policy again: a stock loop.
    lp = asyncio.new_event_loop()
    try:
        assert type(lp) is asyncio.SelectorEventLoop
    finally:
        lp.close()


def test_policy_object(flavor):
    policy = flavor.policy_class()
    abstract = getattr(asyncio.events, "_AbstractEventLoopPolicy", None) or asyncio.events.AbstractEventLoopPolicy
    assert isinstance(policy, abstract)
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, flavor.loop_class)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        policy.set_event_loop(lp)
        assert policy.get_event_loop() is lp
    finally:
        policy.set_event_loop(None)
        lp.close()


def test_policy_get_event_loop_in_main_thread(flavor):
    """Before 3.14 the policy makes a loop for the main thread on demand;
    from 3.14 on it raises RuntimeError while none is set."""
    policy = flavor.policy_class()
    set_event_loop_policy(policy)
    try:
        if sys.version_info >= (3, 14):
            with pytest.raises(RuntimeError, match="There is no current event loop"):
                policy.get_event_loop()
            return
        lp = policy.get_event_loop()
        try:
            assert isinstance(lp, flavor.loop_class)
            assert policy.get_event_loop() is lp
        finally:
            lp.close()
            policy.set_event_loop(None)
    finally:
        set_event_loop_policy(None)


def test_ferroloop_module_api(flavor):
    # The package's public surface (the same on both params: it is ferroloop's).
    assert set(ferroloop.__all__) >= {"Loop", "EventLoopPolicy", "new_event_loop", "install", "run"}
    assert issubclass(ferroloop.Loop, asyncio.AbstractEventLoop)
    lp = flavor.new_event_loop()
    try:
        # Tests and libraries patch loop attributes.
        lp.some_attribute = 1
        assert lp.some_attribute == 1
    finally:
        lp.close()


MAIN_SCRIPT = textwrap.dedent(
    """
    import asyncio
    async def main():
        await asyncio.sleep(0)
        print(type(asyncio.get_running_loop()).__module__, type(asyncio.get_running_loop()).__name__)
    asyncio.run(main())
    loop = asyncio.new_event_loop()
    print(type(loop).__name__)
    loop.close()
    import sys
    print(sys.argv[1:])
    """
)


def test_python_dash_m(flavor, tmp_path):
    """``python -m ferroloop script.py args`` runs the script with ferroloop as default."""
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))
    proc = subprocess.run(
        flavor.runner_argv + [str(script), "a", "--b"], capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected_name = flavor.loop_class.__name__
    assert lines[0].split()[1] in (expected_name, "_UnixSelectorEventLoop")
    if flavor.is_ferroloop:
        assert lines[0] == "ferroloop._loop Loop"
        assert lines[1] == "Loop"
    else:
        assert lines[1] == "_UnixSelectorEventLoop"
    assert lines[2] == "['a', '--b']"


# ----------------------------------------------------------------------------- 3.14+: the policy way is deprecated

needs_3_14 = pytest.mark.skipif(sys.version_info < (3, 14), reason="asyncio deprecates policies from 3.14 on")


def _deprecations(caught):
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


@needs_3_14
def test_install_warns_its_own_deprecation_not_asyncios():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ferroloop.install()
    try:
        found = _deprecations(caught)
        assert len(found) == 1, [str(w.message) for w in found]
        message = str(found[0].message)
        assert "ferroloop.install()" in message
        assert "ferroloop.run" in message and "loop_factory=ferroloop.new_event_loop" in message
        assert found[0].filename == __file__  # stacklevel: the caller's line
        # Installed all the same: asyncio.new_event_loop() is ferroloop's.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lp = asyncio.new_event_loop()
            lp.close()
            assert asyncio.run(_loop_type()) is ferroloop.Loop
        assert type(lp) is ferroloop.Loop
        assert not _deprecations(caught), [str(w.message) for w in caught]
    finally:
        set_event_loop_policy(None)


@needs_3_14
def test_event_loop_policy_warns_its_own_deprecation_not_asyncios():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy_class = ferroloop.EventLoopPolicy
        policy = policy_class()
        lp = policy.new_event_loop()
        lp.close()
    found = _deprecations(caught)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    assert "ferroloop.EventLoopPolicy" in message and "ferroloop.run" in message
    assert found[0].filename == __file__
    assert type(lp) is ferroloop.Loop
    # from-import names it too.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from ferroloop import EventLoopPolicy  # noqa: F401
    found = _deprecations(caught)
    assert found and all("ferroloop.EventLoopPolicy" in str(w.message) for w in found)
    assert all(w.filename == __file__ for w in found)


async def _loop_type():
    return type(asyncio.get_running_loop())


@pytest.mark.parametrize("code", ["import ferroloop", "import ferroloop; ferroloop.run(asyncio.sleep(0))"])
def test_import_and_run_warn_nothing(code):
    """On every version: importing ferroloop and ferroloop.run() set off no
    warning (asyncio's policy deprecations included)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import asyncio; " + code], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode == 0, proc.stderr


EXAMPLE_STYLE_SCRIPT = textwrap.dedent(
    """
    import asyncio

    async def hello():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__name__

    # The older style: the current loop, run_until_complete.
    loop = asyncio.get_event_loop()
    print(type(loop).__name__, loop.run_until_complete(hello()))
    # asyncio.run() and asyncio.new_event_loop().
    print(asyncio.run(hello()))
    other = asyncio.new_event_loop()
    print(type(other).__name__)
    other.close()
    """
)


def test_python_dash_m_runs_scripts_verbatim_without_warnings(tmp_path):
    """``python -m ferroloop``: get_event_loop() (which from 3.14 on makes no
    loop when none is set) answers a ferroloop loop, asyncio.run() and
    new_event_loop() run on ferroloop; from 3.14 on with no deprecation
    warning from asyncio nor ferroloop (the script asked for no policy), the
    loop set as current closed after the script. (Before 3.14 the script's
    warnings are stock asyncio's: test_examples compares them.)"""
    script = tmp_path / "script.py"
    script.write_text(EXAMPLE_STYLE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))
    flags = ["-W", "error::DeprecationWarning", "-X", "dev"] if sys.version_info >= (3, 14) else []
    proc = subprocess.run(
        [sys.executable, *flags, "-m", "ferroloop", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["Loop Loop", "Loop", "Loop"]
    if sys.version_info >= (3, 14):
        # Dev mode shows ResourceWarnings: the loop set as current is closed.
        assert "unclosed" not in proc.stderr, proc.stderr
