"""Ctrl-C and SIGTERM that always end the work, and end it the same way.

Both raise ``KeyboardInterrupt`` in the main thread, so every clean-up on the way out runs
(checkpoints kept, worker processes stopped, a one-line message). Python delivers a
signal's exception into whatever code runs at that moment; in a garbage-collector callback
(JAX registers one), a weak reference's callback or a ``__del__`` method, the exception is
"unraisable": printed as "Exception ignored" and dropped, and the work would go on. Such an
interruption is delivered again a moment later, once that code has returned. Some libraries
drop it silently instead (Numba, in the Python callbacks its compiled code makes: PyTensor's
C backend runs softmax that way), so an interruption stays pending until it ends the work:
the training loops :func:`check` for one after every compiled call, and leaving
:func:`interruptible` raises one that nothing raised through.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

RETRY_SECONDS = 0.05  # how soon a dropped interruption is delivered again
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise ``KeyboardInterrupt``, and none is lost."""
    if threading.current_thread() is not threading.main_thread():  # signals: main thread only
        yield
        return
    before = {number: signal.signal(number, _interrupt) for number in SIGNALS}
    hook = sys.unraisablehook

    def unraisable(report: Any) -> None:
        if isinstance(report.exc_value, _Interruption):  # dropped: deliver it again
            signum = report.exc_value.signum
            threading.Timer(RETRY_SECONDS, _deliver_again, args=(signum,)).start()
        else:
            hook(report)

    sys.unraisablehook = unraisable
    _pending.clear()
    try:
        yield
        check()  # the work went on to its end: an interruption dropped on the way still counts
    finally:
        _pending.clear()
        sys.unraisablehook = hook
        for number, handler in before.items():
            signal.signal(number, handler)


def check() -> None:
    """Raise the interruption a signal raised, if something dropped it on the way out."""
    if _pending:
        raise _Interruption(_pending[-1])


class _Interruption(KeyboardInterrupt):
    """The KeyboardInterrupt a signal raised here, and which signal it was."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


_pending: list[int] = []  # the signals received within interruptible(), until it ends


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)
    raise _Interruption(signum)


def _deliver_again(signum: int) -> None:
    if signal.getsignal(signum) is _interrupt:  # not once the work has ended
        _thread.interrupt_main(signal.Signals(signum))
