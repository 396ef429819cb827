"""Many instances, one feed: lines shared through a capped Redis Stream.

With ``--redis``, an instance no longer hands standard input straight to its
fan-out. Its lines are appended to a Redis Stream, one entry per line
(``XADD key MAXLEN ~ N * line <text>``), and every instance, this one included,
reads that stream from where it left off (``XREAD BLOCK``) and publishes what it
reads into its own :class:`~trio_broadcast.fanout.Fanout`. The stream's order is
the order every client on every instance sees; history, the slow-client policy
and shutdown stay where they are, in the fan-out and the server.

The module has a sans-I/O half and an I/O half, as the rest of the package:

* pure, tested without Redis: :class:`EntryId` (stream ID arithmetic),
  :func:`encode_line` and :func:`decode_entry` (a line and its entry),
  :class:`Backoff` (the retry schedule) and :class:`Cursor` (where a reader is,
  and how many entries were trimmed away before it read them);
* I/O: :func:`connect` (start-up, where every failure is a one-line
  :class:`~trio_broadcast.errors.StartupError`), :class:`RedisStream` (one
  method per Redis conversation), :func:`append_from` (the publisher: a bounded
  buffer, then backpressure on its source), :class:`Follower` (the reader) and
  :func:`stream_source`, which puts them together as the server's line source.

Once running, an unreachable Redis never ends anything: each side retries with
capped exponential backoff and jitter, logging once when Redis goes away and
once when it is back. The publisher keeps what it could not append, in order;
the reader keeps its clients connected and resumes after the last entry it
delivered, so nothing still in the stream is lost or delivered twice.

``coredis`` is an optional dependency (``pip install 'trio-broadcast[redis]'``);
it is imported only when :func:`connect` runs. It is built on anyio and runs on
Trio natively: its connection pool is a task group opened by ``async with``.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import trio

from .errors import StartupError
from .source import LineSource, Publish

if TYPE_CHECKING:
    from coredis import Redis

log = logging.getLogger("trio_broadcast")

T = TypeVar("T")

KEY_PREFIX = "trio-broadcast:"
"""A channel's stream lives at ``trio-broadcast:<channel>``."""
FIELD = b"line"
"""The one field of an entry: the line, UTF-8 encoded."""
CONNECT_TIMEOUT = 5.0
"""Seconds for the start-up check (connect, authenticate, ``PING``), within the
10 s a supervisor may wait for a failing start."""
REQUEST_TIMEOUT = 10.0
"""Seconds an answer may take before the connection is considered dead."""
BLOCK_MS = 5000
"""How long one ``XREAD BLOCK`` waits on the server; a silent connection is
noticed after this plus :data:`REQUEST_TIMEOUT`."""
READ_COUNT = 1000
"""Entries per ``XREAD``; one read becomes one batch for the fan-out."""
APPEND_LINES = 1000
"""Buffered lines appended in one ``MULTI``/``EXEC`` transaction, at most (about)."""
INSTALL_HINT = "pip install 'trio-broadcast[redis]'"


def stream_key(channel: str) -> str:
    """The Redis key of the stream for ``channel``."""
    return KEY_PREFIX + channel


# --- sans-I/O -----------------------------------------------------------------------

_ENTRY_ID = re.compile(r"([0-9]+)-([0-9]+)")


