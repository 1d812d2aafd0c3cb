"""ferroloop: a drop-in asyncio event loop on a Rust engine.

Use it like uvloop::

    import ferroloop
    ferroloop.run(main())

    # or
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        runner.run(main())

``ferroloop.install()`` and ``ferroloop.EventLoopPolicy`` (the event loop
policy way) are deprecated from Python 3.14 on, as asyncio's policies are:
use ``ferroloop.run(main())`` or ``asyncio.run(main(),
loop_factory=ferroloop.new_event_loop)``.
"""

import asyncio as __asyncio
import sys as __sys
import warnings as __warnings

from ._loop import Loop, TLSContext

__all__ = ("Loop", "EventLoopPolicy", "TLSContext", "new_event_loop", "install", "run")
__version__ = "0.1.0"

# From 3.14 on asyncio deprecates its policy API (set_event_loop_policy,
# get_event_loop_policy, AbstractEventLoopPolicy, DefaultEventLoopPolicy):
# ferroloop's policy way is deprecated with it, with a warning of its own,
# and never sets off asyncio's (it uses asyncio's non-deprecated private
# names: unix_events._DefaultEventLoopPolicy, events._set_event_loop_policy).
_POLICY_DEPRECATED = __sys.version_info >= (3, 14)

_DEPRECATION = (
    "{} is deprecated from Python 3.14 on, as asyncio's event loop policies are: "
    "use ferroloop.run(main()) or asyncio.run(main(), loop_factory=ferroloop.new_event_loop)"
)


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


if _POLICY_DEPRECATED:
    from asyncio import events as __events, unix_events as __unix_events

    _PolicyBase = __unix_events._DefaultEventLoopPolicy
    _set_policy = __events._set_event_loop_policy
else:
    _PolicyBase = __asyncio.DefaultEventLoopPolicy
    _set_policy = __asyncio.set_event_loop_policy


class _EventLoopPolicy(_PolicyBase):
    """An event loop policy whose loops are ferroloop loops."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__}>"


_EventLoopPolicy.__name__ = _EventLoopPolicy.__qualname__ = "EventLoopPolicy"


def _install() -> None:
    """Install ferroloop's policy, without asyncio's deprecation warning."""
    _set_policy(_EventLoopPolicy())


def install() -> None:
    """Make ferroloop the default: ``asyncio.new_event_loop()`` returns a ferroloop loop.

    Deprecated from Python 3.14 on (asyncio deprecates event loop policies):
    use ``ferroloop.run()`` or ``asyncio.run(..., loop_factory=ferroloop.new_event_loop)``."""
    if _POLICY_DEPRECATED:
        __warnings.warn(_DEPRECATION.format("ferroloop.install()"), DeprecationWarning, stacklevel=2)
    _install()


if _POLICY_DEPRECATED:

    def __getattr__(name):
        # ferroloop.EventLoopPolicy warns where it is named, as asyncio's
        # policy classes do.
        if name == "EventLoopPolicy":
            __warnings.warn(_DEPRECATION.format("ferroloop.EventLoopPolicy"), DeprecationWarning, stacklevel=2)
            return _EventLoopPolicy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

else:
    EventLoopPolicy = _EventLoopPolicy


def run(main, *, loop_factory=new_event_loop, debug=None, **run_kwargs):
    """Run the coroutine ``main`` on a new ferroloop loop (as ``asyncio.run``)."""
    if __asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with __asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
        return runner.run(main)
