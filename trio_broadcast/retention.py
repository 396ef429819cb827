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
   backlog, read as it is sent, so a client catching up holds one chunk, never
   a copy of what is retained;
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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol


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

    async def read(self, after: str, until: str, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` ``(ID, line)`` pairs after ``after``, up to ``until``.

        An empty list means nothing is left up to ``until``. Raises
        :class:`Evicted` if lines after ``after`` are no longer kept, and
        :class:`Unavailable` if the history cannot be read now.
        """


class Retention:
    """This server's own history: the last lines, bounded in number and in bytes.

    :meth:`extend` is called with every published batch, in order; the oldest
    lines are forgotten as soon as more than ``max_lines`` lines, or more than
    ``max_bytes`` bytes of them, are kept. A line's size is what the caller
    says: the server counts its text frame (the UTF-8 line and 2 to 10 bytes
    of header). The async methods make no checkpoint: they answer at once,
    from memory.
    """

    def __init__(self, max_lines: int, max_bytes: int, *, epoch: str | None = None) -> None:
        if max_lines < 0 or max_bytes < 0:
            raise ValueError("the bounds of a Retention must be at least 0")
        self.epoch = epoch if epoch is not None else secrets.token_hex(6)
        """Drawn at random for each run: an ID with another epoch is from another run."""
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._lines: deque[str] = deque()
        self._sizes: deque[int] = deque()
        self.bytes = 0
        """The sizes of the lines retained, added up."""
        self.last = 0
        """The number of the last line published (lines are numbered from 1)."""

    @property
    def lines(self) -> int:
        """How many lines are retained."""
        return len(self._lines)

    @property
    def first(self) -> int:
        """The number of the oldest line retained (``last + 1`` when none is)."""
        return self.last - len(self._lines) + 1

    def id(self, number: int) -> str:
        """The ID of line ``number`` of this run."""
        return f"{self.epoch}:{number}"

    def extend(self, lines: Sequence[str], sizes: Sequence[int]) -> int:
        """Retain a published batch (``sizes``: each line's size); return its first number."""
        first = self.last + 1
        self.last += len(lines)
        self._lines.extend(lines)
        self._sizes.extend(sizes)
        self.bytes += sum(sizes)
        while self._lines and (len(self._lines) > self.max_lines or self.bytes > self.max_bytes):
            self._lines.popleft()
            self.bytes -= self._sizes.popleft()
        return first

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

    async def read(self, after: str, until: str, limit: int) -> list[tuple[str, str]]:
        start, end = self._known(after), self._known(until)
        if start < self.first - 1:
            raise Evicted(f"lines after {after} are no longer retained")
        stop = min(end, start + limit)
        if stop <= start:
            return []
        offset = start + 1 - self.first
        lines = islice(self._lines, offset, offset + stop - start)
        numbers = range(start + 1, stop + 1)
        return [(self.id(number), line) for number, line in zip(numbers, lines, strict=True)]

    def _known(self, position: str) -> int:
        number = self.number(position)
        if number is None:
            raise ValueError(f"not a position of this run: {position!r}")
        return number
