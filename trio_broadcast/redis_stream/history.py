"""The stream as the history of resuming clients: IDs that mean the same on every instance.

With ``--redis``, a line's ID is its stream entry ID, and the lines retained
for clients that resume are the stream itself (up to ``--redis-maxlen``), read
with ``XRANGE``. So a ``trio-broadcast.v1`` client that reconnects through a
load balancer to another instance, or to its own after a restart, resumes
exactly where it left off, as long as the stream still holds the lines after its ID.

:class:`StreamHistory` is the :class:`~trio_broadcast.retention.History` the
server reads from (see that module for the questions it answers). Its position
is the :class:`~trio_broadcast.redis_stream.feed.Follower`'s: the last entry
published into this instance's fan-out. A resume is exact when no entry after
the client's ID has been trimmed, and the ID is one of this stream's: an entry
still in it, or where the stream starts (``0-0`` until it is first trimmed,
then the ID just before its first entry, which a hello may carry). An ID from
elsewhere (another stream, a stream that Redis lost and started again, or this
server without ``--redis``) gets a gap notice with an unknown count, and so
does one older than the stream's first entry: Redis does not record where
trimming stopped, so even the last entry trimmed gets one, though no line
after it was lost. An entry of the stream that this instance has not
published yet (the client came from an instance further ahead) is
:class:`~trio_broadcast.retention.Unavailable`: try again later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..retention import Chunk, Evicted, Gap, Start, Unavailable, line_frame
from .adapter import RedisStream, unreachable
from .entries import EntryId

T = TypeVar("T")

CATCH_UP_WAIT = 2.0
"""Seconds a resuming client waits for this instance to read up to its ID, when
it comes from an instance that is ahead; after that it is closed with 1013."""


class StreamHistory:
    """The :class:`~trio_broadcast.retention.History` of a Redis stream."""

    def __init__(self, stream: RedisStream) -> None:
        self._stream = stream
        self._position: Callable[[], EntryId] | None = None
        self._delivered: Callable[[EntryId], Awaitable[None]] | None = None
        self._following = trio.Event()

    def follow(
        self, position: Callable[[], EntryId], delivered: Callable[[EntryId], Awaitable[None]]
    ) -> None:
        """Called by the line source once its reader has published its first read:
        ``position()`` is the last entry it published, from now on, and
        ``delivered(entry)`` waits until it has published up to ``entry``."""
        self._position = position
        self._delivered = delivered
        self._following.set()

    async def ready(self, since: str | None = None) -> None:
        await self._following.wait()
        assert self._position is not None
        assert self._delivered is not None
        try:
            after = EntryId.parse(since) if since is not None else None
        except ValueError:
            return
        if after is not None and after > self._position():
            with trio.move_on_after(CATCH_UP_WAIT):
                await self._delivered(after)

    def position(self) -> str:
        assert self._position is not None, "position() before ready()"
        return str(self._position())

    async def start(self, since: str | None, history: int, until: str) -> Start:
        end = EntryId.parse(until)
        if since is None:
            if history == 0:
                return Start(until)
            before = await self._ask(self._stream.before, end, history)
            return Start(
                str(before if before is not None else await self._ask(self._stream.start))
            )
        start = await self._ask(self._stream.start)
        try:
            after = EntryId.parse(since)
        except ValueError:
            return Start(str(start), Gap(since, None))
        if after <= end and (after == start or await self._ask(self._stream.has, after)):
            return Start(str(after))
        if after > end and await self._ask(self._stream.has, after):
            # Seen on an instance ahead of this one: a gap would send it again.
            raise Unavailable(f"this instance has not read up to {since} yet")
        # Older than the stream's start (its lines were trimmed), or not one of its IDs.
        return Start(str(start), Gap(since, None))

    async def read(self, after: str, until: str, limit: int) -> Chunk:
        position, end = EntryId.parse(after), EntryId.parse(until)
        if position >= end:
            return Chunk([], after)  # nothing to catch up on, so a new client needs no Redis
        while True:
            entries = await self._ask(self._stream.between, position, end, limit)
            if position < await self._ask(self._stream.start):
                # Entries after it may have been trimmed before they were read.
                raise Evicted(f"entries after {after} were trimmed from the stream")
            if not entries:
                return Chunk([], after)
            frames = [line_frame(str(entry), line) for entry, line in entries if line is not None]
            if frames:
                return Chunk(frames, str(entries[-1][0]))
            position = entries[-1][0]  # only entries that are not ours: read on

    async def _ask(self, call: Callable[..., Awaitable[T]], *args: object) -> T:
        try:
            return await call(*args)
        except unreachable() as exc:
            raise Unavailable(f"cannot read the stream {self._stream.key!r}: {exc!r}") from exc
