"""The Redis adapter: every conversation with Redis goes through it; only it imports coredis.

``coredis`` is an optional dependency (``pip install 'trio-broadcast[redis]'``);
it is imported only when :func:`connect` runs, so the rest of the package (and
this module) imports without it. It is built on anyio and runs on Trio
natively: its connection pool is a task group opened by ``async with``.

coredis parses the URL, checks the server at start-up and runs the cold
commands (``XINFO``, ``XRANGE``, ``XREVRANGE``). The two hot ones, the
append's ``EVAL`` and the read's ``XREAD BLOCK``, run on connections of our
own (:mod:`~trio_broadcast.redis_stream.resp_connection`), made with the
settings coredis took from the same URL (:func:`settings`): a request and its
reply cost a fraction of coredis's client CPU.

:func:`connect` is start-up, where every failure is a one-line
:class:`~trio_broadcast.errors.StartupError`; :class:`RedisStream` has one
method per conversation with Redis, and leaves retrying to its callers
(:func:`~trio_broadcast.redis_stream.retrying.retry`, with :func:`unreachable`
as the errors worth a retry).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import trio

from ..errors import StartupError
from .entries import (
    FIELD,
    ORIGIN,
    Cursor,
    Entries,
    EntryId,
    decode_entries,
    decode_entry,
    encode_value,
    stream_key,
)
from .resp import RespError
from .resp_connection import RespConnection, Settings, open_connection
from .retrying import why

if TYPE_CHECKING:
    from coredis import Redis

log = logging.getLogger("trio_broadcast")

CONNECT_TIMEOUT = 5.0
"""Seconds for all of start-up's checks together (connect, authenticate,
``PING``, the key's type, the append check, the read's own connection), within
the 10 s a supervisor may wait for a failing start."""
REQUEST_TIMEOUT = 10.0
"""Seconds an answer may take before the connection is considered dead."""
INSTALL_HINT = "pip install 'trio-broadcast[redis]'"


@functools.cache
def unreachable() -> tuple[type[BaseException], ...]:
    """What "Redis is unreachable or refused" looks like: worth a retry, never a crash.

    coredis's errors, and our own connection's (:class:`OSError` for a lost
    connection, :class:`~trio_broadcast.redis_stream.resp.RespError` for an
    error reply or a reply that is not RESP2), which is what coredis did
    with both: a ``WRONGTYPE`` or ``NOPERM`` once running is retried, as
    before, with the retry loop's one log line.
    """
    from coredis.exceptions import RedisError

    return (RedisError, RespError, TimeoutError, OSError, trio.TooSlowError)


def shown_url(url: str) -> str:
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
        raise StartupError(f"bad Redis URL {shown_url(url)!r}: {exc}") from None


@asynccontextmanager
async def connect(
    url: str, *, channel: str, maxlen: int, name: str | None = None, append: bool = False
) -> AsyncIterator[RedisStream]:
    """Connect to Redis and check that the channel's key can be a stream.

    Any failure here (a bad URL, a refused connection, an unknown host, bad
    credentials, a key of another type) raises :class:`StartupError` with one
    line saying which, within :data:`CONNECT_TIMEOUT`. ``name`` is the
    connection's ``CLIENT SETNAME`` (default: ``trio-broadcast-<pid>``), so an
    operator can tell the instances apart in ``CLIENT LIST``. With ``append``
    (an instance that publishes its input), the Redis user must also be allowed
    to append (:func:`check_append`): once running, a refusal would be retried
    forever, holding the input, so it is a start-up error instead.
    """
    client = _client(url, name or f"trio-broadcast-{os.getpid()}")
    from coredis.exceptions import AuthenticationError, AuthorizationError

    key = stream_key(channel)
    where = shown_url(url)
    deadline = trio.current_time() + CONNECT_TIMEOUT
    async with client:
        try:
            with trio.fail_at(deadline):
                await client.ping()
                kind = await client.type(key)
        except (AuthenticationError, AuthorizationError) as exc:
            raise StartupError(f"Redis at {where} refused the credentials: {exc}") from None
        except unreachable() as exc:
            raise StartupError(f"cannot use Redis at {where}: {why(exc)}") from None
        if kind not in (None, b"none", b"stream"):
            shown = kind.decode(errors="replace") if isinstance(kind, bytes) else kind
            raise StartupError(f"Redis key {key!r} at {where} holds a {shown}, not a stream")
        if append:
            await check_append(client, key, maxlen, where, deadline)
        log.info("sharing channel %r through Redis at %s", channel, where)
        stream = RedisStream(client, key, maxlen, settings(client))
        try:
            try:
                with trio.fail_at(deadline):
                    await stream.open()
            except unreachable() as exc:
                raise StartupError(f"cannot use Redis at {where}: {why(exc)}") from None
            yield stream
        finally:
            await stream.aclose()


def settings(client: Redis[bytes]) -> Settings:
    """How coredis connects for ``client``, for our own connections to the same server.

    coredis 6 keeps what it parsed from the URL on the pool: its ``location``
    (TCP host and port, or a unix socket's path) and its
    ``connection_kwargs`` (username, password, ``db``, ``client_name``,
    ``ssl_context`` for ``rediss://``, ``connect_timeout``, ``noevict``,
    ``notouch``), from which it makes each connection.
    """
    from coredis.connection import TCPLocation, UnixDomainSocketLocation

    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    location = pool.location
    if isinstance(location, UnixDomainSocketLocation):
        host, port, path, tls = None, 0, location.path, None
    elif isinstance(location, TCPLocation):
        host, port, path, tls = location.host, location.port, None, kwargs.get("ssl_context")
    else:
        raise StartupError(f"cannot tell where Redis is from coredis's location {location!r}")
    return Settings(
        host=host,
        port=port,
        path=path,
        ssl_context=tls,
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        db=kwargs.get("db") or 0,
        client_name=kwargs.get("client_name"),
        noevict=bool(kwargs.get("noevict")),
        notouch=bool(kwargs.get("notouch")),
        connect_timeout=kwargs.get("connect_timeout"),
    )


APPEND_SCRIPT = b"""#!lua
local id
for i = 3, #ARGV do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[i])
end
return id
"""
"""``EVAL APPEND_SCRIPT 1 key maxlen field line…``: one entry per line, in order, all or none.

A script runs atomically: no other client's entry comes between its lines,
and an error (the key turned into another type, Redis out of memory: the
``#!lua`` header makes Redis refuse the whole script rather than stop it
midway) appends nothing. It replaces ``MULTI``/``XADD``…/``EXEC``, which gave
the same guarantee for about 13 times the client's CPU per line (bench/README.md,
"The Redis path")."""


CHECK_APPEND_SCRIPT = b"""#!lua flags=no-writes
return redis.acl_check_cmd('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], '')
"""
"""``EVAL CHECK_APPEND_SCRIPT 1 key maxlen field``: 1 if the user may run
:data:`APPEND_SCRIPT`'s ``XADD`` on ``key``, nil if not; writes nothing."""


async def check_append(
    client: Redis[bytes], key: str, maxlen: int, where: str, deadline: float
) -> None:
    """Raise :class:`StartupError` unless this Redis user may append to ``key``
    (or Redis does not answer by ``deadline``, in :func:`trio.current_time`).

    Appending is ``EVAL`` of :data:`APPEND_SCRIPT`, which runs ``XADD``: an ACL
    user needs both (and write access to the key). Running a script that asks
    Redis (``redis.acl_check_cmd``, Redis 7) tests both without writing. What
    an ACL refuses is no outage: retried, it would hold standard input forever.
    """
    from coredis.exceptions import AuthorizationError

    try:
        with trio.fail_at(deadline):
            allowed = await client.eval(CHECK_APPEND_SCRIPT, [key], [maxlen, FIELD])
    except AuthorizationError as exc:
        raise StartupError(
            f"Redis at {where} does not let this user append to {key!r} (the ACL must allow "
            f"EVAL, and XADD on that key): {exc}"
        ) from None
    except unreachable() as exc:
        raise StartupError(f"cannot use Redis at {where}: {why(exc)}") from None
    if allowed != 1:
        raise StartupError(
            f"Redis at {where} does not let this user append to {key!r} (the ACL must allow "
            f"EVAL, and XADD on that key): this user has no permissions to run XADD on it"
        )


class RedisStream:
    """One channel's stream: each method is one conversation with Redis.

    Every method raises what :func:`unreachable` lists when Redis is
    unreachable or refuses; retrying is the caller's business.

    :meth:`append` and :meth:`read` are the hot path, one command each per
    batch of lines. Each keeps a :class:`RespConnection` of its own (a
    blocking ``XREAD`` holds its connection, and an append must not wait
    behind it), made from ``settings`` (same server, credentials, database and
    client name as coredis's), and used by one task at a time: the append by
    :func:`~trio_broadcast.redis_stream.feed.append_from`'s writer, the read by
    the :class:`~trio_broadcast.redis_stream.feed.Follower`. A request that
    did not complete (cancelled, timed out, lost) leaves its connection
    closed, since it would owe a reply; the next call opens a new one. They
    are not coredis's, so a lost one takes nothing from coredis's pool.

    The other methods use coredis's client and its pool.
    """

    def __init__(self, client: Redis[bytes], key: str, maxlen: int, settings: Settings) -> None:
        self.client = client
        self.key = key
        self.maxlen = maxlen
        self.settings = settings
        """Where the append's and the read's own connections go, and who they say they are."""
        self._raw_key = key.encode()
        self._held: dict[str, RespConnection] = {}
        self._closed = False

    async def _connection(self, role: str) -> RespConnection:
        """The connection kept for ``role``; a new one if it broke (or never was).

        Raises :class:`trio.ClosedResourceError` (not worth a retry) once the
        stream is closed: a task still using it must not open a connection
        that nobody would close.
        """
        self._check_open()
        connection = self._held.get(role)
        if connection is None or not connection.usable:
            if connection is not None:
                del self._held[role]
                await connection.aclose()
            connection = await open_connection(self.settings)
            if self._closed:  # while it was opening
                await connection.aclose()
                self._check_open()
            self._held[role] = connection
        return connection

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"the Redis stream {self.key!r} was closed")

    async def open(self) -> None:
        """Open the read's connection now: at start-up, where a failure is a
        :class:`StartupError` rather than a retry forever (coredis's connection
        worked, but ours might not: a TLS or ACL setting that treats them apart)."""
        await self._connection("read")

    async def aclose(self) -> None:
        """Close the append's and the read's connections."""
        self._closed = True
        held, self._held = self._held, {}
        for connection in held.values():
            await connection.aclose()

    async def append(self, lines: Sequence[str]) -> EntryId:
        """One entry per line, in order, all or none (:data:`APPEND_SCRIPT`); the last ID."""
        assert lines, "an empty append"
        with trio.fail_after(REQUEST_TIMEOUT):
            connection = await self._connection("append")
            reply = await connection.request(
                b"EVAL",
                APPEND_SCRIPT,
                1,
                self._raw_key,
                self.maxlen,
                FIELD,
                *[encode_value(line) for line in lines],
            )
        assert isinstance(reply, bytes), reply
        return EntryId.parse(reply)

    async def counters(self) -> tuple[int, int]:
        """``(entries-added, length)`` of the stream; ``(0, 0)`` if it does not exist."""
        info = await self._info()
        return (0, 0) if info is None else (info[0], info[1])

    async def latest(self, count: int) -> tuple[Cursor, list[tuple[EntryId, str]]]:
        """A reader's starting point: the stream's end, and its last ``count`` lines."""
        info = await self._info()
        if info is None:
            return Cursor(), []
        added, _length, last, _start = info
        lines: list[tuple[EntryId, str]] = []
        if count:
            with trio.fail_after(REQUEST_TIMEOUT):
                entries = await self.client.xrevrange(self.key, end=str(last), count=count)
            for entry in reversed(entries):
                line = decode_entry(entry.field_values)
                if line is not None:
                    lines.append((EntryId.parse(entry.identifier), line))
        return Cursor(last, added), lines

    async def start(self) -> EntryId:
        """Where the stream starts: every entry after it is still in the stream.

        ``0-0`` while no entry was ever removed; otherwise the ID just before
        the first entry left (``MAXLEN`` trims the oldest first), or the last
        one added when none is left. Redis does not record where trimming
        stopped (``max-deleted-entry-id`` counts ``XDEL`` only), so the last
        entry trimmed is, as far as anyone can tell, before the start.
        """
        info = await self._info()
        if info is None:
            return ORIGIN
        added, length, last, first = info
        if added == length:
            return ORIGIN
        return first.before() if length else last

    async def has(self, entry: EntryId) -> bool:
        """Whether ``entry`` is in the stream."""
        with trio.fail_after(REQUEST_TIMEOUT):
            found = await self.client.xrange(self.key, str(entry), str(entry), count=1)
        return bool(found)

    async def before(self, until: EntryId, count: int) -> EntryId | None:
        """The entry just before the last ``count`` up to ``until``; ``None`` if there are
        no more than ``count`` entries up to ``until``."""
        with trio.fail_after(REQUEST_TIMEOUT):
            entries = await self.client.xrevrange(self.key, str(until), "-", count=count + 1)
        return EntryId.parse(entries[-1].identifier) if len(entries) > count else None

    async def between(
        self, after: EntryId, until: EntryId, count: int
    ) -> list[tuple[EntryId, str | None]]:
        """Up to ``count`` entries after ``after`` (exclusive), up to ``until`` (inclusive)."""
        with trio.fail_after(REQUEST_TIMEOUT):
            entries = await self.client.xrange(self.key, f"({after}", str(until), count=count)
        return [
            (EntryId.parse(entry.identifier), decode_entry(entry.field_values))
            for entry in entries
        ]

    async def read(self, after: EntryId, count: int, block_ms: int) -> Entries:
        """Up to ``count`` entries after ``after``, waiting up to ``block_ms`` for one."""
        with trio.fail_after(block_ms / 1000 + REQUEST_TIMEOUT):
            connection = await self._connection("read")
            # Cancelled while blocked, the connection still owes XREAD's reply:
            # it is closed (RespConnection), never asked again.
            reply = await connection.request(
                b"XREAD",
                b"COUNT",
                count,
                b"BLOCK",
                block_ms,
                b"STREAMS",
                self._raw_key,
                str(after),
            )
        if reply is None:  # nothing came within block_ms
            return decode_entries(())
        # RESP2: [[key, [[id, [name, value, ...]], ...]]] for the one key asked.
        assert isinstance(reply, list), reply
        ((name, entries),) = cast("list[list[Any]]", reply)
        assert name == self._raw_key, name
        return decode_entries(entries)

    async def _info(self) -> tuple[int, int, EntryId, EntryId] | None:
        """``entries-added``, ``length``, ``last-generated-id``, ``recorded-first-entry-id``."""
        from coredis.exceptions import ResponseError

        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                info = await self.client.xinfo_stream(self.key)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        return (
            info["entries-added"],
            info["length"],
            EntryId.parse(info["last-generated-id"]),
            _reply_id(info["recorded-first-entry-id"]),
        )


def _reply_id(value: object) -> EntryId:
    """An entry ID in an ``XINFO STREAM`` reply.

    coredis 6.9 returns some of them as the ``str()`` of their bytes
    (``"b'0-0'"``), and may stop doing so in a later release: both are read.
    """
    text = value.decode("ascii") if isinstance(value, bytes) else str(value)
    if text.startswith("b'") and text.endswith("'"):
        text = text[2:-1]
    return EntryId.parse(text)


def where(stream: RedisStream) -> str:
    """The server ``stream`` talks to, as coredis names it, for log lines."""
    location = stream.client.connection_pool.location
    return str(location) if location is not None else "?"
