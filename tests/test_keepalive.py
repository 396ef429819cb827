"""The server-wide keep-alive: one task pings every client, and drops those that do not answer.

Fake clients on Trio's mock clock: what is pinged when, and who is told what.
"""

from __future__ import annotations

import weakref
from typing import cast

import trio
import trio.testing
from trio_websocket import WebSocketConnection

from trio_broadcast.keepalive import Entry, KeepAlive


class FakeWs:
    """Answers each ping at once, or never (``answers=False``)."""

    def __init__(self, answers: bool = True) -> None:
        self.answers = answers
        self.pings: list[float] = []

    async def ping(self) -> None:
        self.pings.append(trio.current_time())
        if not self.answers:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()


class FakeClient:
    def __init__(self, answers: bool = True) -> None:
        self.fake = FakeWs(answers)
        self.ws = cast(WebSocketConnection, self.fake)
        self.no_pongs: list[tuple[float, float]] = []
        self.failed = 0

    def no_pong(self, interval: float) -> None:
        self.no_pongs.append((trio.current_time(), interval))

    def ping_failed(self) -> None:
        self.failed += 1


async def test_clients_are_pinged_every_interval_from_when_they_came(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        keepalive = KeepAlive(10.0, nursery)
        start = trio.current_time()
        first = FakeClient()
        first_entry = keepalive.add(first)
        await trio.sleep(4)
        second = FakeClient()
        second_entry = keepalive.add(second)
        await trio.sleep(31)
        assert [t - start for t in first.fake.pings] == [10, 20, 30]
        assert [t - start for t in second.fake.pings] == [14, 24, 34]
        assert first.no_pongs == second.no_pongs == []
        first_entry.remove()
        second_entry.remove()
    # The nursery closed: with no client left, the scheduler returned.
    assert keepalive.clients == 0


async def test_no_pong_by_the_next_ping_drops_the_client_and_it_is_not_pinged_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        keepalive = KeepAlive(5.0, nursery)
        start = trio.current_time()
        silent, talkative = FakeClient(answers=False), FakeClient()
        keepalive.add(silent)
        entry = keepalive.add(talkative)
        await trio.sleep(21)
        assert [t - start for t in silent.fake.pings] == [5]
        assert [(t - start, interval) for t, interval in silent.no_pongs] == [(10, 5.0)]
        assert len(talkative.fake.pings) == 4
        entry.remove()


async def test_a_client_that_left_is_not_pinged_even_if_its_ping_was_due() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            keepalive = KeepAlive(5.0, nursery)
            client = FakeClient()
            entry = keepalive.add(client)
            entry.remove()
            entry.remove()  # idempotent
            # As if its ping task had been started just before it left.
            await KeepAlive._ping(entry, trio.CancelScope())
            assert client.fake.pings == []
            assert keepalive.clients == 0


async def test_leaving_cancels_the_ping_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):  # the mock clock's: a ping left waiting would hit it
        async with trio.open_nursery() as nursery:
            keepalive = KeepAlive(5.0, nursery)
            client = FakeClient(answers=False)
            entry: Entry = keepalive.add(client)
            await trio.sleep(6)
            assert entry.pinging is not None
            pinging = entry.pinging
            entry.remove()
            assert pinging.cancel_called
        # The nursery closed: the ping's task and the scheduler are gone.
        assert client.no_pongs == []
        assert len(client.fake.pings) == 1


async def test_a_client_that_left_is_let_go_before_its_turn_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Found in review: an entry queued until its turn kept its client, and through
    it the whole connection, alive for up to an interval after it left."""
    async with trio.open_nursery() as nursery:
        keepalive = KeepAlive(10.0, nursery)
        staying = keepalive.add(FakeClient())  # keeps the scheduler running
        leaving = FakeClient()
        gone = weakref.ref(leaving)
        keepalive.add(leaving).remove()
        del leaving
        await trio.sleep(1)  # the entry is still queued: due at 10
        assert gone() is None, "the keep-alive still holds a client that left"
        staying.remove()


async def test_a_stalled_event_loop_pings_each_client_once_and_leaves_no_ping_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Found in review: after a stall longer than the interval, the same entry was due
    twice in one pass; it got two pings, and leaving cancelled only the second."""
    async with trio.open_nursery() as nursery:
        keepalive = KeepAlive(10.0, nursery)
        staying = keepalive.add(FakeClient())
        silent = FakeClient(answers=False)
        entry = keepalive.add(silent)
        await trio.testing.wait_all_tasks_blocked()
        autojump_clock.jump(25)  # nothing ran for 25 s
        await trio.testing.wait_all_tasks_blocked()
        assert len(silent.fake.pings) == 1
        entry.remove()
        await trio.testing.wait_all_tasks_blocked()
        scheduler = [task for task in nursery.child_tasks if task.child_nurseries]
        pings = [t for task in scheduler for n in task.child_nurseries for t in n.child_tasks]
        assert pings == [], "a ping is still waiting for a client that left"
        staying.remove()
