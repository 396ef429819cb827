"""Resuming across instances: ``trio-broadcast.v1`` clients, entry IDs and a real redis-server.

With ``--redis`` a line's ID is its stream entry ID, the same on every
instance, and a resume reads the stream with ``XRANGE``
(:class:`~trio_broadcast.redis_stream.StreamHistory`). End to end, with the
installed command and the independent ``websockets`` client: a client that
loses its TCP connection (a reset) comes back on another instance, or on its
own after a restart, and misses nothing still in the stream; an ID the stream
no longer holds, or never held, gets a gap notice; an unreachable Redis gets
1013. Where the end-to-end path would be slow, :class:`StreamHistory` is
tested on its own against the same redis-server. Every wait is bounded by
``trio.fail_after`` and ends on an event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from trio_broadcast import subprotocol
from trio_broadcast.redis_stream import ORIGIN, EntryId, RedisStream, StreamHistory, stream_key
from trio_broadcast.redis_stream import history as history_module
from trio_broadcast.retention import Evicted, Gap, Start, Unavailable

from ..conftest import Process
from ..e2e import recv_texts, seen_connected, stop, url_port, ws
from ..wire import line_messages, reset
from .conftest import RedisServer
from .test_redis_stream import channel
from .test_scale_out import assert_clean, instance, write_lines

coredis = pytest.importorskip("coredis", reason="the redis extra is not installed")

KEY = stream_key("trio-broadcast")
"""The stream of the command's default channel."""

Message = dict[str, Any]


