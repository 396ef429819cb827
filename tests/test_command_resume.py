"""Resume on reconnect, end to end: the ``trio-broadcast.v1`` subprotocol and ``?since=``.

A client that offers the subprotocol gets a hello with the current position,
every line with its ID, and echoes marked as such; one that comes back with
``?since=`` the last ID it saw gets everything it missed, then the live feed,
with no gap and no duplicate; when that cannot be exact (an ID from before a
restart, or older than ``--retain``) a gap notice comes first. Plain clients
see no change. The client is the independent ``websockets`` library; a drop is
a TCP reset, not a close.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import httpx
import pytest
import trio
from websockets.exceptions import InvalidStatus
from websockets.trio.client import ClientConnection

from trio_broadcast import subprotocol

from .conftest import Process, running_command
from .e2e import local_port, recv_text, recv_texts, seen_connected, stop, ws

pytestmark = pytest.mark.e2e


def v1(url: str, since: str | None = None) -> Any:
    """A ``websockets`` client offering the subprotocol (after another one it does not know)."""
    target = url if since is None else f"{url}?since={since}"
    return ws(target, subprotocols=["chat.example", subprotocol.NAME])


async def receive(client: ClientConnection) -> dict[str, Any]:
    message = json.loads(await recv_text(client))
    assert isinstance(message, dict), message
    return message


async def hello(client: ClientConnection) -> str:
    message = await receive(client)
    assert message["type"] == "hello", message
    assert isinstance(message["id"], str), message
    return message["id"]


async def lines(client: ClientConnection, count: int) -> list[tuple[str, str]]:
    """The next ``count`` messages, which must be broadcast lines: their IDs and text."""
    got = []
    for _ in range(count):
        message = await receive(client)
        assert message["type"] == "line", message
        got.append((message["id"], message["line"]))
    return got


def reset(client: ClientConnection, scope: trio.CancelScope) -> None:
    """Drop the connection with a TCP reset: no close frame, no FIN.

    ``scope`` holds the client: cancelling it makes the client close its socket
    at once, without a closing handshake, and with ``SO_LINGER`` 0 that close
    is a reset.
    """
    stream = client.stream
    assert isinstance(stream, trio.SocketStream)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    scope.cancel()


async def connected(process: Process, client: ClientConnection) -> ClientConnection:
    await seen_connected(process, local_port(client))
    return client


async def test_plain_clients_see_no_change_and_v1_clients_get_typed_messages() -> None:
    with trio.fail_after(15):
        async with running_command("--history", "2") as process:
            async with ws(process.url) as plain:
                await connected(process, plain)
                await process.write(b"zero\none\ntwo\n")
                assert await recv_texts(plain, 3) == ["zero", "one", "two"]
                assert plain.subprotocol is None
                async with v1(process.url) as client:
                    assert client.subprotocol == subprotocol.NAME
                    # The history: the last 2 lines; the hello names the one before them.
                    first = await hello(client)
                    history = await lines(client, 2)
                    assert [text for _, text in history] == ["one", "two"]
                    await connected(process, client)
                    # An echo is an echo even when it repeats a broadcast line.
                    await client.send("two")
                    assert await receive(client) == {"type": "echo", "data": "two"}
                    await client.send(b"\x00binary")
                    assert await client.recv() == b"\x00binary"
                    await process.write(b"two\n")
                    [(live_id, text)] = await lines(client, 1)
                    assert text == "two"
                    assert await recv_text(plain) == "two"
                    assert len({first, *(id for id, _ in history), live_id}) == 4
            # Resuming from the hello gives the history lines again, then the live one.
            async with v1(process.url, since=first) as again:
                assert await hello(again) == first
                assert await lines(again, 3) == [*history, (live_id, "two")]
            await stop(process)


async def test_a_reset_mid_feed_then_a_resume_gives_the_whole_feed_once() -> None:
    feed = [f"line {n}" for n in range(3000)]
    with trio.fail_after(30):
        async with running_command() as process:
            received: list[tuple[str, str]] = []
            with trio.CancelScope() as dropping:
                async with v1(process.url) as client:
                    await connected(process, client)
                    position = await hello(client)
                    await process.write(("\n".join(feed[:1500]) + "\n").encode())
                    received += await lines(client, 700)
                    reset(client, dropping)
                    await trio.sleep_forever()
            await process.read_stderr_until(r"connection ended with 1006")
            # Lines keep coming while it is away.
            await process.write(("\n".join(feed[1500:2200]) + "\n").encode())
            since = received[-1][0] if received else position
            async with v1(process.url, since=since) as client:
                assert await hello(client) == since
                await connected(process, client)
                await process.write(("\n".join(feed[2200:]) + "\n").encode())
                received += await lines(client, len(feed) - len(received))
            assert [text for _, text in received] == feed
            assert len({id for id, _ in received}) == len(feed)
            await stop(process)


async def test_a_hello_before_any_line_is_a_position_to_resume_from() -> None:
    with trio.fail_after(15):
        async with running_command() as process:
            async with v1(process.url) as client:
                position = await hello(client)
            await process.write(b"while away\n")
            async with v1(process.url, since=position) as client:
                assert await hello(client) == position
                assert [text for _, text in await lines(client, 1)] == ["while away"]
            await stop(process)


async def test_a_resume_older_than_the_retention_says_how_many_lines_were_missed() -> None:
    with trio.fail_after(15):
        async with running_command("--retain", "5") as process, ws(process.url) as plain:
            await connected(process, plain)  # to know when the server has read each line
            async with v1(process.url) as client:
                await connected(process, client)
                await hello(client)
                await process.write(b"a\nb\n")
                [(since, _), _] = await lines(client, 2)
            await process.write(("\n".join(f"n{i}" for i in range(10)) + "\n").encode())
            assert (await recv_texts(plain, 12))[-1] == "n9"
            async with v1(process.url, since=since) as client:
                start = await hello(client)
                assert await receive(client) == {"type": "gap", "since": since, "missed": 6}
                retained = await lines(client, 5)
                assert [text for _, text in retained] == [f"n{i}" for i in range(5, 10)]
                assert start != since
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(process.url.replace("ws", "http", 1) + "metrics")).text
            assert "trio_broadcast_retained_lines 5.0" in metrics
            await stop(process)


async def test_an_id_from_before_a_restart_gets_a_gap_notice_of_unknown_size() -> None:
    with trio.fail_after(20):
        async with running_command() as process:
            async with v1(process.url) as client:
                await connected(process, client)
                await hello(client)
                await process.write(b"before the restart\n")
                [(since, _)] = await lines(client, 1)
            await stop(process)
        async with running_command() as process, ws(process.url) as plain:
            await connected(process, plain)
            await process.write(b"after the restart\n")
            assert await recv_text(plain) == "after the restart"
            async with v1(process.url, since=since) as client:
                start = await hello(client)
                assert start.split(":")[0] != since.split(":")[0]  # a new epoch
                assert await receive(client) == {"type": "gap", "since": since, "missed": None}
                # What this run retains, then live.
                assert [text for _, text in await lines(client, 1)] == ["after the restart"]
                await connected(process, client)
                await process.write(b"live\n")
                assert [text for _, text in await lines(client, 1)] == ["live"]
            await stop(process)


async def test_since_without_the_subprotocol_is_refused_with_a_reason() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            with pytest.raises(InvalidStatus) as refused:
                async with ws(f"{process.url}?since=x:1"):
                    pass
            response = refused.value.response
            assert response.status_code == 400
            assert subprotocol.NAME.encode() in response.body
            await stop(process)


async def lines_read(process: Process, count: int) -> None:
    """Wait until the server has read ``count`` lines (its ``/metrics``), polled:
    the subprocess has no event to offer; the caller's ``fail_after`` bounds it."""
    wanted = f"trio_broadcast_lines_read_total {float(count)}"
    metrics = process.url.replace("ws", "http", 1) + "metrics"
    async with httpx.AsyncClient() as http:
        while wanted not in (await http.get(metrics)).text:
            await trio.sleep(0.01)


async def test_a_client_catching_up_is_not_cut_off_by_the_lines_that_come_meanwhile() -> None:
    """Found by the resume storm: live lines used to queue up behind a long backlog,
    and with one slot (``--queue-size 1``) the second batch cut the client off."""
    backlog = [f"{n:04d} " + "x" * 1000 for n in range(3000)]  # more than socket buffers
    meanwhile = [f"meanwhile {n}" for n in range(5)]
    with trio.fail_after(30):
        async with running_command("--queue-size", "1") as process:
            async with v1(process.url) as first:
                since = await hello(first)
            await process.write(("\n".join(backlog) + "\n").encode())
            await lines_read(process, len(backlog))
            async with v1(process.url, since=since) as client:
                await connected(process, client)
                # It reads nothing yet: its backlog is stuck in the sockets while
                # five batches come, one at a time.
                for n, line in enumerate(meanwhile, start=len(backlog) + 1):
                    await process.write(f"{line}\n".encode())
                    await lines_read(process, n)
                assert await hello(client) == since
                got = await lines(client, len(backlog) + len(meanwhile))
                assert [text for _, text in got] == backlog + meanwhile
            stderr = await stop(process)
    assert "1008" not in stderr