@dataclass(frozen=True, order=True, slots=True)
class EntryId:
    """A stream entry ID, ``<milliseconds>-<sequence>``, ordered as Redis orders them."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, raw: str | bytes) -> EntryId:
        text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else raw
        match = _ENTRY_ID.fullmatch(text)
        if match is None:
            raise ValueError(f"not a stream entry ID: {text!r}")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


ORIGIN = EntryId(0, 0)
"""Before every entry: reading after it reads the whole stream."""


def encode_line(line: str) -> dict[bytes, bytes]:
    """The fields of the entry that carries ``line``."""
    return {FIELD: line.encode("utf-8", errors="surrogateescape")}


def decode_entry(fields: Mapping[Any, str | bytes]) -> str | None:
    """The line an entry carries, or ``None`` if it is not one of ours.

    Field names and values are bytes, or text when a client decodes replies.

    Bytes that are not UTF-8 (an entry written by another program) become
    U+FFFD, as on standard input.
    """
    for name, value in fields.items():
        raw_name = name.encode() if isinstance(name, str) else name
        if raw_name == FIELD:
            raw = value.encode() if isinstance(value, str) else value
            return raw.decode("utf-8", errors="replace")
    return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with "equal jitter".

    Attempt ``n`` (from 0) waits between half and all of
    ``min(cap, first * factor ** n)``: never less than half the schedule, so a
    dead server is not hammered, and spread out, so many instances that lost
    Redis together do not come back in lock step.
    """

    first: float = 0.05
    cap: float = 5.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.first <= self.cap and math.isfinite(self.cap) and self.factor >= 1):
            raise ValueError(f"bad backoff schedule: {self}")

    def delay(self, attempt: int, spread: float) -> float:
        """Seconds to wait before retry ``attempt``; ``spread`` in [0, 1) picks the jitter."""
        ceiling = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return ceiling / 2 + ceiling / 2 * spread


@dataclass(frozen=True, slots=True)
class Gap:
    """What :meth:`Cursor.resync` found."""

    skipped: int
    """Entries trimmed from the stream before this reader read them."""
    reset: bool
    """The stream is younger than the reader's position: it was deleted and started
    again (a Redis restart without persistence, say)."""


@dataclass(slots=True)
class Cursor:
    """Where a reader is: the last entry it delivered, and that entry's number.

    Entries are numbered from 1 in the order they were added, which is what
    Redis counts in ``XINFO STREAM``'s ``entries-added``. Trimming with
    ``MAXLEN`` removes the oldest entries, so ``entries-added - length`` entries
    are gone, the first ones; if that is more than :attr:`number`, some were
    trimmed before this reader got to them.
    """

    last: EntryId = ORIGIN
    number: int = 0

    def advance(self, entry: EntryId) -> None:
        """The entry after :attr:`last` has been delivered."""
        self.last = entry
        self.number += 1

    def resync(self, entries_added: int, length: int) -> Gap:
        """Compare with the stream's counters (0, 0 when it does not exist); move past a gap."""
        trimmed = entries_added - length
        if entries_added < self.number:
            self.number = trimmed
            return Gap(trimmed, reset=True)
        skipped = max(0, trimmed - self.number)
        self.number += skipped
        return Gap(skipped, reset=False)


# --- I/O: start-up --------------------------------------------------------------------


def _coredis_errors() -> tuple[type[BaseException], ...]:
    """What "Redis is unreachable or refused" looks like: worth a retry, never a crash."""
    from coredis.exceptions import RedisError

    return (RedisError, TimeoutError, OSError, trio.TooSlowError)


def _why(exc: BaseException) -> str:
    """One line for a connection failure, from the deepest useful cause."""
    seen: BaseException | None = exc
    message = str(exc) or type(exc).__name__
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return f"cannot resolve the host ({seen.strerror})"
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ECONNREFUSED:
                return "connection refused (is redis-server running there?)"
            return (seen.strerror or str(seen)).lower()
        if isinstance(seen, trio.TooSlowError | TimeoutError):
            return "no answer in time"
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
            continue
        seen = seen.__cause__ or seen.__context__
    return message


