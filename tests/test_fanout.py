"""Unit and property tests for :mod:`trio_broadcast.fanout`: one publisher, many queues.

Covered: publish order, batches merged by :meth:`Subscription.receive`, no
duplicates, history (the last N messages first, then the live feed with no gap
and no duplicate, even when N exceeds the queue size), the ``DROP`` policy
(skipped and counted for the full subscriber only), the ``DISCONNECT`` policy
(only the full subscriber is cut off, with :class:`Overflow`), :meth:`Fanout.close`
(queued messages delivered, then :class:`trio.EndOfChannel`), publishing after
close, empty publishes, unsubscribing, and a Hypothesis-driven random
interleaving of publish, subscribe, unsubscribe, receive and close checked against
a model of every subscriber's queue.

Every test is bounded by ``trio.fail_after``; tasks are synchronised with
:func:`trio.testing.wait_all_tasks_blocked`, never with sleeps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broadcast.config import OnFull
from trio_broadcast.fanout import Fanout, Overflow, Subscription

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


async def test_cut_off_wakes_a_waiting_task() -> None:
    with trio.fail_after(5):
        fanout = Fanout[int](queue_size=1)
        woke: list[str] = []
        with fanout.subscribe() as slow, fanout.subscribe() as fast:

            async def watch(name: str, sub: Subscription[int]) -> None:
                await sub.cut_off()
                woke.append(name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, "slow", slow)
                nursery.start_soon(watch, "fast", fast)
                await trio.testing.wait_all_tasks_blocked()
                fanout.publish([1])
                assert await fast.receive() == [1]
                await trio.testing.wait_all_tasks_blocked()
                assert woke == []
                fanout.publish([2])
                await trio.testing.wait_all_tasks_blocked()
                assert woke == ["slow"]
                nursery.cancel_scope.cancel()
        assert fast.overflowed is False


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


# ------------------------------------------------- random interleavings (model)


@dataclass
class Model:
    """What one subscriber should see, tracked beside the real :class:`Subscription`."""

    sub: Subscription[int]
    backlog: list[int]
    first: int
    """The first message it should receive: the oldest history item, or the next live one."""
    queue: list[tuple[int, ...]] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    dropped: int = 0
    cut_off: bool = False
    unsubscribed: bool = False

    @property
    def live(self) -> bool:
        return not (self.cut_off or self.unsubscribed)

    def discard(self) -> None:
        self.queue.clear()
        self.backlog.clear()


class Driver:
    """Runs operations on a real :class:`Fanout` and on the model side by side."""

    def __init__(self, queue_size: int, history: int, on_full: OnFull) -> None:
        self.fanout = Fanout[int](queue_size=queue_size, on_full=on_full, history=history)
        self.queue_size = queue_size
        self.history = history
        self.on_full = on_full
        self.models: list[Model] = []
        self.published: list[int] = []
        self.closed = False

    def publish(self, size: int) -> None:
        batch = tuple(range(len(self.published), len(self.published) + size))
        if self.closed:
            with pytest.raises(trio.ClosedResourceError):
                self.fanout.publish(batch)
            return
        self.fanout.publish(batch)
        self.published += batch
        if not batch:
            return
        for model in self.models:
            if not model.live:
                continue
            if len(model.queue) < self.queue_size:
                model.queue.append(batch)
            elif self.on_full is OnFull.DROP:
                model.dropped += len(batch)
            else:
                model.cut_off = True
                model.discard()

    def subscribe(self) -> None:
        backlog = self.published[-self.history :] if self.history else []
        first = backlog[0] if backlog else len(self.published)
        self.models.append(Model(self.fanout.subscribe(), list(backlog), first))

    def unsubscribe(self, model: Model) -> None:
        model.sub.close()
        model.unsubscribed = True
        model.discard()

    def can_receive(self, model: Model) -> bool:
        """Whether ``receive()`` returns or raises at once (a lone task must not block)."""
        return not model.live or bool(model.backlog or model.queue) or self.closed

    async def receive(self, model: Model) -> None:
        if model.cut_off:
            with pytest.raises(Overflow):
                await model.sub.receive()
        elif model.unsubscribed:
            with pytest.raises(trio.ClosedResourceError):
                await model.sub.receive()
        elif model.backlog or model.queue:
            expected = model.backlog + [n for batch in model.queue for n in batch]
            got = await model.sub.receive()
            assert got == expected
            model.received += got
            model.discard()
        else:
            with pytest.raises(trio.EndOfChannel):
                await model.sub.receive()

    def close(self) -> None:
        self.fanout.close()
        self.closed = True

    def check_counters(self) -> None:
        fanout = self.fanout
        assert fanout.published == len(self.published)
        assert fanout.closed is self.closed
        assert fanout.subscribers == (0 if self.closed else sum(m.live for m in self.models))
        assert fanout.dropped == sum(m.dropped for m in self.models)
        assert fanout.overflows == sum(m.cut_off for m in self.models)
        for model in self.models:
            # The policy applied to exactly the subscribers that were full.
            assert model.sub.dropped == model.dropped
            assert model.sub.overflowed is model.cut_off

    def check_runs(self) -> None:
        for model in self.models:
            seen = model.received
            # In order and duplicate-free.
            assert seen == sorted(set(seen))
            if not seen:
                continue
            # History first (the latest `history` messages), else the first live
            # message: a new subscriber's queue is empty, so that one always fits.
            assert seen[0] == model.first
            # Contiguous except for batches skipped under DROP.
            gaps = (seen[-1] - seen[0] + 1) - len(seen)
            assert gaps <= model.dropped
            if self.on_full is OnFull.DISCONNECT:
                assert gaps == 0
                assert model.dropped == 0


OPERATIONS = ["publish", "publish", "publish", "subscribe", "receive", "receive", "unsubscribe"]


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    queue_size=st.integers(1, 4),
    history=st.integers(0, 5),
    on_full=st.sampled_from(OnFull),
)
async def test_random_interleavings_match_the_model(
    data: st.DataObject, queue_size: int, history: int, on_full: OnFull
) -> None:
    with trio.fail_after(5):
        driver = Driver(queue_size, history, on_full)
        for _ in range(data.draw(st.integers(1, 60), label="steps")):
            choices = OPERATIONS if driver.closed else [*OPERATIONS, "close"]
            operation = data.draw(st.sampled_from(choices), label="operation")
            if operation == "publish":
                driver.publish(data.draw(st.integers(int(driver.closed), 3), label="size"))
            elif operation == "subscribe":
                driver.subscribe()
            elif operation == "close":
                driver.close()
            elif operation == "unsubscribe":
                candidates = [m for m in driver.models if not m.unsubscribed]
                if candidates:
                    driver.unsubscribe(data.draw(st.sampled_from(candidates), label="who"))
            else:
                candidates = [m for m in driver.models if driver.can_receive(m)]
                if candidates:
                    await driver.receive(data.draw(st.sampled_from(candidates), label="who"))
            driver.check_counters()
        driver.check_runs()


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


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fast_path_and_queue_together_keep_order(data: st.DataObject) -> None:
    """Whatever deliver accepts, the subscriber sees every message once, in order."""
    batches = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=30))
    seen: list[int] = []

    def deliver(batch: tuple[int, ...]) -> tuple[int, ...]:
        taken = data.draw(st.integers(0, len(batch)))
        seen.extend(batch[:taken])
        return batch[taken:]

    async def main() -> None:
        fanout = Fanout[int](queue_size=100)
        counter = iter(range(10_000))
        with trio.fail_after(5), fanout.subscribe(deliver=deliver) as subscription:
            for size in batches:
                fanout.publish([next(counter) for _ in range(size)])
                if data.draw(st.booleans()):
                    while subscription._receive.statistics().current_buffer_used:
                        seen.extend(await subscription.receive())
            fanout.close()
            with contextlib.suppress(trio.EndOfChannel):
                while True:
                    seen.extend(await subscription.receive())
        assert seen == list(range(sum(batches)))

    trio.run(main)
