"""pytest-asyncio (1.4+) running its tests on ferroloop through its
`pytest_asyncio_loop_factories` hook, in a pytest of its own (a subprocess,
so that the hook is found and run the way a project's conftest.py has it):
async tests and an async fixture on function- and module-scoped loops see
ferroloop's loop and do real I/O on it. Without the hook, the same tests run
on asyncio's own loop: the hook is what makes the difference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest_asyncio_plugin = pytest.importorskip("pytest_asyncio.plugin")
if not hasattr(getattr(pytest_asyncio_plugin, "PytestAsyncioSpecs", None), "pytest_asyncio_loop_factories"):
    pytest.skip("this pytest-asyncio has no pytest_asyncio_loop_factories hook (1.4+)", allow_module_level=True)

PYTEST_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

# A project's conftest.py: the one hook.
CONFTEST = """\
import ferroloop


def pytest_asyncio_loop_factories(config, item):
    return {"ferroloop": ferroloop.new_event_loop}
"""

TESTS = '''\
import asyncio
import json
import os

import pytest
import pytest_asyncio


def record(name):
    loop = asyncio.get_running_loop()
    with open(os.environ["LOOP_RECORD"], "a") as f:
        f.write(json.dumps([name, type(loop).__module__, type(loop).__qualname__, id(loop)]) + "\\n")


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest_asyncio.fixture
async def echo_server():
    record("fixture")
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_echo(echo_server):
    record("test_echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_server)
    payload = bytes(range(256)) * 4096
    writer.write(payload)
    writer.write_eof()
    assert await reader.read() == payload
    writer.close()
    await writer.wait_closed()


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_first():
    record("module_first")
    await asyncio.sleep(0)


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_second():
    record("module_second")
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, fut.set_result, 42)
    assert await fut == 42
'''


def _run_pytest(tmp_path, with_hook):
    (tmp_path / "pytest.ini").write_text(PYTEST_INI)
    (tmp_path / "test_on_loop.py").write_text(TESTS)
    if with_hook:
        (tmp_path / "conftest.py").write_text(CONFTEST)
    record = tmp_path / "loops.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["LOOP_RECORD"] = str(record)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_on_loop.py"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout
    assert "3 passed" in proc.stdout, proc.stdout
    loops = {}
    for line in record.read_text().splitlines():
        name, module, qualname, ident = json.loads(line)
        loops[name] = (module, qualname, ident)
    assert set(loops) == {"fixture", "test_echo", "module_first", "module_second"}, loops
    # The async fixture and its test share one loop; the module-scoped tests one.
    assert loops["fixture"] == loops["test_echo"]
    assert loops["module_first"] == loops["module_second"]
    return {(module, qualname) for module, qualname, _ in loops.values()}


def test_pytest_asyncio_loop_factories_hook_runs_tests_on_ferroloop(tmp_path):
    assert _run_pytest(tmp_path, with_hook=True) == {("ferroloop._loop", "Loop")}


def test_pytest_asyncio_without_the_hook_uses_asyncio(tmp_path):
    kinds = _run_pytest(tmp_path, with_hook=False)
    assert len(kinds) == 1
    (module, _), = kinds
    assert module.startswith("asyncio"), kinds
