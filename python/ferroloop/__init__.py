"""ferroloop: a drop-in asyncio event loop on a Rust engine.

Use it like uvloop::

    import ferroloop
    ferroloop.run(main())

    # or
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        runner.run(main())
"""

import asyncio as __asyncio

from ._loop import Loop, TLSContext

__all__ = ("Loop", "EventLoopPolicy", "TLSContext", "new_event_loop", "install", "run")
__version__ = "0.1.0"


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(__asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are ferroloop loops."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__}>"


def install() -> None:
    """Make ferroloop the default: ``asyncio.new_event_loop()`` returns a ferroloop loop."""
    __asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, loop_factory=new_event_loop, debug=None, **run_kwargs):
    """Run the coroutine ``main`` on a new ferroloop loop (as ``asyncio.run``)."""
    if __asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with __asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
        return runner.run(main)
