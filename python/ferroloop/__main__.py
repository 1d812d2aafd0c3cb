"""Run a Python script with ferroloop as the default event loop.

    python -m ferroloop script.py [args...]

Installs :class:`ferroloop.EventLoopPolicy`, so that ``asyncio.run``,
``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` use ferroloop,
then runs the script as ``__main__``.
"""

import runpy
import sys

import ferroloop


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: python -m ferroloop script.py [args...]", file=sys.stderr)
        raise SystemExit(2)
    ferroloop.install()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
