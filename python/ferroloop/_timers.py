"""Timers of ferroloop's loop: ``call_at`` and ``call_later`` as asyncio's,
each an ``asyncio.TimerHandle`` scheduled as an engine timer.

Outside debug mode a timer is made and scheduled in two Python frames,
where asyncio's ``call_later`` takes six (``call_later``, ``time``,
``call_at``, ``_check_closed``, ``TimerHandle.__init__``,
``Handle.__init__``), and cancelled in one, where asyncio takes three: a
server arms and cancels a timer or two per request (keep-alive, timeouts).
The handle is asyncio's ``TimerHandle`` class, filled in as its
``__init__`` fills it (``Handle``'s slots, unchanged from 3.11 to 3.15; see
docs/python-versions.md). Debug mode, and a subclass that overrides
``time``, ``call_at``, ``call_later`` or ``get_debug``, take asyncio's own
path (source tracebacks, callback checks).
"""

from __future__ import annotations

import contextvars

from asyncio import base_events, events

_copy_context = contextvars.copy_context


class _TimerHandle(events.TimerHandle):
    """asyncio's TimerHandle, plus the engine timer it is scheduled as."""

    __slots__ = ("_fl_timer",)

    def cancel(self):
        # asyncio's TimerHandle.cancel (the loop's _timer_handle_cancelled:
        # the engine timer goes) and Handle.cancel, in one frame.
        if not self._cancelled:
            timer = getattr(self, "_fl_timer", None)
            if timer is not None:
                timer.cancel()
            self._cancelled = True
            if self._loop.get_debug():
                self._repr = repr(self)
            self._callback = None
            self._args = None


# Named as asyncio's class: Handle's repr starts with the class name, and that
# repr is what the default exception handler logs ("handle: <TimerHandle
# when=... cb()>") and debug mode's slow-callback warning prints.
_TimerHandle.__name__ = _TimerHandle.__qualname__ = "TimerHandle"

_new_timer = object.__new__


def _schedule(loop, when, callback, args, context):
    """A TimerHandle for ``callback(*args)`` at ``when``, as asyncio's
    TimerHandle.__init__ makes it outside debug mode, scheduled."""
    timer = _new_timer(_TimerHandle)
    timer._context = _copy_context() if context is None else context
    timer._loop = loop
    timer._callback = callback
    timer._args = args
    timer._cancelled = False
    timer._repr = None
    timer._source_traceback = None
    timer._when = when
    # A `when` that is not a number (a str...) raises TypeError here,
    # where asyncio fails once it compares it with another timer's: at
    # once with timers pending, else inside run_forever().
    timer._fl_timer = loop._core.call_at(when, timer)
    timer._scheduled = True
    return timer


class TimerMethods:
    """``call_at``, ``call_later`` and ``_timer_handle_cancelled`` of the loop
    (whose class names its own ``time`` as ``_own_time``)."""

    def _init_timers(self):
        cls = type(self)
        # Whether this class keeps the methods the fast path stands for.
        self._fast_timers = (
            cls.time is cls._own_time
            and cls.call_at is TimerMethods.call_at
            and cls.call_later is TimerMethods.call_later
            and cls.get_debug is base_events.BaseEventLoop.get_debug
        )

    def call_at(self, when, callback, *args, context=None):
        if when is None:
            raise TypeError("when cannot be None")
        if self._fast_timers and not self._debug:
            if self._closed:
                raise RuntimeError("Event loop is closed")
            return _schedule(self, when, callback, args, context)
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        timer = _TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        timer._fl_timer = self._core.call_at(when, timer)
        timer._scheduled = True
        return timer

    def call_later(self, delay, callback, *args, context=None):
        if delay is None:
            raise TypeError("delay must not be None")
        if self._fast_timers and not self._debug:
            if self._closed:
                raise RuntimeError("Event loop is closed")
            # self.time(): time.monotonic itself from the instance dict (no
            # frame), or whatever replaced it on the instance, as asyncio.
            return _schedule(self, self.time() + delay, callback, args, context)
        timer = self.call_at(self.time() + delay, callback, *args, context=context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        return timer

    def _timer_handle_cancelled(self, handle):
        timer = getattr(handle, "_fl_timer", None)
        if timer is not None:
            timer.cancel()
