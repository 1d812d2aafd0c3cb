"""Run a Python script with ferroloop as the default event loop.

    python -m ferroloop script.py [args...]

Installs ferroloop's event loop policy, so that ``asyncio.run``,
``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` use ferroloop,
then runs the script as ``__main__``. From Python 3.14 on, where
``asyncio.get_event_loop()`` makes no loop when none is set, a new ferroloop
loop is set as the current one first (closed after the script if still
open), and the policy is installed without asyncio's deprecation warning
(the script did not ask for a policy). Before 3.14 the script runs as under
stock asyncio, warnings included (3.12-3.13's get_event_loop() makes a loop
with a DeprecationWarning).
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
    loop = None
    if ferroloop._POLICY_DEPRECATED:
        loop = ferroloop.new_event_loop()
        asyncio.set_event_loop(loop)
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()


if __name__ == "__main__":
    main()
