"""Sharing a feed: the publisher appends, the reader follows, the line source joins them.

With ``--redis``, an instance's standard input is appended to the stream by
:func:`append_from` (a bounded buffer, then backpressure on its source), and
every instance, this one included, follows the stream with a :class:`Follower`,
publishing what it reads into its own fan-out. :func:`stream_source` puts the
two together as the server's line source, and hands the reader's position to
the :class:`~trio_broadcast.redis_stream.history.StreamHistory` that resuming
clients read from. Both sides retry through
:func:`~trio_broadcast.redis_stream.retrying.retry` while Redis is away: the
publisher keeps what it could not append, in order; the reader keeps its
clients connected and resumes after the last entry it delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import NoReturn, TypeVar

import trio

from ..source import LineSource, Publish
from .adapter import RedisStream, unreachable, where
from .entries import Cursor, Entries, EntryId, Gap
from .history import StreamHistory
from .retrying import Backoff, Link, retry

log = logging.getLogger("trio_broadcast")

T = TypeVar("T")

BLOCK_MS = 5000
"""How long one ``XREAD BLOCK`` waits on the server; a silent connection is
noticed after this plus :data:`REQUEST_TIMEOUT`."""
READ_COUNT = 1000
"""Entries per ``XREAD``; one read becomes one batch for the fan-out."""
APPEND_LINES = 1000
"""Buffered lines appended in one command (one script run), at most (about)."""


async def append_from(
    source: LineSource, stream: RedisStream, *, buffer: int, backoff: Backoff = Backoff()
) -> EntryId | None:
    """Run ``source``, appending each line it publishes to ``stream``, in order.

    ``source`` publishes into a buffer of ``buffer`` batches, emptied by a
    writer task that appends whatever has gathered in one transaction. While
    Redis is unreachable the writer retries the same lines and the buffer
    fills; once it is full, ``source``'s ``publish`` waits, which for standard
    input means it is not read: backpressure, logged once per episode. Returns
    once the source has ended and everything it published is in the stream:
    the ID of the last entry appended (``None`` if there was none).
    """
    send, receive = trio.open_memory_channel[Sequence[str]](buffer)
    link = Link("publisher", where(stream))
    last: EntryId | None = None

    async def publish(lines: Sequence[str], ids: Sequence[str] | None = None) -> None:
        # The stream names the lines; whatever names a source gives are not kept.
        try:
            send.send_nowait(lines)
        except trio.WouldBlock:
            log.warning(
                "publisher: %d batches wait for Redis; input is not read until they are sent",
                buffer,
            )
            await send.send(lines)
            log.info("publisher: reading input again")
        else:
            await trio.lowlevel.checkpoint()

    async def write() -> None:
        nonlocal last
        async with receive:
            async for batch in receive:
                lines = list(batch)
                while len(lines) < APPEND_LINES:
                    try:
                        lines += receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                last = await retry(
                    partial(stream.append, lines),
                    errors=unreachable(),
                    link=link,
                    backoff=backoff,
                    consequence="holding input in order",
                )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        async with send:
            await source(publish)
    return last


class Follower:
    """Reads the stream from where it left off and publishes each read as one batch.

    Each line is published with its entry ID. Start it with
    ``await nursery.start(follower.run)``: that returns once the last
    ``history`` lines are published, so they come before anything live.
    :attr:`cursor` ``.last`` is then the last entry published, with no
    checkpoint between moving it and publishing.
    """

    def __init__(
        self,
        stream: RedisStream,
        publish: Publish,
        *,
        history: int,
        backoff: Backoff = Backoff(),
        count: int = READ_COUNT,
        block_ms: int = BLOCK_MS,
    ) -> None:
        self._stream = stream
        self._publish = publish
        self._history = history
        self._backoff = backoff
        self._count = count
        self._block_ms = block_ms
        self._link = Link("reader", where(stream))
        self.cursor = Cursor()
        self._progress = trio.Event()
        self._check = False

    async def delivered(self, entry: EntryId) -> None:
        """Wait until every entry up to ``entry`` has been published."""
        while self.cursor.last < entry:
            progress = self._progress
            await progress.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        self.cursor, history = await self._retry(partial(self._stream.latest, self._history))
        if history:
            await self._publish([line for _, line in history], [str(id) for id, _ in history])
        task_status.started()
        while True:
            read = await self._retry(self._read, on_error=self._check_for_gaps)
            if read.last is not None:
                self.cursor.advance(read.last, read.count)
            if read.lines:
                await self._publish(read.lines, read.ids)
            # A full read means it is behind: check that it is not behind the trimming.
            self._check = read.count == self._count
            self._progress.set()
            self._progress = trio.Event()

    async def _retry(
        self,
        call: Callable[[], Awaitable[T]],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> T:
        return await retry(
            call,
            errors=unreachable(),
            link=self._link,
            backoff=self._backoff,
            consequence="clients stay connected",
            on_error=on_error,
        )

    async def _read(self) -> Entries:
        if self._check:
            self._report(self.cursor.resync(*await self._stream.counters()))
            self._check = False
        return await self._stream.read(self.cursor.last, self._count, self._block_ms)

    def _check_for_gaps(self, exc: BaseException) -> None:
        self._check = True  # entries may have been trimmed while Redis was away

    def _report(self, gap: Gap) -> None:
        if gap.reset:
            log.warning(
                "reader: the stream %r started again (Redis restarted without persistence?); "
                "reading it from after %s, %d entries skipped",
                self._stream.key,
                self.cursor.last,
                gap.skipped,
            )
        elif gap.skipped:
            log.warning(
                "reader: %d entries were trimmed from the stream %r before they could be "
                "read (--redis-maxlen); they are skipped",
                gap.skipped,
                self._stream.key,
            )


def stream_source(
    stream: RedisStream,
    stdin: LineSource | None,
    *,
    history: int,
    buffer: int,
    exit_on_eof: bool = False,
    resume: StreamHistory | None = None,
) -> LineSource:
    """The server's line source with Redis: follow the stream; append ``stdin`` to it.

    It returns only with ``exit_on_eof``, once ``stdin`` has ended and every
    line it read has come back from the stream and been published; otherwise
    the instance keeps serving the stream after its own input ends. ``resume``,
    the server's history (``history`` of :func:`~trio_broadcast.serve`), learns
    the reader's position once it has started.
    """

    async def source(publish: Publish) -> None:
        follower = Follower(stream, publish, history=history)
        async with trio.open_nursery() as nursery:
            await nursery.start(follower.run)
            if resume is not None:
                resume.follow(lambda: follower.cursor.last, follower.delivered)
            if stdin is None:
                return
            last = await append_from(stdin, stream, buffer=buffer)
            if not exit_on_eof:
                log.info("end of standard input; still serving the Redis stream")
                return
            if last is not None:
                await follower.delivered(last)
            nursery.cancel_scope.cancel()

    return source
