"""Several ``trio-broadcast`` commands sharing one feed through a real redis-server.

One publisher instance reads standard input (``--redis``); serving instances
(``--redis --no-stdin``) only read the stream. Clients on every instance must
get every line, in the same order, once, through the faults a deployment
meets: a killed Redis connection, Redis stopped and started again, and a
start-up against a Redis that is not there; under ``--on-full wait``, a slow
client holds up its instance's reader of the stream, not standard input. Every wait is bounded by
``trio.fail_after`` and ends on an event (a message, a log line, an exit).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from websockets.trio.client import ClientConnection, connect

from ..conftest import Process, running_command
from ..e2e import url_port
from ..wire import RawClient
from .conftest import RedisServer

coredis = pytest.importorskip("coredis", reason="the redis extra is not installed")

pytestmark = pytest.mark.e2e


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert ": ERROR:" not in stderr, stderr


@asynccontextmanager
async def instance(server: RedisServer, *args: str) -> AsyncIterator[Process]:
    async with running_command("--redis", server.url, "--queue-size", "1000", *args) as process:
        yield process


@asynccontextmanager
async def client_of(process: Process) -> AsyncIterator[ClientConnection]:
    async with connect(process.url, proxy=None, open_timeout=5, ping_interval=None) as client:
        port = client.local_address[1]
        await process.read_stderr_until(rf"client 127\.0\.0\.1:{port} connected")
        yield client


async def receive(client: ClientConnection, count: int, into: list[str]) -> None:
    while len(into) < count:
        message = await client.recv()
        assert isinstance(message, str)
        into.append(message)


async def write_lines(process: Process, lines: list[str]) -> None:
    for start in range(0, len(lines), 500):
        await process.write("".join(f"{line}\n" for line in lines[start : start + 500]).encode())


async def kill_redis_connections(server: RedisServer, pid: int) -> int:
    """``CLIENT KILL`` every connection the instance with ``pid`` has open."""
    killed = 0
    async with coredis.Redis.from_url(server.url) as admin:
        for client in await admin.client_list():
            if client["name"] == f"trio-broadcast-{pid}":
                killed += int(await admin.client_kill(identifier=int(client["id"])))
    return killed


async def test_every_client_on_every_instance_gets_every_line_in_order(
    redis_server: RedisServer,
) -> None:
    lines = [f"{n:05d} " + "x" * (n % 50) for n in range(10_000)]
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            publisher = await stack.enter_async_context(instance(redis_server))
            serving = [
                await stack.enter_async_context(instance(redis_server, "--no-stdin"))
                for _ in range(2)
            ]
            clients = [
                await stack.enter_async_context(client_of(process))
                for process in (*serving, serving[0], publisher)
            ]
            received: list[list[str]] = [[] for _ in clients]
            async with trio.open_nursery() as nursery:
                for client, into in zip(clients, received, strict=True):
                    nursery.start_soon(receive, client, len(lines), into)
                await write_lines(publisher, lines)
        for process in (publisher, *serving):
            assert_clean(process.stderr.decode())
    for into in received:
        assert into == lines


async def test_client_kill_mid_stream_loses_and_repeats_nothing(
    redis_server: RedisServer,
) -> None:
    first = [f"first {n}" for n in range(5000)]
    second = [f"second {n}" for n in range(5000)]
    received: list[str] = []
    with trio.fail_after(60):
        async with (
            instance(redis_server) as publisher,
            instance(redis_server, "--no-stdin") as serving,
            client_of(serving) as client,
        ):
            await write_lines(publisher, first)
            await receive(client, len(first), received)
            # Its reader is now blocked in XREAD: the kill cuts that request.
            assert await kill_redis_connections(redis_server, serving.process.pid) >= 1
            await serving.read_stderr_until(r"reader: Redis at .* unreachable")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_lines, publisher, second)
                await receive(client, len(first) + 1000, received)
                # And once more in the middle of the flow; wherever it lands
                # (a read in flight, an idle pooled connection), nothing changes.
                await kill_redis_connections(redis_server, serving.process.pid)
                await receive(client, len(first) + len(second), received)
            await serving.read_stderr_until(r"reader: Redis at .* is back")
            assert_clean(serving.stderr.decode())
    assert received == first + second


async def test_on_full_wait_holds_up_the_stream_reader_not_the_input(
    redis_server: RedisServer,
) -> None:
    # 8 MB: more than the server's socket buffer for the slow client holds,
    # in more batches (of up to READ_COUNT lines) than its queue of one.
    lines = [f"{n:04d} " + "x" * 1000 for n in range(8000)]
    args = ("--on-full", "wait", "--max-wait", "30", "--queue-size", "1")
    good_got: list[str] = []
    with trio.fail_after(60):
        async with instance(redis_server, *args) as publisher, client_of(publisher) as good:
            slow = await RawClient.handshake(url_port(publisher.url), rcvbuf=4096)
            try:
                await publisher.read_stderr_until(rf"client 127\.0\.0\.1:{slow.port} connected")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive, good, len(lines), good_got)
                    # Far more than a pipe holds: standard input goes on into
                    # the stream while the slow client holds up the reader.
                    await write_lines(publisher, lines)
                    await publisher.read_stderr_until(r"WARNING: the feed waits for")
                    slow_got = []
                    for _ in lines:
                        frame = await slow.read_frame()
                        assert frame is not None, "the slow client was cut off"
                        slow_got.append(frame.text)
            finally:
                await slow.aclose()
            assert_clean(publisher.stderr.decode())
    assert good_got == lines
    assert slow_got == lines


async def test_redis_stopped_and_started_again_loses_nothing(
    redis_server: RedisServer,
) -> None:
    before = [f"before {n}" for n in range(100)]
    during = [f"during {n}" for n in range(2000)]
    received: list[str] = []
    with trio.fail_after(60):
        async with (
            instance(redis_server) as publisher,
            instance(redis_server, "--no-stdin") as serving,
            client_of(serving) as client,
        ):
            await write_lines(publisher, before)
            await receive(client, len(before), received)
            redis_server.stop()
            # The publisher keeps reading standard input while Redis is away.
            await write_lines(publisher, during)
            await publisher.read_stderr_until(r"publisher: Redis at .* unreachable")
            await serving.read_stderr_until(r"reader: Redis at .* unreachable")
            redis_server.start()  # same port, empty: no persistence
            await receive(client, len(before) + len(during), received)
            await publisher.read_stderr_until(r"publisher: Redis at .* is back")
            for process in (publisher, serving):
                assert_clean(process.stderr.decode())
    assert received == before + during


async def start_failure(*args: str) -> tuple[int, str]:
    with trio.fail_after(10):
        async with running_command(*args, wait_listening=False) as process:
            code = await process.process.wait()
            stderr = await process.read_all_stderr()
    assert_clean(stderr)
    return code, stderr


async def test_refused_redis_is_one_line_and_exit_1(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    code, stderr = await start_failure("--redis", url)
    assert code == 1
    assert stderr.splitlines() == [
        f"trio-broadcast: error: cannot use Redis at {url}: "
        "connection refused (is redis-server running there?)"
    ]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://localhost:6379", "must start with redis://, rediss:// or unix://"),
        ("redis://localhost:notaport/0", "has a bad port"),
    ],
)
async def test_bad_redis_url_is_a_clear_error(url: str, why: str) -> None:
    code, stderr = await start_failure("--redis", url)
    assert code == 2  # a bad option value, as argparse reports them
    assert re.fullmatch(rf"trio-broadcast: error: .*{re.escape(why)}.*", stderr.splitlines()[-1])
