"""The server's numbers: counted as plain integers, read as one frozen snapshot.

Counting a message must cost an integer addition, nothing more: no lock, no
label lookup, no call into a metrics library. Everything runs in one Trio
thread, so plain attributes are enough. Each count has one home:

* :class:`Counters`: what the connections and the line source count as they go
  (messages and bytes written, long lines skipped, handshakes by result);
* the :class:`~trio_broadcast.fanout.Fanout`: batches dropped, clients cut off,
  and the time spent waiting for room;
* the :class:`~trio_broadcast.retention.Retention`: lines and bytes kept for resuming;
* :class:`~trio_broadcast.connection.Connections`: open connections and clients;
* the :class:`~trio_broadcast.server.Server`: lines read, and whether input is open.

Like Trio's ``MemoryChannel.statistics()``, :meth:`Server.statistics()
<trio_broadcast.server.Server.statistics>` gathers them into one
:class:`Statistics` value; ``/metrics`` (:mod:`trio_broadcast.metrics`) and
``/healthz`` read that and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .access import RESULTS


@dataclass(slots=True)
class Counters:
    """What happened since the server started; shared by the tasks that count it."""

    delivered: int = 0
    """Messages written to clients: broadcast lines and echoes."""
    bytes_sent: int = 0
    """Bytes of those messages' WebSocket frames, headers included (not pings or closes)."""
    lines_too_long: int = 0
    """Input lines skipped for being over ``max_line_size``."""
    connections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    """WebSocket handshakes by result: ``accepted`` or the reason for refusing."""

    def count_frames(self, messages: int, size: int) -> None:
        """Count ``messages`` written as ``size`` bytes of frames, already encoded."""
        self.delivered += messages
        self.bytes_sent += size


@dataclass(frozen=True, slots=True)
class Statistics:
    """One server's numbers at one moment, as :meth:`Server.statistics` returns them."""

    clients: int
    """Connected WebSocket clients (handshake done, not yet closed)."""
    connections: int
    """Open TCP connections: clients, handshakes in progress and plain HTTP requests."""
    handshakes: Mapping[str, int]
    """WebSocket handshakes by result: ``accepted`` or the reason for refusing."""
    lines_read: int
    """Lines read from the input and broadcast."""
    input_open: bool
    """False once the line source has ended."""
    delivered: int
    """Messages written to clients: broadcast lines and echoes."""
    bytes_sent: int
    """Bytes of those messages' frames, headers included."""
    dropped: int
    """Messages skipped for clients that fell behind (``--on-full drop``)."""
    slow_disconnects: int
    """Clients cut off for falling behind (``--on-full disconnect`` or ``wait``)."""
    waited: float
    """Seconds the input waited for room in full queues (``--on-full wait``)."""
    lines_too_long: int
    """Input lines skipped for being over ``max_line_size``."""
    retained_lines: int | None
    """Lines kept for clients that resume; ``None`` when a Redis stream keeps them."""
    retained_bytes: int | None
    """Their size (each line's frame); ``None`` when a Redis stream keeps them."""
    tasks: int
    """Trio tasks alive in the process."""
    uptime: float
    """Seconds since the server started listening."""
