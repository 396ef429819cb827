"""What is kept for clients that come back: line IDs, retained lines, where a resume starts.

Every broadcast line has an ID, and a ``trio-broadcast.v1`` client
(:mod:`trio_broadcast.subprotocol`) that reconnects with ``?since=ID`` is sent
every retained line after it, then the live feed. A :class:`History` is where
those lines are kept: :class:`Retention`, this module's, in the server's memory;
or, with ``--redis``, the stream itself
(:class:`~trio_broadcast.redis_stream.StreamHistory`), whose entry IDs are the
same on every instance. Both answer the same questions, and the client task
(:mod:`trio_broadcast.client`) asks them in this order:

1. :meth:`History.start`: where this client's feed starts (the hello's ID),
   and whether a :class:`Gap` must be reported first;
2. :meth:`History.read`, chunk by chunk, up to :meth:`History.position` (the
   ID of the last line published), looked at again after each chunk: the
   backlog, read as it is sent, so a client catching up holds one
   :class:`Chunk` of frames ready to write, never a copy of what is retained;
3. once it has sent everything up to :meth:`History.position`, it joins the
   fan-out with no checkpoint in between, and the live feed follows.

On one instance an ID is ``EPOCH:SEQ``: the epoch is drawn at random when the
server starts, so that an ID from an earlier run is recognised as such (a gap,
count unknown) instead of being misread as a position in this one; ``SEQ``
counts lines from 1, and ``EPOCH:0`` is the position before the first. Pure:
no I/O and no Trio, tested by feeding it lines.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from . import subprotocol
from .frames import text_frame


def line_frame(position: str, text: str) -> bytes:
    """A ``line`` message (:func:`~trio_broadcast.subprotocol.line`) as the text frame
    that carries it: the form in which a line is retained, and sent to v1 clients."""
    return text_frame(subprotocol.line(position, text))


@dataclass(frozen=True, slots=True)
class Gap:
    """A resume that could not be exact: what the ``gap`` notice says."""

    since: str
    """The ID the client asked to resume from, as it sent it."""
    missed: int | None
    """Lines it missed; ``None`` when that is not known (an ID from another run)."""


@dataclass(frozen=True, slots=True)
class Start:
    """Where one client's feed starts."""

    position: str
    """The hello's ID: the backlog is every line after it."""
    gap: Gap | None = None
    """Reported before anything else, when the resume could not be exact."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Part of a backlog, as :meth:`History.read` returns it."""

    frames: list[bytes]
    """The lines' ``line`` messages, as text frames ready to be written, in order."""
    last: str
    """The ID of the last of them: the next read starts after it."""


class Evicted(Exception):
    """Lines after a client's position are no longer retained: it fell too far behind."""


class Unavailable(Exception):
    """The history cannot be read now (Redis is unreachable); the client may try again."""


class History(Protocol):
    """Lines kept for clients that resume, by ID. See the module's docstring."""

    async def ready(self, since: str | None = None) -> None:
        """Return once :meth:`position` is known (with Redis, once the stream was read).

        With ``since``, also give this server a moment to catch up to that ID
        if it is one it has not reached yet (an instance slightly behind the
        one the client came from); bounded, after which :meth:`start` decides.
        """

    def position(self) -> str:
        """The ID of the last line published to the fan-out, or where the feed starts."""

    async def start(self, since: str | None, history: int, until: str) -> Start:
        """Where a client's feed starts, given the backlog ends at ``until``.

        With ``since``, the client resumes after that ID; without, it gets the
        last ``history`` lines up to ``until``. Raises :class:`Unavailable` if
        the history cannot be read now.
        """

    async def read(self, after: str, until: str, limit: int) -> Chunk:
        """Up to ``limit`` lines after ``after``, up to ``until``, ready to send.

        No frames mean nothing is left up to ``until``. Raises
        :class:`Evicted` if lines after ``after`` are no longer kept, and
        :class:`Unavailable` if the history cannot be read now.
        """


