"""The Redis adapter against a real redis-server (its pure parts: tests/test_redis_pure.py).

* start-up errors, appending and reading, history,
  resuming after ``CLIENT KILL`` without loss or duplicate, and the publisher
  holding its input while Redis is away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from trio_broadcast import StartupError
from trio_broadcast.redis_stream import (
    ORIGIN,
    Cursor,
    Follower,
    RedisStream,
    connect,
    stream_key,
)
from trio_broadcast.redis_stream.adapter import unreachable
from trio_broadcast.redis_stream.resp import ReplyError
from trio_broadcast.redis_stream.resp_connection import ConnectionLost

from .conftest import REDIS_SERVER, RedisServer

coredis = pytest.importorskip("coredis", reason="the redis extra is not installed")


# --- against redis-server -----------------------------------------------------------------


@asynccontextmanager
async def channel(
    server: RedisServer, name: str = "test", maxlen: int = 100_000, client: str | None = None
) -> AsyncIterator[RedisStream]:
    with trio.fail_after(10):
        async with connect(server.url, channel=name, maxlen=maxlen, name=client) as stream:
            yield stream


async def startup_error(url: str, channel: str = "test", *, append: bool = False) -> str:
    """The one-line message of the StartupError that ``connect`` raises."""
    messages: list[str] = []
    with trio.fail_after(10):
        try:
            async with connect(url, channel=channel, maxlen=10, append=append):
                pass
        except* StartupError as group:
            messages += [str(error) for error in group.exceptions]
    assert len(messages) == 1, messages
    return messages[0]


async def test_refused_connection_is_one_clear_startup_error(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    message = await startup_error(url)
    assert (
        message
        == f"cannot use Redis at {url}: connection refused (is redis-server running there?)"
    )


async def test_bad_url_is_a_startup_error() -> None:
    message = await startup_error("redis://127.0.0.1:6379/0?db=notanumber")
    assert message.startswith("bad Redis URL 'redis://127.0.0.1:6379/0?db=notanumber'")


async def test_bad_credentials_are_a_startup_error_without_the_password(
    tmp_path: Path,
) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(REDIS_SERVER, tmp_path)
    server.start("--requirepass", "right-secret")
    try:
        message = await startup_error(f"redis://:wrong-secret@127.0.0.1:{server.port}/0")
    finally:
        server.stop()
    assert "refused the credentials" in message, message
    assert "wrong-secret" not in message


async def test_a_key_of_another_type_is_a_startup_error(redis_server: RedisServer) -> None:
    async with coredis.Redis.from_url(redis_server.url) as admin:
        await admin.set(stream_key("taken"), "x")
    message = await startup_error(redis_server.url, channel="taken")
    assert message.endswith("holds a string, not a stream"), message


@pytest.mark.parametrize(
    ("denied", "said"),
    [
        ("-eval", "this user has no permissions to run the 'eval' command"),
        ("-xadd", "this user has no permissions to run XADD on it"),
    ],
)
async def test_a_user_that_may_not_append_is_a_startup_error_for_a_publisher(
    tmp_path: Path, denied: str, said: str
) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(REDIS_SERVER, tmp_path)
    server.start("--user", "default", "off", "--user", "feed", "on", ">pw", "~*", "+@all", denied)
    url = f"redis://feed:pw@127.0.0.1:{server.port}/0"
    try:
        message = await startup_error(url, append=True)
        async with connect(url, channel="test", maxlen=10):
            pass  # an instance that only reads needs neither
    finally:
        server.stop()
    assert message.startswith(
        f"Redis at redis://feed:***@127.0.0.1:{server.port}/0 does not let this user append "
        "to 'trio-broadcast:test' (the ACL must allow EVAL, and XADD on that key): "
    ), message
    assert message.endswith(said), message


async def test_append_then_read_history_and_live(redis_server: RedisServer) -> None:
    async with channel(redis_server) as stream:
        cursor, history = await stream.latest(5)
        assert (cursor, history) == (Cursor(), [])  # no stream yet
        assert await stream.counters() == (0, 0)
        first = await stream.append(["a", "", "c"])
        last = await stream.append(["d", "e"])
        assert first < last
        cursor, history = await stream.latest(3)
        assert [line for _, line in history] == ["c", "d", "e"]
        assert history[-1][0] == last
        assert (cursor.last, cursor.number) == (last, 5)
        assert await stream.counters() == (5, 5)
        everything = await stream.read(ORIGIN, count=100, block_ms=100)
        assert everything.lines == ["a", "", "c", "d", "e"]
        assert (everything.last, everything.count) == (last, 5)
        assert everything.ids[-1] == str(last)
        nothing = await stream.read(last, count=100, block_ms=50)  # blocked, then nothing
        assert (nothing.lines, nothing.last, nothing.count) == ([], None, 0)


async def test_maxlen_caps_the_stream(redis_server: RedisServer) -> None:
    async with channel(redis_server, maxlen=10) as stream:
        for start in range(0, 5000, 500):
            await stream.append([str(n) for n in range(start, start + 500)])
        added, length = await stream.counters()
        assert added == 5000
        assert length < 1000  # "~": trimmed by whole nodes, so about 10


async def kill_clients_named(server: RedisServer, name: str) -> int:
    async with coredis.Redis.from_url(server.url) as admin:
        killed = 0
        for client in await admin.client_list():
            if client["name"] == name:
                killed += int(await admin.client_kill(identifier=int(client["id"])))
        return killed


async def test_reader_resumes_after_client_kill_without_loss_or_duplicate(
    redis_server: RedisServer,
) -> None:
    lines = [f"line {n}" for n in range(6000)]
    received: list[str] = []
    halfway, done = trio.Event(), trio.Event()

    async def publish(batch: Sequence[str], ids: Sequence[str] | None = None) -> None:
        received.extend(batch)
        if len(received) >= 2000:
            halfway.set()
        if len(received) >= len(lines):
            done.set()
        await trio.lowlevel.checkpoint()

    with trio.fail_after(20):
        async with (
            channel(redis_server) as writer,
            channel(redis_server, client="reader-under-test") as reading,
            trio.open_nursery() as nursery,
        ):
            follower = Follower(reading, publish, history=0, count=100)
            await nursery.start(follower.run)

            async def write() -> None:
                for start in range(0, len(lines), 200):
                    await writer.append(lines[start : start + 200])
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(write)
            await halfway.wait()
            assert await kill_clients_named(redis_server, "reader-under-test") >= 1
            await done.wait()
            nursery.cancel_scope.cancel()
    assert received == lines


async def test_a_read_cancelled_while_blocked_does_not_hold_up_the_next(
    redis_server: RedisServer,
) -> None:
    async with channel(redis_server) as stream:
        with trio.move_on_after(0.2) as waited:
            await stream.read(ORIGIN, count=10, block_ms=5000)
        assert waited.cancelled_caught
        # Not behind the abandoned XREAD BLOCK's 5 s: its connection was dropped.
        with trio.fail_after(2):
            assert (await stream.read(ORIGIN, count=10, block_ms=100)).count == 0
            await stream.append(["after"])
            entries = await stream.read(ORIGIN, count=10, block_ms=100)
        assert entries.lines == ["after"]


async def test_append_is_all_or_none_and_keeps_working_after_its_connection_dies(
    redis_server: RedisServer,
) -> None:
    async with channel(redis_server, client="writer-under-test") as stream:
        await stream.append(["a", "b"])
        async with coredis.Redis.from_url(redis_server.url) as admin:
            await admin.set("not-a-stream", "x")
        refused = RedisStream(stream.client, "not-a-stream", stream.maxlen, stream.settings)
        with pytest.raises(ReplyError) as raised:
            await refused.append(["c", "d"])
        assert raised.value.code == "WRONGTYPE"
        assert str(raised.value).startswith(
            "Redis refused EVAL: WRONGTYPE Operation against a key holding the wrong kind of value"
        ), raised.value
        assert isinstance(raised.value, unreachable())  # retried once running, as before
        await refused.aclose()
        # Redis closes both of its connections (the append's, and the read's, opened
        # at start-up) while they are idle, as its `timeout` setting would. Each is
        # replaced before its next command, which neither fails nor needs a retry.
        # (Redis closes a killed socket before it answers CLIENT KILL, and on
        # loopback its end arrives first.)
        assert await kill_clients_named(redis_server, "writer-under-test") >= 2
        await stream.append(["c", "d"])
        entries = await stream.read(ORIGIN, count=10, block_ms=10)
    assert entries.lines == ["a", "b", "c", "d"]


async def blocked(server: RedisServer, name: str) -> None:
    """Return once Redis says the client named ``name`` is blocked (``XREAD BLOCK``)."""
    async with coredis.Redis.from_url(server.url) as admin:
        while not any(
            client["name"] == name and "b" in client["flags"]
            for client in await admin.client_list()
        ):
            await trio.sleep(0.01)  # polls a condition; the caller bounds the time


async def test_connections_lost_while_held_do_not_use_up_the_pool(
    redis_server: RedisServer,
) -> None:
    """The append's and the read's connections are lost 3 times a round, 5 rounds.

    coredis's pool gives a slot back only for a connection idle in it: a held
    connection that died, or was dropped, used to take its slot for good, and
    with 2 slots the instance wedged (no append, no read, no XINFO) in round 1.
    """
    url = f"{redis_server.url}?max_connections=2"
    async with connect(url, channel="lost", maxlen=100, name="held") as stream:
        last = await stream.append(["start"])

        async def read_until_lost() -> None:
            with pytest.raises(ConnectionLost):
                await stream.read(last, count=10, block_ms=20_000)

        for done in range(1, 6):
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_until_lost)
                    await blocked(redis_server, "held")
                    # Kills the blocked read's connection and the append's, held between calls.
                    assert await kill_clients_named(redis_server, "held") >= 2
                for _ in range(2):  # the kill may or may not be noticed before the next append
                    try:
                        last = await stream.append(["after a kill"])
                        break
                    except ConnectionLost:
                        pass
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.read, last, 10, 20_000)
                    await blocked(redis_server, "held")
                    nursery.cancel_scope.cancel()  # its connection owes a reply: dropped
                assert await stream.counters() == (1 + done, 1 + done)


async def test_cursor_against_a_stream_trimmed_past_it(redis_server: RedisServer) -> None:
    async with channel(redis_server) as stream:
        await stream.append(["old"])
        cursor, history = await stream.latest(1)
        assert [line for _, line in history] == ["old"]
        await stream.append([f"gone {n}" for n in range(50)])
        async with coredis.Redis.from_url(redis_server.url) as admin:
            # Exact trimming, as MAXLEN ~ does with whole nodes.
            await admin.xtrim(
                stream_key("test"), threshold=1, trim_strategy=coredis.PureToken.MAXLEN
            )
        gap = cursor.resync(*await stream.counters())
        assert (gap.skipped, gap.reset) == (49, False)
        entries = await stream.read(cursor.last, count=10, block_ms=10)
        assert entries.lines == ["gone 49"]
