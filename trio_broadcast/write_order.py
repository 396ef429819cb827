"""What a connection writes next: the one-writer rule as a pure queue, without I/O.

:class:`~trio_broadcast.frame_stream.FrameStream` does the writing and the
waiting; this class decides the order, so that it can be tested byte by byte
without sockets. The rule it keeps:

* **the frame in progress first**: once any byte of a frame has been taken by
  the transport, the rest of that frame comes before any other byte;
* **then control frames** (the handshake response, pongs, pings, close), in
  the order they came, ahead of data frames that are still waiting: a pong
  waits for one frame at most, never for a backlog;
* **then data frames** (broadcast lines, echoes), in the order they came;
* **nothing after a close frame**: data frames still waiting are never taken.

Frames are counted in and out per kind, so that a writer knows its frames are
out once the count written reaches the number its last frame was given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import islice

IOV_MAX = 1024
"""Buffers one ``writev`` takes at most (Linux's ``UIO_MAXIOV``)."""
_CLOSE_FRAME = 0x88
"""First byte of a server's close frame: FIN and opcode 0x8."""


class WriteOrder:
    """Frames handed over and not yet written, in the order they must go out."""

    __slots__ = (
        "_control",
        "_data",
        "_head",
        "_head_is_control",
        "closing",
        "control_in",
        "control_out",
        "data_in",
        "data_out",
    )

    def __init__(self) -> None:
        self._head = memoryview(b"")
        """The rest of the frame in progress."""
        self._head_is_control = False
        self._control: deque[bytes] = deque()
        self._data: deque[bytes] = deque()
        self.control_in = self.control_out = 0
        """Control frames handed over, and written whole."""
        self.data_in = self.data_out = 0
        """Data frames handed over, and written whole."""
        self.closing = False
        """A close frame was handed over: no data frame will be taken after it."""

    @property
    def pending(self) -> bool:
        """Whether anything handed over is still to be written (or never will be, after
        a close: data frames that were waiting then stay here)."""
        return bool(self._head) or bool(self._control) or bool(self._data)

    @property
    def in_progress(self) -> bool:
        """Whether a frame is partly written."""
        return bool(self._head)

    def add_control(self, frame: bytes) -> int:
        """Hand over a control frame (or the handshake response); returns its number."""
        if frame[:1] == bytes((_CLOSE_FRAME,)):
            self.closing = True
        self._control.append(frame)
        self.control_in += 1
        return self.control_in

    def add_data(self, frames: Sequence[bytes]) -> int:
        """Hand over data frames; returns the number of the last (all data handed over
        so far, when ``frames`` is empty)."""
        self._data.extend(frames)
        self.data_in += len(frames)
        return self.data_in

    def next_frames(self, limit: int = IOV_MAX) -> tuple[list[bytes | memoryview], int]:
        """What goes next, at most ``limit`` buffers, and how many control frames that is.

        Pass both to :meth:`consume` with the number of bytes the transport
        took. Empty when nothing can be written.
        """
        frames: list[bytes | memoryview] = [self._head] if self._head else []
        if self._head and self._control and not self._head_is_control:
            return frames, 0  # the frame in progress alone: control frames are due after it
        frames.extend(islice(self._control, limit - len(frames)))
        control = len(frames) - bool(self._head)
        if not self.closing:
            frames.extend(islice(self._data, limit - len(frames)))
        return frames, control

    def consume(self, written: int, control: int) -> None:
        """Account for ``written`` bytes of what :meth:`next_frames` returned.

        ``control`` is how many control frames it returned: only those can have
        been written, whatever was handed over since.
        """
        if self._head:
            taken = min(written, len(self._head))
            written -= taken
            self._head = self._head[taken:]
            if self._head:
                return
            self._count_written(is_control=self._head_is_control)
        while written and control:
            control -= 1
            written = self._take(self._control, written, is_control=True)
        while written and self._data:
            written = self._take(self._data, written, is_control=False)
        if written:
            raise ValueError(f"{written} bytes more were written than were offered")

    def _take(self, queue: deque[bytes], written: int, *, is_control: bool) -> int:
        frame = queue.popleft()
        if written < len(frame):
            self._head = memoryview(frame)[written:]
            self._head_is_control = is_control
            return 0
        self._count_written(is_control=is_control)
        return written - len(frame)

    def _count_written(self, *, is_control: bool) -> None:
        if is_control:
            self.control_out += 1
        else:
            self.data_out += 1
