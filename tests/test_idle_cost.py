"""What an idle client costs the server in Trio tasks: issue 14's budget of two.

An idle client that keeps up has its connection task (which reads its
messages) and trio-websocket's reader, nothing else: the keep-alive is one
task for the whole server, the cut-off is a callback, and the task that
writes a client's queue exists only while the client is behind.
"""

from __future__ import annotations

import trio
import trio.testing

from .conftest import LineFeed, running_server, wait_until
from .wire import RawClient

CLIENTS = 3


def live_tasks() -> int:
    """Every task of this run, found from the root task down."""
    count = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    nurseries = list(root.child_nurseries)
    while nurseries:
        for task in nurseries.pop().child_tasks:
            count += 1
            nurseries.extend(task.child_nurseries)
    return count


async def test_an_idle_client_that_keeps_up_costs_two_tasks() -> None:
    with trio.fail_after(10):
        feed = LineFeed()
        # A long ping interval: the keep-alive runs, but no ping is in flight.
        async with running_server(feed, ping_interval=60.0) as server:
            first = await RawClient.handshake(server.port)
            await wait_until(lambda: server.clients == 1)
            await trio.testing.wait_all_tasks_blocked()
            with_one = live_tasks()  # the keep-alive's task is running now
            clients = [await RawClient.handshake(server.port) for _ in range(CLIENTS)]
            await wait_until(lambda: server.clients == CLIENTS + 1)
            await trio.testing.wait_all_tasks_blocked()
            assert live_tasks() - with_one == 2 * CLIENTS
            # Lines that every client takes at once leave no task behind.
            await feed.send("a", "b")
            for client in [first, *clients]:
                assert [(await client.read_frame()) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            assert live_tasks() - with_one == 2 * CLIENTS
            for client in [first, *clients]:
                await client.aclose()


async def test_a_client_that_falls_behind_gets_a_writing_task_until_it_catches_up() -> None:
    with trio.fail_after(10):
        feed = LineFeed()
        async with running_server(feed, ping_interval=0, queue_size=1000) as server:
            client = await RawClient.handshake(server.port, rcvbuf=4096)
            await wait_until(lambda: server.clients == 1)
            await trio.testing.wait_all_tasks_blocked()
            idle = live_tasks()
            lines = [f"{n:04} " + "x" * 1000 for n in range(200)]
            for n in range(0, len(lines), 10):
                await feed.send(*lines[n : n + 10])
            await trio.testing.wait_all_tasks_blocked()
            assert live_tasks() == idle + 1  # the socket is full: a task writes the queue
            got = [(await client.read_frame()) for _ in lines]
            assert [frame.text for frame in got if frame is not None] == lines
            await trio.testing.wait_all_tasks_blocked()
            assert live_tasks() == idle  # caught up: the publisher writes directly again
            await feed.send("live")
            frame = await client.read_frame()
            assert frame is not None
            assert frame.text == "live"
            await client.aclose()