def _shown(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(//[^:@/]*:)[^@/]*@", r"\1***@", url)


def _client(url: str, name: str) -> Redis[bytes]:
    try:
        import coredis
        from coredis.retry import NoRetryPolicy
    except ImportError:
        raise StartupError(
            f"--redis needs the coredis package, which is not installed: {INSTALL_HINT}"
        ) from None
    try:
        return coredis.Redis.from_url(
            url,
            connect_timeout=CONNECT_TIMEOUT,
            client_name=name,
            # Retries (with backoff, and resuming where we left off) are ours.
            retry_policy=NoRetryPolicy(),
        )
    except (ValueError, TypeError) as exc:
        raise StartupError(f"bad Redis URL {_shown(url)!r}: {exc}") from None


@asynccontextmanager
async def connect(
    url: str, *, channel: str, maxlen: int, name: str | None = None
) -> AsyncIterator[RedisStream]:
    """Connect to Redis and check that the channel's key can be a stream.

    Any failure here (a bad URL, a refused connection, an unknown host, bad
    credentials, a key of another type) raises :class:`StartupError` with one
    line saying which, within :data:`CONNECT_TIMEOUT`. ``name`` is the
    connection's ``CLIENT SETNAME`` (default: ``trio-broadcast-<pid>``), so an
    operator can tell the instances apart in ``CLIENT LIST``.
    """
    client = _client(url, name or f"trio-broadcast-{os.getpid()}")
    from coredis.exceptions import AuthenticationError, AuthorizationError

    key = stream_key(channel)
    where = _shown(url)
    async with client:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await client.ping()
                kind = await client.type(key)
        except (AuthenticationError, AuthorizationError) as exc:
            raise StartupError(f"Redis at {where} refused the credentials: {exc}") from None
        except _coredis_errors() as exc:
            raise StartupError(f"cannot use Redis at {where}: {_why(exc)}") from None
        if kind not in (None, b"none", b"stream"):
            shown = kind.decode(errors="replace") if isinstance(kind, bytes) else kind
            raise StartupError(f"Redis key {key!r} at {where} holds a {shown}, not a stream")
        log.info("sharing channel %r through Redis at %s", channel, where)
        yield RedisStream(client, key, maxlen)


# --- I/O: the adapter -------------------------------------------------------------------


class RedisStream:
    """One channel's stream: each method is one conversation with Redis.

    Every method raises what coredis raises when Redis is unreachable (see
    :func:`_coredis_errors`); retrying is the caller's business.
    """

    def __init__(self, client: Redis[bytes], key: str, maxlen: int) -> None:
        self.client = client
        self.key = key
        self.maxlen = maxlen

    async def append(self, lines: Sequence[str]) -> EntryId:
        """Append one entry per line, all or none (``MULTI``/``EXEC``); the last ID."""
        from coredis import PureToken

        with trio.fail_after(REQUEST_TIMEOUT):
            async with self.client.pipeline(transaction=True) as pipe:
                for line in lines:
                    pipe.xadd(
                        self.key,
                        encode_line(line),
                        trim_strategy=PureToken.MAXLEN,
                        trim_operator=PureToken.APPROXIMATELY,
                        threshold=self.maxlen,
                    )
        results = pipe.results
        assert results, "an empty append"
        return EntryId.parse(results[-1])

    async def counters(self) -> tuple[int, int]:
        """``(entries-added, length)`` of the stream; ``(0, 0)`` if it does not exist."""
        info = await self._info()
        return (0, 0) if info is None else (info[0], info[1])

    async def latest(self, count: int) -> tuple[Cursor, list[str]]:
        """A reader's starting point: the stream's end, and its last ``count`` lines."""
        info = await self._info()
        if info is None:
            return Cursor(), []
        added, _length, last = info
        lines: list[str] = []
        if count:
            with trio.fail_after(REQUEST_TIMEOUT):
                entries = await self.client.xrevrange(self.key, end=str(last), count=count)
            for entry in reversed(entries):
                line = decode_entry(entry.field_values)
                if line is not None:
                    lines.append(line)
        return Cursor(last, added), lines

    async def read(
        self, after: EntryId, count: int, block_ms: int
    ) -> list[tuple[EntryId, str | None]]:
        """Up to ``count`` entries after ``after``, waiting up to ``block_ms`` for one."""
        with trio.fail_after(block_ms / 1000 + REQUEST_TIMEOUT):
            reply = await self.client.xread({self.key: str(after)}, count=count, block=block_ms)
        if not reply:
            return []
        entries = reply.get(self.key.encode(), ())
        return [
            (EntryId.parse(entry.identifier), decode_entry(entry.field_values))
            for entry in entries
        ]

    async def _info(self) -> tuple[int, int, EntryId] | None:
        from coredis.exceptions import ResponseError

        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                info = await self.client.xinfo_stream(self.key)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        return info["entries-added"], info["length"], EntryId.parse(info["last-generated-id"])


# --- I/O: retrying ----------------------------------------------------------------------


class _Link:
    """Whether Redis answers, as one side sees it; logs only the changes of state."""

    def __init__(self, role: str, where: str) -> None:
        self._role = role
        self._where = where
        self._down_since: float | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def lost(self, exc: BaseException, consequence: str) -> None:
        if self._down_since is None:
            self._down_since = trio.current_time()
            log.warning(
                "%s: Redis at %s unreachable (%s); %s, retrying with backoff",
                self._role,
                self._where,
                _why(exc),
                consequence,
            )

    def back(self) -> None:
        if self._down_since is not None:
            log.info(
                "%s: Redis at %s is back after %.1f s",
                self._role,
                self._where,
                trio.current_time() - self._down_since,
            )
            self._down_since = None


async def _retry(
    link: _Link, backoff: Backoff, consequence: str, call: Callable[[], Awaitable[T]]
) -> T:
    """``await call()`` until Redis answers; only Redis's own failures are retried."""
    errors = _coredis_errors()
    attempt = 0
    while True:
        try:
            result = await call()
        except errors as exc:
            link.lost(exc, consequence)
            await trio.sleep(backoff.delay(attempt, random.random()))
            attempt += 1
        else:
            link.back()
            return result


def _where(stream: RedisStream) -> str:
    location = stream.client.connection_pool.location
    return str(location) if location is not None else "?"


# --- I/O: the publisher -------------------------------------------------------------------


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
    link = _Link("publisher", _where(stream))
    last: EntryId | None = None

    async def publish(lines: Sequence[str]) -> None:
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
                last = await _retry(
                    link, backoff, "holding input in order", partial(stream.append, lines)
                )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        async with send:
            await source(publish)
    return last


# --- I/O: the reader ------------------------------------------------------------------------


class Follower:
    """Reads the stream from where it left off and publishes each read as one batch.

    Start it with ``await nursery.start(follower.run)``: that returns once the
    last ``history`` lines are published, so they come before anything live.
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
        self._link = _Link("reader", _where(stream))
        self.cursor = Cursor()
        self._progress = trio.Event()

    async def delivered(self, entry: EntryId) -> None:
        """Wait until every entry up to ``entry`` has been published."""
        while self.cursor.last < entry:
            progress = self._progress
            await progress.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        self.cursor, lines = await _retry(
            self._link,
            self._backoff,
            "clients stay connected",
            partial(self._stream.latest, self._history),
        )
        if lines:
            await self._publish(lines)
        task_status.started()
        check = False
        attempt = 0
        errors = _coredis_errors()
        while True:
            try:
                if check:
                    self._report(self.cursor.resync(*await self._stream.counters()))
                    check = False
                entries = await self._stream.read(self.cursor.last, self._count, self._block_ms)
            except errors as exc:
                self._link.lost(exc, "clients stay connected")
                check = True  # entries may have been trimmed meanwhile
                await trio.sleep(self._backoff.delay(attempt, random.random()))
                attempt += 1
                continue
            self._link.back()
            attempt = 0
            lines = []
            for entry_id, line in entries:
                self.cursor.advance(entry_id)
                if line is not None:
                    lines.append(line)
            if lines:
                await self._publish(lines)
            # A full read means it is behind: check that it is not behind the trimming.
            check = len(entries) == self._count
            self._progress.set()
            self._progress = trio.Event()

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
) -> LineSource:
    """The server's line source with Redis: follow the stream; append ``stdin`` to it.

    It returns only with ``exit_on_eof``, once ``stdin`` has ended and every
    line it read has come back from the stream and been published; otherwise
    the instance keeps serving the stream after its own input ends.
    """

    async def source(publish: Publish) -> None:
        follower = Follower(stream, publish, history=history)
        async with trio.open_nursery() as nursery:
            await nursery.start(follower.run)
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
