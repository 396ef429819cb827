"""Unit and property tests for :mod:`trio_broadcast.fanout`: one publisher, many queues.

Covered: publish order, batches merged by :meth:`Subscription.receive`, no
duplicates, history (the last N messages first, then the live feed with no gap
and no duplicate, even when N exceeds the queue size), the ``DROP`` policy
(skipped and counted for the full subscriber only), the ``DISCONNECT`` policy
(only the full subscriber is cut off, with :class:`Overflow`), :meth:`Fanout.close`
(queued messages delivered, then :class:`trio.EndOfChannel`), publishing after
close, empty publishes, unsubscribing, the ``deliver`` fast path, a cancelled
receive, the ``WAIT`` policy (the publisher waits for room, at most ``max_wait``
for all the full subscribers together, then cuts off who is still full; it can
be cancelled; a later publish never overtakes a waiting one), and a
Hypothesis-driven random interleaving of publish, subscribe (with and without
the fast path), unsubscribe, receive (at once, waiting in a task, cancelled) and
close, checked step by step against a model of every subscriber and at the end
against the guarantees of :mod:`trio_broadcast.fanout`: order, no duplicate,
history then the live feed with no gap, and the full-queue policy (the two that
never wait) for the full subscriber only.

Every test is bounded by ``trio.fail_after``; tasks are synchronised with
:func:`trio.testing.wait_all_tasks_blocked`, never with sleeps (the deadline
tests run on Trio's autojump clock).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_broadcast.config import OnFull
from trio_broadcast.fanout import Deliver, Fanout, Overflow, Subscription

from .conftest import budget

# ------------------------------------------------------------------- delivery


async def test_messages_arrive_in_publish_order() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int]()
        with fanout.subscribe() as sub:
            fanout.publish([1, 2])
            assert await sub.receive() == [1, 2]
            fanout.publish([3])
            fanout.publish((4, 5))
            assert await sub.receive() == [3, 4, 5]
            assert fanout.published == 5


async def test_receive_merges_all_queued_batches() -> None:
    with trio.fail_after(5):
        fanout = Fanout[str](queue_size=4)
        with fanout.subscribe() as sub:
            for batch in (["a"], ["b", "c"], ["d"], ["e", "f", "g"]):
                fanout.publish(batch)
            assert await sub.receive() == ["a", "b", "c", "d", "e", "f", "g"]


async def test_receive_waits_for_a_publish() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int]()
        received: list[list[int]] = []
        with fanout.subscribe() as sub:

            async def consume() -> None:
                received.append(await sub.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                assert received == []
                fanout.publish([7, 8])
        assert received == [[7, 8]]


async def test_every_subscriber_gets_every_message_once() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=100)
        subs = [fanout.subscribe() for _ in range(5)]
        assert fanout.subscribers == 5
        for n in range(0, 30, 3):
            fanout.publish([n, n + 1, n + 2])
        for sub in subs:
            assert await sub.receive() == list(range(30))
        fanout.publish([30])
        for sub in subs:
            assert await sub.receive() == [30]
            sub.close()
        assert fanout.subscribers == 0


async def test_batch_is_copied_and_objects_passed_through() -> None:
    with trio.fail_after(5):
        fanout = Fanout[object]()
        token = object()
        with fanout.subscribe() as sub:
            batch: list[object] = [token, "x"]
            fanout.publish(batch)
            batch.append("added after publish")
            received = await sub.receive()
        assert received == [token, "x"]
        assert received[0] is token


async def test_empty_publish_is_a_no_op() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, history=3)
        with fanout.subscribe() as sub:
            for _ in range(5):
                fanout.publish([])  # would overflow a one-slot queue if it counted
            assert fanout.published == 0
            assert fanout.overflows == 0
            fanout.publish([1])
            assert await sub.receive() == [1]
            assert not sub.overflowed
        with fanout.subscribe() as late:
            fanout.publish(())
            assert await late.receive() == [1]  # history unchanged by empty publishes


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        Fanout[int](queue_size=0)
    with pytest.raises(ValueError, match="history"):
        Fanout[int](history=-1)
    for max_wait in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_wait"):
            Fanout[int](max_wait=max_wait)


# -------------------------------------------------------------------- history


async def test_history_arrives_first_then_the_live_feed() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](history=3)
        fanout.publish([1, 2])
        fanout.publish([3, 4, 5])
        with fanout.subscribe() as sub:
            assert await sub.receive() == [3, 4, 5]
            fanout.publish([6])
            assert await sub.receive() == [6]


async def test_history_and_queued_live_messages_come_without_gap_or_duplicate() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](history=2)
        fanout.publish([1, 2, 3])
        with fanout.subscribe() as sub:
            fanout.publish([4])
            fanout.publish([5, 6])
            assert await sub.receive() == [2, 3, 4, 5, 6]


async def test_history_shorter_than_requested() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](history=10)
        fanout.publish([1, 2])
        with fanout.subscribe() as sub:
            assert await sub.receive() == [1, 2]


async def test_no_history_means_live_feed_only() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int]()
        fanout.publish([1, 2])
        with fanout.subscribe() as sub:
            fanout.publish([3])
            assert await sub.receive() == [3]


async def test_history_larger_than_queue_size() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, history=10)
        for n in range(12):
            fanout.publish([n])
        with fanout.subscribe() as sub:
            # The history is not in the queue, so one live batch still fits.
            fanout.publish([12])
            assert not sub.overflowed
            assert await sub.receive() == list(range(2, 13))
            fanout.publish([13])
            assert await sub.receive() == [13]


# --------------------------------------------------------------------- DROP


async def test_drop_skips_only_for_the_full_subscriber() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=2, on_full=OnFull.DROP)
        with fanout.subscribe() as slow, fanout.subscribe() as fast:
            seen_fast: list[int] = []
            for batch in ([1], [2], [3, 4], [5]):
                fanout.publish(batch)
                seen_fast += await fast.receive()
            assert seen_fast == [1, 2, 3, 4, 5]
            assert slow.dropped == 3
            assert fast.dropped == 0
            assert fanout.dropped == 3
            assert fanout.overflows == 0
            assert fanout.subscribers == 2
            assert not slow.overflowed
            assert await slow.receive() == [1, 2]
            fanout.publish([6])
            assert await slow.receive() == [6]
            assert await fast.receive() == [6]
            assert slow.dropped == 3


async def test_drop_counts_over_all_subscribers() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, on_full=OnFull.DROP)
        with fanout.subscribe() as a, fanout.subscribe() as b:
            fanout.publish([1])
            fanout.publish([2, 3])
            assert (a.dropped, b.dropped, fanout.dropped) == (2, 2, 4)
            assert await a.receive() == [1]
            assert await b.receive() == [1]


# --------------------------------------------------------------- DISCONNECT


async def test_disconnect_cuts_off_only_the_full_subscriber() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=2, on_full=OnFull.DISCONNECT)
        with fanout.subscribe() as slow, fanout.subscribe() as fast:
            seen_fast: list[int] = []
            for batch in ([1], [2], [3]):
                fanout.publish(batch)
                seen_fast += await fast.receive()
            assert slow.overflowed
            assert not fast.overflowed
            assert fanout.overflows == 1
            assert fanout.subscribers == 1
            assert fanout.dropped == 0
            with pytest.raises(Overflow, match="2"):
                await slow.receive()
            with pytest.raises(Overflow):
                await slow.receive()
            fanout.publish([4])  # the publisher carries on
            seen_fast += await fast.receive()
            assert seen_fast == [1, 2, 3, 4]
            assert fanout.overflows == 1


async def test_disconnect_wakes_a_consumer_blocked_in_receive() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=2)
        received: list[list[int]] = []
        outcome: list[BaseException] = []
        with fanout.subscribe() as sub:

            async def consume() -> None:
                try:
                    while True:
                        received.append(await sub.receive())
                except Overflow as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                # A burst with no checkpoint: the first batch goes straight to the
                # blocked consumer, two fill its queue, the fourth overflows it.
                for n in range(4):
                    fanout.publish([n])
                assert sub.overflowed
        assert received == [[0]]
        assert len(outcome) == 1
        assert fanout.overflows == 1


def test_cut_off_calls_back_the_subscriber_that_fell_behind_only() -> None:
    fanout = Fanout[int](queue_size=1)
    cut: list[str] = []
    with (
        fanout.subscribe(cut_off=lambda: cut.append("slow")) as slow,
        fanout.subscribe(cut_off=lambda: cut.append("fast")) as fast,
    ):
        fanout.publish([1])
        assert fast.take() == [1]
        assert fast.take() == []  # fast has dealt with it
        assert cut == []
        fanout.publish([2])
        assert cut == ["slow"]  # synchronously, from the publish
        assert slow.overflowed
        assert not fast.overflowed
        with pytest.raises(Overflow):
            slow.take()
        assert fast.take() == [2]
        assert fast.take() == []
        fanout.publish([3])  # a closed subscription is not called back again
        assert cut == ["slow"]


# ------------------------------------------------------- the queue on demand


def test_a_subscriber_that_keeps_up_has_no_queue() -> None:
    fanout = Fanout[int](queue_size=4)
    delivered: list[int] = []

    def deliver(batch: tuple[int, ...]) -> tuple[int, ...]:
        delivered.extend(batch)
        return ()

    with fanout.subscribe(deliver, wake=lambda: pytest.fail("nothing was queued")) as sub:
        for n in range(10):
            fanout.publish([n])
        assert delivered == list(range(10))
        assert sub._send is None
        assert sub._receive is None
        assert sub.clear


def test_wake_comes_when_a_batch_is_queued_and_take_empties_the_queue() -> None:
    fanout = Fanout[int](queue_size=4)
    wakes: list[int] = []
    accept = [False]

    def deliver(batch: tuple[int, ...]) -> tuple[int, ...]:
        return () if accept[0] else batch  # the socket takes nothing

    with fanout.subscribe(deliver, wake=lambda: wakes.append(1)) as sub:
        fanout.publish([1])
        assert wakes == [1]
        assert not sub.clear
        fanout.publish([2, 3])  # behind: queued after, never delivered past the queue
        assert sub.take() == [1, 2, 3]
        assert not sub.clear  # in the consumer's hands until it asks again
        accept[0] = True
        fanout.publish([4])  # not clear: queued, not delivered
        assert sub.take() == [4]
        assert sub.take() == []
        assert is_clear(sub)
        fanout.publish([5])  # clear again: delivered directly
        assert sub.take() == []


def is_clear(sub: Subscription[int]) -> bool:
    """``sub.clear``, without mypy narrowing it for the rest of the test."""
    return sub.clear


def test_a_backlog_wakes_the_subscriber_at_once() -> None:
    fanout = Fanout[int](history=2)
    fanout.publish([1, 2, 3])
    wakes: list[int] = []
    with fanout.subscribe(lambda batch: (), wake=lambda: wakes.append(1)) as sub:
        assert wakes == [1]
        assert sub.take() == [2, 3]
        assert sub.take() == []


def test_the_end_of_the_feed_wakes_a_subscriber_without_a_queue() -> None:
    fanout = Fanout[int]()
    wakes: list[int] = []
    with fanout.subscribe(lambda batch: (), wake=lambda: wakes.append(1)) as sub:
        fanout.close()
        assert wakes == [1]
        with pytest.raises(trio.EndOfChannel):
            sub.take()
    late = fanout.subscribe(join=False, wake=lambda: wakes.append(2))
    late.join()  # after close: ended at once
    assert wakes == [1, 2]
    with pytest.raises(trio.EndOfChannel):
        late.take()


def test_the_end_comes_after_what_is_queued() -> None:
    fanout = Fanout[int]()
    with fanout.subscribe(lambda batch: batch, wake=lambda: None) as sub:
        fanout.publish([1])
        fanout.close()
        assert sub.take() == [1]
        with pytest.raises(trio.EndOfChannel):
            sub.take()


async def test_receive_still_works_without_a_queue_yet() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int]()
        with fanout.subscribe() as sub:
            async with trio.open_nursery() as nursery:
                got: list[list[int]] = []

                async def consume() -> None:
                    got.append(await sub.receive())

                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                fanout.publish([7])
            assert got == [[7]]


# --------------------------------------------------------------------- WAIT


async def test_a_held_batch_is_queued_behind_and_wakes_a_consumer_that_caught_up() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, on_full=OnFull.WAIT, max_wait=5)
        wakes: list[int] = []
        # deliver refuses everything: the socket is full
        with fanout.subscribe(lambda batch: batch, wake=lambda: wakes.append(1)) as sub:
            assert fanout.publish_held([1]) == []
            full = fanout.publish_held([2])  # no room: held
            assert len(full) == 1
            assert sub.take() == [1]
            assert sub.take() == []  # caught up while [2] is held: clear, for a moment
            await fanout.wait_for_room(full)
            # Queued: not clear any more (the next batch must not overtake it), and woken.
            assert not sub.clear
            assert len(wakes) == 2
            assert sub.take() == [2]


class Publisher:
    """Runs :meth:`Fanout.publish_waiting` in a task and says when it has returned."""

    def __init__(self, nursery: trio.Nursery, fanout: Fanout[int]) -> None:
        self._nursery = nursery
        self._fanout = fanout
        self.done: list[list[int]] = []

    def start(self, batch: list[int]) -> None:
        async def publish() -> None:
            await self._fanout.publish_waiting(batch)
            self.done.append(batch)

        self._nursery.start_soon(publish)


async def test_wait_holds_the_publisher_until_the_full_subscriber_has_room() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, on_full=OnFull.WAIT)
        with fanout.subscribe() as slow, fanout.subscribe() as fast:
            await fanout.publish_waiting([1])
            assert await fast.receive() == [1]
            async with trio.open_nursery() as nursery:
                publisher = Publisher(nursery, fanout)
                publisher.start([2])
                await trio.testing.wait_all_tasks_blocked()
                assert publisher.done == []  # slow's queue still holds [1]
                assert await fast.receive() == [2]  # the others are served meanwhile
                assert await slow.receive() == [1, 2]  # room: the waiting batch goes in
            assert publisher.done == [[2]]
            assert not slow.overflowed
            assert (fanout.waits, fanout.overflows, fanout.dropped) == (1, 0, 0)


async def test_wait_cuts_off_only_who_is_still_full_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        waits: list[int] = []
        fanout = Fanout[int](queue_size=1, on_full=OnFull.WAIT, max_wait=5.0, on_wait=waits.append)
        with (
            fanout.subscribe() as stuck,
            fanout.subscribe() as also_stuck,
            fanout.subscribe() as slow,
        ):
            await fanout.publish_waiting([1])
            received: list[int] = []

            async def read_late() -> None:
                await trio.sleep(2.0)
                received.extend(await slow.receive())

            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_late)
                await fanout.publish_waiting([2])
            # One deadline for the whole publish, however many are full.
            assert trio.current_time() - began == pytest.approx(5.0)
            assert fanout.waited == pytest.approx(5.0)
            assert stuck.overflowed
            assert also_stuck.overflowed
            assert not slow.overflowed
            assert (fanout.waits, fanout.overflows, fanout.subscribers) == (1, 2, 1)
            assert waits == [3]  # reported as the wait began, with who was full
            with pytest.raises(Overflow):
                await stuck.receive()
            # slow made room at 2 s, while the publisher still waited for the
            # stuck ones: its batch went in then, deadline or not.
            assert received == [1]
            assert await slow.receive() == [2]
            await fanout.publish_waiting([3])  # the feed goes on, without waiting
            assert await slow.receive() == [3]
            assert fanout.waits == 1


async def test_cancelling_a_waiting_publish_ends_it_at_once_and_cuts_nobody_off() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, on_full=OnFull.WAIT, max_wait=3600.0)
        with fanout.subscribe() as stuck:
            await fanout.publish_waiting([1])
            with trio.CancelScope() as scope:

                async def cancel_once_waiting() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_once_waiting)
                    await fanout.publish_waiting([2])
                    pytest.fail("the wait was not interrupted")
            assert scope.cancelled_caught
            assert not stuck.overflowed
            assert fanout.overflows == 0
            assert fanout.waits == 1
            assert 0 <= fanout.waited < 5
            assert await stuck.receive() == [1]  # [2] was never queued
            await fanout.publish_waiting([3])
            assert await stuck.receive() == [3]


async def test_a_later_publish_never_overtakes_a_waiting_one() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, on_full=OnFull.WAIT)
        tried: list[tuple[int, ...]] = []

        def deliver(batch: tuple[int, ...]) -> tuple[int, ...]:
            tried.append(batch)
            return batch  # the socket is busy: queue it all

        # Subscribed in this order, so the publisher waits for first, then second.
        with fanout.subscribe() as first, fanout.subscribe(deliver) as second:
            await fanout.publish_waiting([1])
            received: list[int] = []
            async with trio.open_nursery() as nursery:
                publisher = Publisher(nursery, fanout)
                publisher.start([2])  # waits for first; second is full too
                await trio.testing.wait_all_tasks_blocked()
                received += await second.receive()  # second has room now...
                publisher.start([3])  # ...but [3] must wait its turn

                async def consume() -> None:
                    while len(received) < 3:
                        received.extend(await second.receive())

                nursery.start_soon(consume)  # second is idle and waiting: clear
                await trio.testing.wait_all_tasks_blocked()
                assert publisher.done == []
                assert received == [1]
                assert await first.receive() == [1, 2]
                await trio.testing.wait_all_tasks_blocked()
                assert await first.receive() == [3]
            assert publisher.done == [[2], [3]]
            assert received == [1, 2, 3]
            # The fast path only while second was clear: never for the held [2];
            # for [3], only if second's consumer had asked for more before it
            # was published (the scheduler decides which of the two runs first).
            assert tried in ([(1,)], [(1,), (3,)])
            assert fanout.overflows == 0


async def test_a_subscriber_that_leaves_while_waited_for_is_not_cut_off() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, on_full=OnFull.WAIT, max_wait=3600.0)
        leaving = fanout.subscribe()
        await fanout.publish_waiting([1])
        async with trio.open_nursery() as nursery:
            publisher = Publisher(nursery, fanout)
            publisher.start([2])
            await trio.testing.wait_all_tasks_blocked()
            leaving.close()
        assert publisher.done == [[2]]
        assert not leaving.overflowed
        assert fanout.overflows == 0


async def test_publish_waiting_under_the_other_policies_never_waits() -> None:
    with trio.fail_after(5):
        for on_full in (OnFull.DISCONNECT, OnFull.DROP):
            fanout = Fanout[int](queue_size=1, on_full=on_full)
            with fanout.subscribe() as sub:
                await fanout.publish_waiting([1])
                await fanout.publish_waiting([2])
                assert sub.overflowed is (on_full is OnFull.DISCONNECT)
                assert fanout.dropped == (1 if on_full is OnFull.DROP else 0)
                assert fanout.waits == 0


def test_publish_without_waiting_is_refused_under_wait() -> None:
    fanout = Fanout[int](on_full=OnFull.WAIT)
    with pytest.raises(RuntimeError, match="publish_waiting"):
        fanout.publish([1])
    assert fanout.published == 0


# ------------------------------------------------------------------ closing


async def test_close_delivers_queued_messages_then_end_of_channel() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=4)
        with fanout.subscribe() as sub:
            fanout.publish([1])
            fanout.publish([2, 3])
            fanout.close()
            assert fanout.closed
            assert fanout.subscribers == 0
            assert await sub.receive() == [1, 2, 3]
            with pytest.raises(trio.EndOfChannel):
                await sub.receive()
            with pytest.raises(trio.EndOfChannel):
                await sub.receive()


async def test_close_wakes_a_blocked_receive_with_end_of_channel() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int]()
        ended: list[bool] = []
        with fanout.subscribe() as sub:

            async def consume() -> None:
                with pytest.raises(trio.EndOfChannel):
                    await sub.receive()
                ended.append(True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                fanout.close()
        assert ended == [True]


async def test_subscribe_after_close_gets_history_then_end_of_channel() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](history=2)
        fanout.publish([1, 2, 3])
        fanout.close()
        with fanout.subscribe() as sub:
            assert fanout.subscribers == 0
            assert await sub.receive() == [2, 3]
            with pytest.raises(trio.EndOfChannel):
                await sub.receive()
        empty = Fanout[int]()
        empty.close()
        with empty.subscribe() as sub, pytest.raises(trio.EndOfChannel):
            await sub.receive()


async def test_publish_after_close_raises() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int]()
        fanout.close()
        fanout.close()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            fanout.publish([1])
        assert fanout.published == 0


# -------------------------------------------------------------- unsubscribing


async def test_leaving_the_context_manager_unsubscribes() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1)
        with fanout.subscribe() as stays:
            with fanout.subscribe() as leaves:
                assert fanout.subscribers == 2
            assert fanout.subscribers == 1
            # A departed subscriber never fills up, so neither policy applies to it.
            fanout.publish([1])
            assert await stays.receive() == [1]
            fanout.publish([2])
            assert fanout.overflows == 0
            assert fanout.dropped == 0
            assert not leaves.overflowed
            with pytest.raises(trio.ClosedResourceError):
                await leaves.receive()
            leaves.close()  # idempotent
            assert fanout.subscribers == 1
            assert await stays.receive() == [2]
        assert fanout.subscribers == 0


async def test_unsubscribe_discards_undelivered_history() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](history=3)
        fanout.publish([1, 2, 3])
        sub = fanout.subscribe()
        sub.close()
        with pytest.raises(trio.ClosedResourceError):
            await sub.receive()


async def test_cut_off_discards_undelivered_history() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1, history=5)
        fanout.publish([1, 2, 3])
        with fanout.subscribe() as sub:
            fanout.publish([4])
            fanout.publish([5])  # overflows the one-slot queue
            assert sub.overflowed
            with pytest.raises(Overflow):
                await sub.receive()


async def test_unsubscribe_inside_a_receive_loop_ends_it() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int]()
        sub = fanout.subscribe()
        raised: list[type[BaseException]] = []

        async def consume() -> None:
            try:
                await sub.receive()
            except trio.ClosedResourceError as exc:
                raised.append(type(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
        assert raised == [trio.ClosedResourceError]
        assert fanout.subscribers == 0


# --- the deliver fast path -----------------------------------------------------


async def test_deliver_is_used_while_the_subscriber_is_idle() -> None:
    delivered: list[tuple[str, ...]] = []

    def deliver(batch: tuple[str, ...]) -> tuple[str, ...]:
        delivered.append(batch)
        return ()

    fanout = Fanout[str](queue_size=2)
    with trio.fail_after(5), fanout.subscribe(deliver=deliver):
        fanout.publish(["a"])
        fanout.publish(["b", "c"])
        assert delivered == [("a",), ("b", "c")]


async def test_what_deliver_leaves_is_queued_ahead_of_newer_batches() -> None:
    fanout = Fanout[str](queue_size=4)
    with trio.fail_after(5), fanout.subscribe(deliver=lambda batch: batch[1:]) as subscription:
        fanout.publish(["a", "b"])  # "a" delivered, "b" queued
        fanout.publish(["c"])  # something is queued: no fast path, queued behind "b"
        assert await subscription.receive() == ["b", "c"]
        # Back in receive() with nothing queued: idle again, the fast path resumes.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscription.receive)
            await trio.testing.wait_all_tasks_blocked()
            fanout.publish(["d", "e"])  # "d" delivered, "e" handed to the waiting receive
            nursery.cancel_scope.cancel()


async def test_no_fast_path_while_history_is_pending() -> None:
    calls: list[tuple[str, ...]] = []

    def deliver(batch: tuple[str, ...]) -> tuple[str, ...]:
        calls.append(batch)
        return ()

    fanout = Fanout[str](queue_size=4, history=1)
    fanout.publish(["old"])
    with trio.fail_after(5), fanout.subscribe(deliver=deliver) as sub:
        fanout.publish(["new"])
        assert calls == []
        assert await sub.receive() == ["old", "new"]


# ----------------------------------------------------------------- cancellation


async def test_a_cancelled_receive_takes_nothing_not_even_the_history() -> None:
    """Like any Trio receive, a cancelled :meth:`Subscription.receive` has taken nothing.

    The history is handed out by the first receive; cancelling that receive must
    leave it for the next one, or the joining client sees a gap.
    """
    with trio.fail_after(5):
        fanout = Fanout[int](history=3)
        fanout.publish([1, 2, 3])
        with fanout.subscribe() as sub:
            with trio.CancelScope() as scope:
                scope.cancel()
                await sub.receive()
            assert scope.cancelled_caught
            fanout.publish([4])
            assert await sub.receive() == [1, 2, 3, 4]


# ------------------------------------------------- random interleavings (model)
#
# One @given test drives a real Fanout and a model of it side by side through a
# random sequence of steps, and checks the model's predictions after every step
# and the guarantees of the module docstring at the end. It is not a
# hypothesis.stateful machine because a step may leave a receive() waiting in a
# task of its own (as a client's broadcast task waits) until a later step, which
# needs one Trio run per example: an async @given test gives exactly that.
#
# The runs are deterministic all the same. Publishing, subscribing, unsubscribing
# and closing never yield; every step that awaits ends with
# wait_all_tasks_blocked(), so a receive that a publish woke has not run yet while
# more is published in the same stretch of synchronous steps, and has always run
# by the end of the next awaiting step.

Outcome = list[int] | type[BaseException]
"""What a receive() gave: the messages it returned, or the type of what it raised."""


@dataclass
class Waiting:
    """A receive() waiting in a task of its own."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    handed: tuple[int, ...] | None = None
    """Model: the batch a publish handed straight to this waiting receive."""
    ended: type[BaseException] | None = None
    """Model: how the first of cut-off, unsubscribe or close ended it, if handed nothing."""
    cancelled: bool = False
    """Model: its scope was cancelled."""
    outcome: Outcome | None = None
    """Real: what the receive gave, once its task has finished."""