class Retention:
    """This server's own history: the last lines, bounded in number and in bytes.

    :meth:`extend` is called with every published batch, in order; the oldest
    lines are forgotten as soon as more than ``max_lines`` lines, or more than
    ``max_bytes`` bytes of them, are kept. Each line is kept in the form it
    is sent in: its text, until a ``trio-broadcast.v1`` client needs it, then
    its ``line`` message as a text frame, encoded once for every client that
    catches up on it (a storm of resuming clients reads the same lines over and
    over). A line's size is that of the frame it would be sent in: its text
    frame, as the caller gives it to :meth:`extend`, then its ``line`` frame.
    The async methods make no checkpoint: they answer at once, from memory.
    """

    def __init__(self, max_lines: int, max_bytes: int, *, epoch: str | None = None) -> None:
        if max_lines < 0 or max_bytes < 0:
            raise ValueError("the bounds of a Retention must be at least 0")
        self.epoch = epoch if epoch is not None else secrets.token_hex(6)
        """Drawn at random for each run: an ID with another epoch is from another run."""
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.bytes = 0
        """The sizes of the lines retained, added up."""
        self.last = 0
        """The number of the last line published (lines are numbered from 1)."""
        # A list read from _head on, rather than a deque, so that a chunk of a
        # backlog is a slice, wherever it starts; the forgotten head is cut
        # off once it is as long as what is kept (amortised O(1) a line).
        self._kept: list[str | bytes] = []
        self._sizes: list[int] = []
        self._head = 0

    @property
    def lines(self) -> int:
        """How many lines are retained."""
        return len(self._kept) - self._head

    @property
    def first(self) -> int:
        """The number of the oldest line retained (``last + 1`` when none is)."""
        return self.last - self.lines + 1

    def id(self, number: int) -> str:
        """The ID of line ``number`` of this run."""
        return f"{self.epoch}:{number}"

    def extend(
        self, lines: Sequence[str], sizes: Sequence[int], *, v1: bool = False
    ) -> list[bytes]:
        """Retain a published batch (``sizes``: each line's text frame's size).

        With ``v1``, encode the batch's ``line`` messages now, keep them in
        place of the text, and return them (for the v1 clients' live feed);
        else return ``[]``.
        """
        first = self.last + 1
        self.last += len(lines)
        if v1:
            frames = [
                line_frame(self.id(number), line) for number, line in enumerate(lines, first)
            ]
            self._kept.extend(frames)
            sizes = [len(frame) for frame in frames]
        else:
            frames = []
            self._kept.extend(lines)
        self._sizes.extend(sizes)
        self.bytes += sum(sizes)
        self._trim()
        return frames

    def _trim(self) -> None:
        kept, sizes = self._kept, self._sizes
        while self._head < len(kept) and (
            len(kept) - self._head > self.max_lines or self.bytes > self.max_bytes
        ):
            self.bytes -= sizes[self._head]
            kept[self._head] = ""  # let the line go now, not at the next cut
            self._head += 1
        if self._head > 1024 and 2 * self._head >= len(kept):
            del kept[: self._head]
            del sizes[: self._head]
            self._head = 0

    def _frames(self, first: int, stop: int) -> list[bytes]:
        """The ``line`` frames of lines ``first`` to ``stop - 1``, all retained.

        Encodes those still kept as text, and keeps the frames in their place.
        """
        kept, sizes = self._kept, self._sizes
        begin = self._head + first - self.first
        frames: list[bytes] = []
        grown = 0
        for at, number in enumerate(range(first, stop), begin):
            item = kept[at]
            if isinstance(item, str):
                item = kept[at] = line_frame(self.id(number), item)
                grown += len(item) - sizes[at]
                sizes[at] = len(item)
            frames.append(item)
        if grown:
            # Encoded lines are larger: the bound holds again from now on (a
            # reader holding these frames may then find the next ones evicted).
            self.bytes += grown
            self._trim()
        return frames

    def number(self, position: str) -> int | None:
        """The line number of an ID of this run, or ``None`` (another run, or not an ID)."""
        epoch, colon, digits = position.partition(":")
        if epoch != self.epoch or not colon or not digits.isdigit() or not digits.isascii():
            return None
        number = int(digits)
        return number if number <= self.last else None

    async def ready(self, since: str | None = None) -> None:
        return

    def position(self) -> str:
        return self.id(self.last)

    async def start(self, since: str | None, history: int, until: str) -> Start:
        end = self._known(until)
        if since is None:
            return Start(self.id(end - min(history, max(0, end - self.first + 1))))
        after = self.number(since)
        if after is None or after > end:
            return Start(self.id(self.first - 1), Gap(since, None))
        if after < self.first - 1:
            return Start(self.id(self.first - 1), Gap(since, self.first - 1 - after))
        return Start(self.id(after))

    async def read(self, after: str, until: str, limit: int) -> Chunk:
        start, end = self._known(after), self._known(until)
        if start < self.first - 1:
            raise Evicted(f"lines after {after} are no longer retained")
        stop = min(end, start + limit)
        if stop <= start:
            return Chunk([], after)
        return Chunk(self._frames(start + 1, stop + 1), self.id(stop))

    def _known(self, position: str) -> int:
        number = self.number(position)
        if number is None:
            raise ValueError(f"not a position of this run: {position!r}")
        return number
