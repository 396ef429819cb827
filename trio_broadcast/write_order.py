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

Control frames are counted one by one and data frames batch by batch, in and
out, so that a writer knows its frames are out once the count written reaches
the number it was given when it handed them over.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, islice

IOV_MAX = 1024
"""Buffers one ``writev`` takes at most (Linux's ``UIO_MAXIOV``)."""
_CLOSE_FRAME = 0x88
"""First byte of a server's close frame: FIN and opcode 0x8."""


class _Batch:
    """Data frames handed over together, joined once, and how much of them is written."""

    __slots__ = ("data", "frames", "written")

    def __init__(self, frames: Sequence[bytes], data: bytes, written: int) -> None:
        self.data = data
        self.frames = frames
        """Kept to find frame boundaries, should a control frame need one."""
        self.written = written

    def rest(self, max_bytes: int | None = None) -> memoryview | bytes:
        """What is left to write; with ``max_bytes``, only the whole frames that fit
        (at least one)."""
        if max_bytes is None or len(self.data) - self.written <= max_bytes:
            return memoryview(self.data)[self.written :] if self.written else self.data
        end = None
        for boundary in accumulate(map(len, self.frames)):
            if boundary <= self.written:
                continue
            if end is not None and boundary - self.written > max_bytes:
                break
            end = boundary
        return memoryview(self.data)[self.written : end]

    def mid_frame(self) -> bool:
        """Whether part of a frame is written and part is not."""
        if not self.written:
            return False
        return self.written not in accumulate(map(len, self.frames))

    def rest_of_frame(self) -> memoryview:
        """The unwritten end of the frame in progress."""
        end = next(end for end in accumulate(map(len, self.frames)) if end > self.written)
        return memoryview(self.data)[self.written : end]


_NOTHING = memoryview(b"")
"""The empty rest of a control frame, shared: a memoryview of its own is 312 bytes a connection."""


class WriteOrder:
    """Frames handed over and not yet written, in the order they must go out.

    Data frames are handed over in batches (a broadcast batch, an echo) and
    counted in batches; each batch is joined once, and written whole unless a
    control frame must go in at a frame boundary inside it.
    """

    __slots__ = (
        "_control",
        "_control_head",
        "_data",
        "closing",
        "control_in",
        "control_out",
        "data_in",
        "data_out",
    )

    def __init__(self) -> None:
        self._control_head = _NOTHING
        """The rest of a control frame in progress."""
        # Lists, not deques: they hold a few entries at most (a batch being
        # written, a pong, a close), and an empty deque takes 760 bytes against
        # a list's 56, two per connection (issue 14).
        self._control: list[bytes] = []
        self._data: list[_Batch] = []
        self.control_in = self.control_out = 0
        """Control frames handed over, and written whole."""
        self.data_in = self.data_out = 0
        """Batches of data frames handed over, and written whole."""
        self.closing = False
        """A close frame was handed over: no data frame will be taken after it."""

    @property
    def pending(self) -> bool:
        """Whether anything handed over is still to be written (or never will be, after
        a close: data frames that were waiting then stay here)."""
        return bool(self._control_head or self._control or self._data)

    @property
    def in_progress(self) -> bool:
        """Whether a frame is partly written."""
        return bool(self._control_head) or (bool(self._data) and self._data[0].mid_frame())

    def add_control(self, frame: bytes) -> int:
        """Hand over a control frame (or the handshake response); returns its number."""
        if frame[:1] == bytes((_CLOSE_FRAME,)):
            self.closing = True
        self._control.append(frame)
        self.control_in += 1
        return self.control_in

    def add_data(
        self, frames: Sequence[bytes], data: bytes | None = None, written: int = 0
    ) -> int:
        """Hand over a batch of data frames; returns its number (the last batch's, when
        ``frames`` is empty).

        ``data`` is the frames joined, if the caller has them so, and ``written``
        how many bytes of them went out already (only when nothing else was
        pending: the rest of a fast write).
        """
        if frames:
            assert not written or not self.pending, "a batch written ahead of others"
            if data is None:
                data = frames[0] if len(frames) == 1 else b"".join(frames)
            self._data.append(_Batch(frames, data, written))
            self.data_in += 1
        return self.data_in

    def next_frames(
        self, limit: int = IOV_MAX, max_bytes: int | None = None
    ) -> tuple[list[bytes | memoryview], int]:
        """What goes next, at most ``limit`` buffers, and how many control frames that is.

        With ``max_bytes``, data frames are taken, up to a frame boundary, only
        while the whole stays within that many bytes (control frames always go,
        and a first data frame goes alone if it is larger). Pass both to :meth:`consume`
        with the number of bytes the transport took. Empty when nothing can be
        written (all that waits is behind a close frame).
        """
        if self._control_head:
            buffers: list[bytes | memoryview] = [self._control_head]
        elif self._control and self._data and self._data[0].mid_frame():
            return [self._data[0].rest_of_frame()], 0  # the frame in progress, alone
        else:
            buffers = []
        buffers.extend(islice(self._control, limit - len(buffers)))
        control = len(buffers) - bool(self._control_head)
        if self.closing:
            return buffers, control
        if max_bytes is None:
            buffers.extend(batch.rest() for batch in islice(self._data, limit - len(buffers)))
            return buffers, control
        budget = max_bytes - sum(map(len, buffers))
        for batch in islice(self._data, limit - len(buffers)):
            piece = batch.rest(max(budget, 1))
            if buffers and len(piece) > budget:
                break  # only the first buffer may be one frame over the budget
            buffers.append(piece)
            budget -= len(piece)
            if len(piece) < len(batch.data) - batch.written:
                break  # cut inside this batch: what follows must wait
        return buffers, control

    def consume(self, written: int, control: int) -> None:
        """Account for ``written`` bytes of what :meth:`next_frames` returned.

        ``control`` is how many control frames it returned: only those can have
        been written, whatever was handed over since.
        """
        if self._control_head:
            taken = min(written, len(self._control_head))
            written -= taken
            self._control_head = self._control_head[taken:] or _NOTHING
            if self._control_head:
                return
            self.control_out += 1
        while written and control:
            control -= 1
            frame = self._control.pop(0)
            if written < len(frame):
                self._control_head = memoryview(frame)[written:]
                return
            written -= len(frame)
            self.control_out += 1
        while written and self._data:
            batch = self._data[0]
            taken = min(written, len(batch.data) - batch.written)
            batch.written += taken
            written -= taken
            if batch.written < len(batch.data):
                break
            self._data.pop(0)
            self.data_out += 1
        if written:
            raise ValueError(f"{written} bytes more were written than were offered")
