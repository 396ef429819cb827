"""SIGINT and SIGTERM: the first asks for a graceful stop, the second exits at once.

Why not ``trio.open_signal_receiver``: it hands signals to a task, and a
signal that arrives again before that task has run is delivered only once.
Under load the event loop can be busy for a while (a batch for thousands of
clients), so a second Ctrl-C a few milliseconds after the first was folded
into it and lost: the operator pressed twice and the server went on closing.

Here a plain handler counts the signals. The first one is passed to the
Trio loop with ``TrioToken.run_sync_soon`` (which is safe to call from a
signal handler); the second one ends the process from the handler itself,
which Python runs between two bytecodes, whatever the loop is doing.

One window remains, and no Python handler can close it: CPython's C-level
handler only marks a signal as "tripped", and the Python handler runs once
per mark, between two bytecodes. Two signals that arrive before that (the
main thread inside one long C call, a few milliseconds) reach the handler
once. A second signal sent after the first was logged always counts.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

import trio

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered, SIGINT and SIGTERM call ``on_first`` once, then exit with 128+N.

    ``on_first`` runs in the Trio thread, as a synchronous callback. ``prog``
    starts the line written on the second signal, as the command's log lines
    do. Must be entered in the main thread, inside ``trio.run``; the previous
    handlers are restored on exit.
    """

    def __init__(
        self, on_first: Callable[[signal.Signals], None], prog: str = "trio-broadcast"
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._on_first = on_first
        self._prog = prog
        self._received = 0
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._received += 1
        name = signal.Signals(signum).name
        if self._received > 1:
            # Not the logging module: its locks may be held by the code this
            # handler interrupted. One write(2) cannot deadlock.
            os.write(2, f"{self._prog}: WARNING: second {name}: exiting at once\n".encode())
            os._exit(128 + signum)
        self._token.run_sync_soon(self._on_first, signal.Signals(signum))