async def receive_in_task(sub: Subscription[int], waiting: Waiting) -> None:
    """Receive into ``waiting.outcome``: the messages, or the type of what was raised."""
    with waiting.scope:
        try:
            waiting.outcome = await sub.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, Overflow) as exc:
            waiting.outcome = type(exc)
    if waiting.scope.cancelled_caught:
        waiting.outcome = trio.Cancelled


@dataclass
class Client:
    """One subscriber as the model sees it, beside its real :class:`Subscription`."""

    number: int
    fast: bool
    """It offered a ``deliver`` function (the fast path)."""
    late: bool
    """It subscribed after the fan-out was closed."""
    history: list[int]
    """The history it was due when it subscribed."""
    sub: Subscription[int] = field(init=False)
    backlog: list[int] = field(init=False)
    """The history not handed out yet."""
    expected: list[int] = field(init=False)
    """All it is due: its history, then every message published while it is subscribed."""
    queue: list[tuple[int, ...]] = field(default_factory=list)
    in_hand: list[int] = field(default_factory=list)
    """Returned by receive() and not dealt with yet: the client is still writing it."""
    written: list[int] = field(default_factory=list)
    """What the client has written, in order: the stream its peer sees."""
    waiting: Waiting | None = None
    calls: list[tuple[tuple[int, ...], int]] = field(default_factory=list)
    """Its ``deliver`` calls during the current publish: (batch, how many it took)."""
    dropped: int = 0
    cut_off: bool = False
    unsubscribed: bool = False

    def __post_init__(self) -> None:
        self.backlog = list(self.history)
        self.expected = list(self.history)

    @property
    def live(self) -> bool:
        """Whether publishing still reaches it."""
        return not (self.late or self.cut_off or self.unsubscribed)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in hand: the fast path may be used (and must be)."""
        handed = self.waiting is not None and self.waiting.handed is not None
        return not (self.backlog or self.queue or self.in_hand or handed)

    def done_with_batch(self) -> None:
        """It calls receive() again: the batch in hand has been written."""
        self.written += self.in_hand
        self.in_hand = []

    def take(self) -> list[int]:
        messages = self.backlog + [n for batch in self.queue for n in batch]
        self.discard()
        return messages

    def discard(self) -> None:
        self.backlog = []
        self.queue = []


class Driver:
    """Runs each step on a real :class:`Fanout` and on the model side by side."""

    def __init__(
        self,
        nursery: trio.Nursery,
        data: st.DataObject,
        *,
        queue_size: int,
        history: int,
        on_full: OnFull,
    ) -> None:
        self.fanout = Fanout[int](queue_size=queue_size, on_full=on_full, history=history)
        self.nursery = nursery
        self.data = data
        self.queue_size = queue_size
        self.history = history
        self.on_full = on_full
        self.published: list[int] = []
        """The reference list: every message published, in order (message n is n)."""
        self.batch_of: dict[int, int] = {}
        self.clients: list[Client] = []
        self.closed = False

    # --- steps that never yield

    def subscribe(self, fast: bool) -> None:
        history = self.published[max(0, len(self.published) - self.history) :]
        client = Client(len(self.clients), fast, self.closed, history)
        client.sub = self.fanout.subscribe(self._deliver_for(client) if fast else None)
        self.clients.append(client)

    def _deliver_for(self, client: Client) -> Deliver[int]:
        def deliver(batch: tuple[int, ...]) -> tuple[int, ...]:
            taken = self.data.draw(
                st.integers(0, len(batch)), label=f"client {client.number} takes"
            )
            client.calls.append((batch, taken))
            return batch[taken:]

        return deliver

    def publish(self, size: int) -> None:
        batch = tuple(range(len(self.published), len(self.published) + size))
        if self.closed:
            with pytest.raises(trio.ClosedResourceError):
                self.fanout.publish(batch)
            return
        self.fanout.publish(batch)
        for number in batch:
            self.batch_of[number] = len(self.published)
        self.published += batch
        for client in self.clients:
            calls, client.calls = client.calls, []
            if not (client.live and batch):
                assert calls == []
                continue
            client.expected += batch
            item = batch
            if client.fast and client.idle:
                assert [call[0] for call in calls] == [batch], "the fast path was not tried"
                taken = calls[0][1]
                client.written += batch[:taken]  # written at once, by the publisher
                item = batch[taken:]
                if not item:
                    continue
            else:
                assert calls == [], "deliver() called with something queued or in hand"
            if client.waiting is not None and client.waiting.handed is None:
                client.waiting.handed = item  # straight to the waiting receive
            elif len(client.queue) < self.queue_size:
                client.queue.append(item)
            elif self.on_full is OnFull.DROP:
                client.dropped += len(batch)
            else:
                client.cut_off = True
                client.discard()
                self._end_waiting(client, Overflow)

    def unsubscribe(self, client: Client) -> None:
        client.sub.close()
        client.unsubscribed = True
        client.discard()
        self._end_waiting(client, trio.ClosedResourceError)

    def close(self) -> None:
        self.fanout.close()
        self.closed = True
        for client in self.clients:
            self._end_waiting(client, trio.EndOfChannel)

    def _end_waiting(self, client: Client, error: type[BaseException]) -> None:
        """The first ending wakes a receive() that waits with nothing handed to it."""
        waiting = client.waiting
        if waiting is not None and waiting.handed is None and waiting.ended is None:
            waiting.ended = error

    # --- steps that await

    def receives_at_once(self, client: Client) -> bool:
        """Whether receive() returns or raises without waiting."""
        if client.waiting is not None:
            return False
        return bool(client.backlog or client.queue) or not client.live or self.closed

    def would_wait(self, client: Client) -> bool:
        return client.waiting is None and not self.receives_at_once(client)

    async def receive(self, client: Client) -> None:
        client.done_with_batch()
        expected: Outcome
        if client.cut_off:
            expected = Overflow
        elif client.unsubscribed:
            expected = trio.ClosedResourceError
        else:
            expected = client.take() or trio.EndOfChannel
        # In a task of its own, so that a receive() that waits fails the step at once
        # (rather than at the time limit, which would make shrinking crawl).
        attempt = Waiting()
        self.nursery.start_soon(receive_in_task, client.sub, attempt)
        await trio.testing.wait_all_tasks_blocked()
        if attempt.outcome is None:
            attempt.scope.cancel()
            raise AssertionError(f"receive() waits; expected {expected}")
        assert attempt.outcome == expected
        if isinstance(expected, list):
            client.in_hand = expected
        await self.settle()

    async def wait(self, client: Client) -> None:
        """Start a receive() that has to wait, in a task of its own."""
        client.done_with_batch()
        client.waiting = Waiting()
        self.nursery.start_soon(receive_in_task, client.sub, client.waiting)
        await self.settle()

    async def cancel_wait(self, client: Client) -> None:
        assert client.waiting is not None
        client.waiting.cancelled = True
        client.waiting.scope.cancel()
        await self.settle()

    async def receive_cancelled(self, client: Client) -> None:
        """Call receive() in a cancelled scope: it must take nothing."""
        client.done_with_batch()
        with trio.CancelScope() as scope:
            scope.cancel()
            got = await client.sub.receive()
            raise AssertionError(f"a cancelled receive() returned {got}")
        assert scope.cancelled_caught
        await self.settle()

    async def settle(self) -> None:
        """Let every woken receive() finish, and check what it gave."""
        await trio.testing.wait_all_tasks_blocked()
        for client in self.clients:
            waiting = client.waiting
            if waiting is None:
                continue
            expected: Outcome | None
            if waiting.handed is not None:
                # A closed channel ends the draining, not the receive.
                expected = list(waiting.handed) + client.take()
            elif waiting.ended is not None:
                expected = waiting.ended
            elif waiting.cancelled:
                expected = trio.Cancelled
            else:
                expected = None  # still waiting
            assert waiting.outcome == expected
            if expected is not None:
                client.waiting = None
                if isinstance(expected, list):
                    client.in_hand = expected

    async def step(self) -> None:
        """Draw one step among those that apply, and run it."""
        data = self.data
        steps = ["publish"] * 4 + ["subscribe"] * 2 + ["settle"]
        if self.clients:
            steps += ["receive"] * 2 + ["wait"] * 2 + ["receive cancelled", "unsubscribe"]
        if any(client.waiting for client in self.clients):
            steps += ["cancel wait", "settle"]
        if not self.closed:
            steps.append("close")
        step = data.draw(st.sampled_from(steps), label="step")
        if step == "publish":
            self.publish(data.draw(st.integers(0, 3), label="size"))
        elif step == "subscribe":
            self.subscribe(data.draw(st.booleans(), label="fast path"))
        elif step == "close":
            self.close()
        elif step == "settle":
            await self.settle()
        else:
            await self.client_step(step)

    async def client_step(self, step: str) -> None:
        """Run a step on one client, drawn among those it applies to."""
        fits: dict[str, Callable[[Client], bool]] = {
            "receive": self.receives_at_once,
            "wait": self.would_wait,
            "cancel wait": lambda client: client.waiting is not None,
            "receive cancelled": lambda client: client.waiting is None,
            "unsubscribe": lambda client: not client.unsubscribed,
        }
        candidates = [client.number for client in self.clients if fits[step](client)]
        if not candidates:
            return
        number = self.data.draw(st.sampled_from(candidates), label=f"{step}: client")
        client = self.clients[number]
        if step == "unsubscribe":
            self.unsubscribe(client)
            return
        run: dict[str, Callable[[Client], Awaitable[None]]] = {
            "receive": self.receive,
            "wait": self.wait,
            "cancel wait": self.cancel_wait,
            "receive cancelled": self.receive_cancelled,
        }
        await run[step](client)

    async def finish(self) -> None:
        """Close the feed and let every client read to the end."""
        if not self.closed:
            self.close()
        await self.settle()  # the feed has ended: no receive() waits any more
        for client in self.clients:
            assert client.waiting is None
            await self.receive(client)
            while client.in_hand:
                await self.receive(client)
            client.done_with_batch()

    def check_counters(self) -> None:
        """The full-queue policy was applied to exactly the clients whose queue was full."""
        fanout = self.fanout
        assert fanout.published == len(self.published)
        assert fanout.closed is self.closed
        assert fanout.subscribers == (0 if self.closed else sum(c.live for c in self.clients))
        assert fanout.dropped == sum(client.dropped for client in self.clients)
        assert fanout.overflows == sum(client.cut_off for client in self.clients)
        for client in self.clients:
            assert client.sub.dropped == client.dropped
            assert client.sub.overflowed is client.cut_off

    def check_streams(self) -> None:
        """What each client wrote, checked against what it was due (not the model's queues)."""
        for client in self.clients:
            written, expected = client.written, client.expected
            assert written == sorted(set(written)), "reordered or duplicated"
            assert set(written) <= set(expected)
            if self.on_full is OnFull.DISCONNECT:
                assert client.dropped == 0
                # No gap: its history, then the live feed, up to where it left.
                assert written == expected[: len(written)]
                if not (client.cut_off or client.unsubscribed):
                    assert written == expected
            else:
                assert not client.cut_off
                if client.unsubscribed:
                    continue
                # The history, then the live feed less whole batches skipped when
                # its own queue was full, each counted.
                missing = sorted(set(expected) - set(written))
                assert len(missing) == client.dropped
                assert written[: len(client.history)] == client.history
                for number in missing:
                    batch = self.batch_of[number]
                    assert not {n for n in written if self.batch_of.get(n) == batch}


@budget(150)
@given(
    data=st.data(),
    queue_size=st.integers(1, 4),
    history=st.integers(0, 5),
    on_full=st.sampled_from([OnFull.DISCONNECT, OnFull.DROP]),  # WAIT: below
)
async def test_any_interleaving_keeps_order_history_and_isolation(
    data: st.DataObject, queue_size: int, history: int, on_full: OnFull
) -> None:
    """Under any interleaving of steps, every client sees its due, in order, once.

    The steps: publish (batches of 0 to 3), subscribe (with or without the
    ``deliver`` fast path, whose deliveries take any part of a batch), receive at
    once, start a receive() that waits in a task of its own (a publish then hands
    it a batch directly), cancel such a receive, receive in a cancelled scope,
    let woken receives run, unsubscribe, close. Checked after every step: what
    each receive() and ``deliver`` call gave, and that the full-queue policy hit
    exactly the clients whose own queue was full (``dropped``, ``overflowed`` and
    the fan-out's totals). Checked at the end, once every client has read all it
    can: no client saw a message twice or out of order; each saw its history and
    then the live feed with no gap (under DROP, less whole batches skipped and
    counted for it alone); a client never full, and still subscribed, saw all.
    """
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            driver = Driver(nursery, data, queue_size=queue_size, history=history, on_full=on_full)
            for _ in range(data.draw(st.integers(1, 60), label="steps")):
                await driver.step()
                driver.check_counters()
            await driver.finish()
            driver.check_counters()
            driver.check_streams()