class V1Client:
    """A ``websockets`` client speaking ``trio-broadcast.v1``, on a TCP stream we can reset."""

    def __init__(self, ws: ClientConnection, stream: trio.SocketStream) -> None:
        self.ws = ws
        self.stream = stream

    async def message(self) -> Message:
        text = await self.ws.recv()
        assert isinstance(text, str), text
        message = json.loads(text)
        assert isinstance(message, dict), message
        return message

    async def hello(self) -> str:
        message = await self.message()
        assert message["type"] == "hello", message
        assert isinstance(message["id"], str), message
        return message["id"]

    async def lines(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` messages, each a ``line``: ``(id, line)`` pairs."""
        received = []
        for _ in range(count):
            message = await self.message()
            assert message["type"] == "line", message
            received.append((message["id"], message["line"]))
        return received

    def reset(self) -> None:
        """Vanish with a TCP reset, without a close frame."""
        reset(self.stream)


@asynccontextmanager
async def v1_client(process: Process, since: str | None = None) -> AsyncIterator[V1Client]:
    """Connected, and seen connected by the server (so it is subscribed)."""
    url = process.url + ("" if since is None else f"?since={quote(since, safe='')}")
    stream = await trio.open_tcp_stream("127.0.0.1", url_port(process.url))
    try:
        async with connect(
            url,
            stream=stream,
            subprotocols=[Subprotocol(subprotocol.NAME)],
            proxy=None,
            open_timeout=5,
            close_timeout=2,
            ping_interval=None,
            # No flow control: a reader paused on a full queue would not see the reset.
            max_queue=None,
        ) as client:
            assert client.subprotocol == subprotocol.NAME
            await seen_connected(process, client.local_address[1])
            yield V1Client(client, stream)
    except trio.ClosedResourceError:
        assert stream.socket.fileno() == -1  # reset by the test: closing it failed, as it must


async def entries_of(server: RedisServer, key: str = KEY) -> list[tuple[str, str]]:
    """Every ``(entry ID, line)`` in a stream, read with ``XRANGE``."""
    async with coredis.Redis.from_url(server.url, decode_responses=True) as admin:
        return [
            (entry.identifier, entry.field_values["line"])
            for entry in await admin.xrange(key, "-", "+")
        ]


async def trim_exactly(server: RedisServer, keep: int, key: str = KEY) -> None:
    """``XTRIM MAXLEN keep``, exactly (``MAXLEN ~`` trims whole nodes only)."""
    async with coredis.Redis.from_url(server.url) as admin:
        await admin.xtrim(key, threshold=keep, trim_strategy=coredis.PureToken.MAXLEN)


def just_before(entry: str) -> str:
    """Where a trimmed stream starts, if ``entry`` is its first: the ID before it."""
    return str(EntryId.parse(entry).before())


async def close_code(client: V1Client) -> int:
    """The code of the close frame that ends the connection, with no message before it."""
    with pytest.raises(ConnectionClosed) as closed:
        await client.message()
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code


def feed(count: int, prefix: str = "line") -> list[str]:
    return [f"{prefix} {n:05d}" for n in range(count)]


def texts(pairs: list[tuple[str, str]]) -> list[str]:
    return [line for _, line in pairs]


# --- end to end: the installed command, two instances, one redis-server -------------------


async def test_a_client_reset_on_one_instance_resumes_on_another_exactly(
    redis_server: RedisServer,
) -> None:
    lines = feed(3000)
    with trio.fail_after(60):
        async with (
            instance(redis_server) as publisher,
            instance(redis_server, "--no-stdin") as serving,
            v1_client(serving) as watcher,
        ):
            await watcher.hello()
            async with v1_client(publisher) as moving:
                await moving.hello()
                await write_lines(publisher, lines[:1500])
                received = await moving.lines(1000)
                moving.reset()  # 500 lines on their way are lost with the connection
            last = received[-1][0]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_lines, publisher, lines[1500:])  # mid-feed
                async with v1_client(serving, since=last) as moved:
                    assert await moved.hello() == last
                    received += await moved.lines(len(lines) - len(received))
            watched = await watcher.lines(len(lines))
            for process in (publisher, serving):
                assert_clean(process.stderr.decode())
        entries = await entries_of(redis_server)
    assert texts(received) == lines  # all, in order, none twice
    assert received == watched  # each line has the same ID on both instances
    assert received == entries  # and that ID is its stream entry ID


async def test_a_client_resumes_on_its_instance_restarted_without_a_gap(
    redis_server: RedisServer,
) -> None:
    lines = feed(1500)
    with trio.fail_after(60):
        async with instance(redis_server) as publisher, v1_client(publisher) as watcher:
            await watcher.hello()
            async with (
                instance(redis_server, "--no-stdin") as first_run,
                v1_client(first_run) as client,
            ):
                await client.hello()
                await write_lines(publisher, lines[:500])
                received = await client.lines(500)
                await stop(first_run)
                assert await close_code(client) == 1001
            # While the instance is down, the feed goes on; the stream keeps it.
            await write_lines(publisher, lines[500:1000])
            watched = await watcher.lines(1000)
            last = received[-1][0]
            async with (
                instance(redis_server, "--no-stdin") as second_run,
                v1_client(second_run, since=last) as client,
            ):
                assert await client.hello() == last  # no gap notice: the next is a line
                received += await client.lines(500)
                await write_lines(publisher, lines[1000:])
                received += await client.lines(500)
                assert_clean(second_run.stderr.decode())
            watched += await watcher.lines(500)
    assert texts(received) == lines
    assert received == watched


async def test_an_id_the_stream_no_longer_holds_or_never_held_gets_a_gap_notice(
    redis_server: RedisServer,
) -> None:
    lines = feed(100)
    with trio.fail_after(60):
        async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as admin:
            elsewhere_before = await admin.xadd(stream_key("other"), {"line": "x"})
        async with (
            instance(redis_server, "--redis-maxlen", "10") as publisher,
            v1_client(publisher) as watcher,
        ):
            await watcher.hello()
            await write_lines(publisher, lines)
            watched = await watcher.lines(len(lines))
            await trim_exactly(redis_server, keep=10)
            start = just_before(watched[90][0])
            async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as admin:
                elsewhere_after = await admin.xadd(stream_key("other"), {"line": "y"})
            retained = watched[90:]
            for since in (
                watched[4][0],  # trimmed
                str(ORIGIN),  # before the first entry, which was trimmed
                "abc:3",  # an ID of an instance without --redis
                elsewhere_before,  # of another stream, older than ours
                elsewhere_after,  # of another stream, newer than ours
                "999999999999999-0",  # later than any
                "not an ID",
                "",
            ):
                async with v1_client(publisher, since=since) as client:
                    assert await client.hello() == start
                    gap = {"type": "gap", "since": since, "missed": None}
                    assert await client.message() == gap
                    assert await client.lines(len(retained)) == retained
                    await write_lines(publisher, [f"live after {since!r}"])
                    live = await client.lines(1)
                    assert texts(live) == [f"live after {since!r}"]
                    assert await watcher.lines(1) == live
                    retained += live  # MAXLEN ~ 10 trims whole nodes of 100: none yet
            assert_clean(publisher.stderr.decode())


async def test_the_hello_of_a_new_client_with_history_is_just_before_its_history(
    redis_server: RedisServer,
) -> None:
    lines = feed(20)
    with trio.fail_after(30):
        async with (
            instance(redis_server) as publisher,
            instance(redis_server, "--no-stdin", "--history", "5") as serving,
            instance(redis_server, "--no-stdin", "--history", "50") as more_than_there_is,
            v1_client(serving) as watcher,
        ):
            assert await watcher.hello() == str(ORIGIN)  # an empty stream
            await write_lines(publisher, lines)
            watched = await watcher.lines(len(lines))
            async with v1_client(serving) as new:
                hello = await new.hello()
                assert hello == watched[14][0]
                assert await new.lines(5) == watched[15:]
            async with v1_client(serving, since=hello) as resumed:
                assert await resumed.hello() == hello
                assert await resumed.lines(5) == watched[15:]
            async with ws(serving.url) as plain:
                assert await recv_texts(plain, 5) == lines[15:]
            # Fewer lines than --history: the hello is where the stream starts, 0-0.
            async with v1_client(more_than_there_is) as new:
                assert await new.hello() == str(ORIGIN)
                assert await new.lines(20) == watched
            async with v1_client(more_than_there_is, since=str(ORIGIN)) as resumed:
                assert await resumed.hello() == str(ORIGIN)
                assert await resumed.lines(20) == watched
            for process in (publisher, serving, more_than_there_is):
                assert_clean(process.stderr.decode())


async def test_a_resume_while_redis_is_unreachable_is_closed_with_1013(
    redis_server: RedisServer,
) -> None:
    lines = feed(10)
    with trio.fail_after(60):
        async with (
            instance(redis_server) as publisher,
            instance(redis_server, "--no-stdin") as serving,
            ws(serving.url) as plain,
            v1_client(serving) as watcher,
        ):
            await watcher.hello()
            await write_lines(publisher, lines)
            watched = await watcher.lines(len(lines))
            assert await recv_texts(plain, len(lines)) == lines
            redis_server.stop()
            async with v1_client(serving, since=watched[4][0]) as resuming:
                assert await close_code(resuming) == 1013
            # A new v1 client has nothing to catch up on: it needs no Redis to start.
            async with v1_client(serving) as new:
                await new.hello()
                redis_server.start()  # same port, empty: no persistence
                await write_lines(publisher, ["back"])
                assert texts(await new.lines(1)) == ["back"]
                assert await recv_texts(plain, 1) == ["back"]
                assert texts(await watcher.lines(1)) == ["back"]
            for process in (publisher, serving):
                assert_clean(process.stderr.decode())


# --- StreamHistory against redis-server ---------------------------------------------------


class Following:
    """A :class:`StreamHistory` on a stream, following a position the test moves."""

    def __init__(self, server: RedisServer, stream: RedisStream) -> None:
        self.server = server
        self.stream = stream
        self.history = StreamHistory(stream)
        self.ids: list[str] = []
        self.moved = trio.Event()
        self.history.follow(lambda: EntryId.parse(self.position), self.delivered)

    async def delivered(self, entry: EntryId) -> None:
        """As :meth:`Follower.delivered`: wait until the position has reached ``entry``."""
        while EntryId.parse(self.position) < entry:
            await self.moved.wait()

    def publish(self, *ids: str) -> None:
        """This instance has now read and published up to these entries."""
        self.ids += ids
        self.moved.set()
        self.moved = trio.Event()

    @property
    def position(self) -> str:
        return self.ids[-1] if self.ids else str(ORIGIN)

    async def append(self, *lines: str) -> list[str]:
        """Append each line as its own entry; their IDs, now published."""
        new = [str(await self.stream.append([line])) for line in lines]
        self.ids += new
        return new

    async def append_at(self, *ids: str) -> list[tuple[str, str]]:
        """One entry per ID given, each a line of ours: ``(id, line)`` pairs."""
        async with coredis.Redis.from_url(self.server.url, decode_responses=True) as admin:
            for id in ids:
                await admin.xadd(self.stream.key, {"line": f"at {id}"}, identifier=id)
        self.ids += ids
        return [(id, f"at {id}") for id in ids]

    async def append_foreign(self, count: int) -> list[str]:
        """Entries that are not lines of ours (another program's fields)."""
        async with coredis.Redis.from_url(self.server.url, decode_responses=True) as admin:
            new = [await admin.xadd(self.stream.key, {"other": str(n)}) for n in range(count)]
        self.ids += new
        return new

    async def start(self, since: str | None, history: int = 0) -> Start:
        return await self.history.start(since, history, self.position)

    async def read(self, after: str, limit: int = 100) -> list[tuple[str, str]]:
        return line_messages((await self.history.read(after, self.position, limit)).frames)


@asynccontextmanager
async def following(server: RedisServer) -> AsyncIterator[Following]:
    async with channel(server, name="trio-broadcast") as stream:
        with trio.fail_after(10):
            yield Following(server, stream)


async def test_a_client_from_an_instance_ahead_waits_for_this_one_to_catch_up(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with following(redis_server) as stream:
        await stream.append("a")
        # Appended, and published by another instance, not yet by this one.
        ahead = [str(await stream.stream.append([line])) for line in ("b", "c")]
        with pytest.raises(Unavailable):
            await stream.start(ahead[0])
        async with trio.open_nursery() as nursery:
            ready = trio.Event()

            async def resume() -> None:
                await stream.history.ready(ahead[0])
                ready.set()

            nursery.start_soon(resume)
            await trio.testing.wait_all_tasks_blocked()
            assert not ready.is_set()
            stream.publish(ahead[0])
            await ready.wait()
        assert await stream.start(ahead[0]) == Start(ahead[0])
        # One that never catches up waits a bounded time; then start() decides (1013).
        monkeypatch.setattr(history_module, "CATCH_UP_WAIT", 0.2)
        with trio.fail_after(5):
            await stream.history.ready(str(EntryId.parse(ahead[1]).ms + 10**9) + "-0")


async def test_an_id_still_in_the_stream_is_exact(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        ids = await stream.append("a", "b", "c", "d", "e")
        assert await stream.start(ids[1]) == Start(ids[1])
        assert await stream.read(ids[1]) == list(zip(ids[2:], "cde", strict=True))
        assert await stream.read(ids[1], limit=2) == list(zip(ids[2:4], "cd", strict=True))
        chunk = await stream.history.read(ids[1], ids[2], 100)
        assert (line_messages(chunk.frames), chunk.last) == ([(ids[2], "c")], ids[2])
        assert await stream.read(ids[4]) == []  # nothing after the position: the end


async def test_origin_is_exact_until_the_stream_is_trimmed(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        assert await stream.start(str(ORIGIN)) == Start(str(ORIGIN))  # no stream yet
        assert await stream.start(None) == Start(str(ORIGIN))
        ids = await stream.append("a", "b", "c")
        assert await stream.start(str(ORIGIN)) == Start(str(ORIGIN))
        assert await stream.read(str(ORIGIN)) == list(zip(ids, "abc", strict=True))
        await trim_exactly(redis_server, keep=2)
        start = await stream.start(str(ORIGIN))
        assert start.gap == Gap(str(ORIGIN), None)
        assert await stream.read(start.position) == list(zip(ids[1:], "bc", strict=True))


async def test_an_id_older_than_the_stream_gets_a_gap_then_what_is_left(
    redis_server: RedisServer,
) -> None:
    async with following(redis_server) as stream:
        entries = await stream.append_at("1-1", "1-2", "1-3", "2-0", "3-0", "3-5")
        await trim_exactly(redis_server, keep=3)
        start = just_before("2-0")
        # The last one trimmed too: Redis does not record where trimming stopped.
        for trimmed in ("1-1", "1-2", "1-3"):
            assert await stream.start(trimmed) == Start(start, Gap(trimmed, None))
            assert await stream.read(start) == entries[3:]
        # The hello of a client that has caught up after such a gap is exact,
        # and so is the hello of a new client with more --history than is left.
        assert await stream.start(start) == Start(start)
        assert await stream.start(None, history=10) == Start(start)


async def test_the_entry_just_before_the_first_is_exact(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        entries = await stream.append_at("1-1", "1-2", "1-3", "1-4")
        await trim_exactly(redis_server, keep=2)
        assert await stream.start("1-2") == Start("1-2")  # nothing can come between
        assert await stream.read("1-2") == entries[2:]


async def test_an_id_that_was_never_in_the_stream_gets_a_gap(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        ids = await stream.append("a", "b")
        between = str(EntryId(EntryId.parse(ids[0]).ms, EntryId.parse(ids[0]).seq + 1000))
        later = str(EntryId(EntryId.parse(ids[1]).ms + 10**9, 0))
        for since in ("abc:3", "garbage", "", between, later):
            assert await stream.start(since) == Start(str(ORIGIN), Gap(since, None)), since


async def test_an_id_this_instance_has_not_read_yet_is_to_try_again(
    redis_server: RedisServer,
) -> None:
    async with following(redis_server) as stream:
        ids = await stream.append("a", "b", "c")
        # The client saw "c" on an instance ahead of this one, which has
        # published only "a": a gap would send it "a" to "c" again.
        with pytest.raises(Unavailable):
            await stream.history.start(ids[2], 0, ids[0])
        assert await stream.history.start(ids[0], 0, ids[0]) == Start(ids[0])


async def test_the_hello_with_history_is_the_entry_before_the_first_line(
    redis_server: RedisServer,
) -> None:
    async with following(redis_server) as stream:
        ids = await stream.append(*"abcdef")
        assert await stream.start(None, history=2) == Start(ids[3])
        assert await stream.start(None, history=6) == Start(str(ORIGIN))
        assert await stream.start(None, history=0) == Start(ids[5])


async def test_reading_skips_entries_that_are_not_ours(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        first = await stream.append("a")
        await stream.append_foreign(5)  # more than a chunk of entries that are not lines
        last = await stream.append("b")
        assert await stream.read(first[0], limit=2) == [(last[0], "b")]
        await stream.append_foreign(3)
        assert await stream.read(last[0], limit=2) == []


async def test_reading_after_a_trimmed_position_is_evicted(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        ids = await stream.append(*"abcdef")
        assert await stream.read(ids[0], limit=2) == list(zip(ids[1:3], "bc", strict=True))
        await trim_exactly(redis_server, keep=2)  # "c" and "d" were not sent yet
        with pytest.raises(Evicted):
            await stream.read(ids[2], limit=2)


async def test_a_deleted_entry_is_not_taken_for_trimming(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        ids = await stream.append("a", "b")
        foreign = await stream.append_foreign(1)
        async with coredis.Redis.from_url(redis_server.url) as admin:
            assert await admin.xdel(stream.stream.key, foreign) == 1  # another program's
        assert await stream.start(ids[0]) == Start(ids[0])
        assert await stream.read(ids[0]) == [(ids[1], "b")]


async def test_an_unreachable_redis_is_unavailable(redis_server: RedisServer) -> None:
    async with following(redis_server) as stream:
        ids = await stream.append("a", "b")
        redis_server.stop()
        with pytest.raises(Unavailable):
            await stream.start(ids[0])
        with pytest.raises(Unavailable):
            await stream.read(ids[0])
        # A client with nothing to catch up on needs no Redis.
        assert await stream.start(None) == Start(ids[1])
        assert await stream.read(ids[1]) == []
