"""Where lines come from: the contract between a line source and the server.

A line travels forwards, one hop at a time::

    LineSource ──Publish──▶ Server.publish ──▶ Broadcast.publish ──▶ Fanout.publish ──▶ each client

A :data:`LineSource` is an async function that the server runs in its nursery,
handing it a :data:`Publish` (the server's :meth:`~trio_broadcast.Server.publish`).
The source calls it with each batch of lines it reads and returns at the end of
its input. :func:`~trio_broadcast.read_lines` (standard input) is one;
:func:`~trio_broadcast.redis_stream.stream_source` (a Redis stream shared by
several instances) is another, and a test or an embedding program may bring its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol


class Publish(Protocol):
    """Hands one batch of lines onwards; may wait (that is how a sink applies backpressure).

    ``ids`` name the lines, for a source that keeps its own history (a Redis
    stream, whose entry IDs are the same on every instance); a source that
    does not, such as standard input, leaves them out and the server numbers
    the lines itself.
    """

    def __call__(
        self, lines: Sequence[str], ids: Sequence[str] | None = None, /
    ) -> Awaitable[None]: ...


LineSource = Callable[[Publish], Awaitable[None]]
"""An async function that calls ``publish`` with each batch of lines and returns
at the end of its input, like :func:`trio_broadcast.read_lines`."""
