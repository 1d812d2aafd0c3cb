"""``python -m asyncio ps PID`` / ``pstree PID`` (Python 3.14+) on a process
whose tasks run on the loop under test.

Those tools read another process's memory: the asyncio C module's per-thread
task lists and running loop. They see a loop's tasks when the tasks are
asyncio's C ``Task`` and the loop is set as running through asyncio's
``_set_running_loop``, as ferroloop's are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(sys.version_info < (3, 14), reason="python -m asyncio ps/pstree are 3.14+")

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys

    async def leaf():
        await asyncio.sleep(60)

    async def middle():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leaf(), name="leaf-one")
            tg.create_task(leaf(), name="leaf-two")

    async def main():
        task = asyncio.create_task(middle(), name="the-middle")
        await asyncio.sleep(0.1)
        print(type(asyncio.get_running_loop()).__module__, flush=True)
        await task

    asyncio.run(main())
    """
)


@pytest.mark.timeout(60)
def test_asyncio_ps_and_pstree_see_the_loops_tasks(flavor, tmp_path):
    script = tmp_path / "tasks.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))
    proc = subprocess.Popen(
        flavor.runner_argv + [str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        module = proc.stdout.readline().strip()
        assert module, proc.stderr.read()
        assert module.startswith("ferroloop") == flavor.is_ferroloop
        outputs = {}
        for command in ("ps", "pstree"):
            tool = subprocess.run(
                [sys.executable, "-m", "asyncio", command, str(proc.pid)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if tool.returncode != 0 and "permission" in (tool.stdout + tool.stderr).lower():
                pytest.skip("no permission to read another process's memory here")
            assert tool.returncode == 0, tool.stderr
            outputs[command] = tool.stdout
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    table = outputs["ps"]
    rows = {line.split()[2]: line for line in table.splitlines() if len(line.split()) > 2}
    assert {"Task-1", "the-middle", "leaf-one", "leaf-two"} <= set(rows), table
    # The awaiter chain: each leaf is awaited by the-middle, which main awaits.
    assert "the-middle" in rows["leaf-one"] and "the-middle" in rows["leaf-two"], table
    assert "Task-1" in rows["the-middle"], table
    tree = outputs["pstree"]
    assert tree.index("Task-1") < tree.index("the-middle") < tree.index("leaf-one"), tree
    assert "leaf-two" in tree, tree
