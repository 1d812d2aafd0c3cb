"""Run a Python script with ferroloop as the default event loop.

    python -m ferroloop script.py [args...]

Installs ferroloop's event loop policy, so that ``asyncio.run``,
``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` use ferroloop,
then runs the script as ``__main__``. A new ferroloop loop is set as the
current one first (closed after the script if still open): from Python 3.14
on ``asyncio.get_event_loop()`` makes no loop when none is set (3.12 and 3.13
make one with a DeprecationWarning). The policy is installed without
asyncio's 3.14+ deprecation warning (the script did not ask for a policy).
"""

import asyncio
import runpy
import sys

import ferroloop


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: python -m ferroloop script.py [args...]", file=sys.stderr)
        raise SystemExit(2)
    ferroloop._install()
    loop = ferroloop.new_event_loop()
    asyncio.set_event_loop(loop)
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        if not loop.is_running() and not loop.is_closed():
            loop.close()


if __name__ == "__main__":
    main()
