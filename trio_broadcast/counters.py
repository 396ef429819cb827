"""Plain integer counters, bumped on the hot paths and read when metrics are scraped.

Counting a message must cost an integer addition, nothing more: no lock, no
label lookup, no call into a metrics library. :mod:`trio_broadcast.metrics`
turns these numbers into Prometheus metrics only when ``/metrics`` is asked for.
Everything runs in one Trio thread, so plain attributes are enough.
"""

from __future__ import annotations

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
