"""Fan-out: one publisher, many subscribers, each behind its own bounded queue.

This is the heart of the design. :meth:`Fanout.publish` is synchronous and never
waits for a subscriber: it puts the batch into every subscriber's
``trio`` memory channel with ``send_nowait``. A subscriber whose channel is full
has fallen ``queue_size`` batches behind, and the configured :class:`OnFull`
policy applies to that subscriber alone, so one stuck client never stalls the
publisher or anybody else. The one policy that waits, :attr:`OnFull.WAIT`, goes
through :meth:`Fanout.publish_waiting` instead, and bounds the stall: one
publish waits at most ``max_wait`` seconds in all, then cuts off whoever is
still full.

The component knows nothing about sockets or standard input; it serves any
source of messages (the stdin reader, a Redis stream, a test) and any consumer.

What a subscriber can rely on:

* messages arrive in publish order, each at most once;
* with ``history=N`` the first batch it receives holds the last ``N`` messages
  published before it subscribed, and the live feed follows with no gap and no
  duplicate (subscribing is synchronous, so nothing can be published in between);
* :meth:`Subscription.receive` returns everything queued at once, so a consumer
  that fell behind catches up with one write;
* after :meth:`Fanout.close`, it still receives what was queued, then
  :class:`trio.EndOfChannel`;
* a subscriber may offer a ``deliver`` function (see :meth:`Fanout.subscribe`):
  while it has nothing queued and nothing in hand, :meth:`Fanout.publish` calls
  it with the batch instead of queueing it, and queues only what it could not
  deliver. For a WebSocket client that is a non-blocking write of the frames,
  made by the publisher without waking the client's task: when every client
  keeps up, a broadcast costs one system call per client and no task switch.
  The queue, and the task, take over as soon as a client falls behind;
* a subscriber that never falls behind has no queue: its memory channel is
  made the first time a batch must wait, and a consumer may ask to be woken
  (``wake``) when that happens rather than keep a task waiting in
  :meth:`~Subscription.receive`; it then empties the queue with
  :meth:`~Subscription.take`;
* under :attr:`OnFull.DISCONNECT` an overflowing subscriber is cut off at once:
  its ``cut_off`` callback is called and its next
  :meth:`~Subscription.receive` raises :class:`Overflow`; under
  :attr:`OnFull.DROP` the batch is skipped for it and counted in
  :attr:`Subscription.dropped`; under :attr:`OnFull.WAIT` the batch waits for
  room in its queue, behind what is queued and ahead of anything newer, and the
  subscriber is cut off only if it has none by the deadline.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Generic, TypeVar

import trio

from .config import OnFull

T = TypeVar("T")

Held = list[tuple["Subscription[T]", tuple[T, ...]]]
"""Subscribers that were full under :attr:`OnFull.WAIT`, each with the batch it still needs."""

Deliver = Callable[[tuple[T, ...]], tuple[T, ...]]
"""Try to deliver a batch at once, without waiting; return what to queue instead
(``()``: nothing). Usually what was not delivered; a consumer may also queue a
message of its own, such as a marker that wakes its task to finish the job."""


class Overflow(Exception):
    """The subscriber fell behind by a full queue and was cut off."""


class Subscription(Generic[T]):
    """One consumer's end of a :class:`Fanout`. Create it with :meth:`Fanout.subscribe`.

    Its queue (a ``trio`` memory channel) is made the first time something
    must wait in it: a subscriber that keeps up never has one.
    """

    __slots__ = (
        "_backlog",
        "_clear",
        "_closed",
        "_cut_off",
        "_deliver",
        "_ended",
        "_fanout",
        "_overflowed",
        "_receive",
        "_send",
        "_wake",
        "dropped",
    )

    def __init__(
        self,
        fanout: Fanout[T],
        backlog: list[T],
        deliver: Deliver[T] | None,
        cut_off: Callable[[], None] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._fanout = fanout
        self._send: trio.MemorySendChannel[tuple[T, ...]] | None = None
        self._receive: trio.MemoryReceiveChannel[tuple[T, ...]] | None = None
        self._backlog = backlog
        self._deliver = deliver
        self._cut_off = cut_off
        self._wake = wake
        # True while everything handed to the consumer has been dealt with: only
        # then may publish() deliver directly without overtaking older messages.
        self._clear = not backlog
        self._ended = False  # the feed ended (Fanout.close) before a queue was needed
        self._closed = False
        self._overflowed = False
        self.dropped = 0
        """Messages skipped for this subscriber under :attr:`OnFull.DROP`."""

    @property
    def overflowed(self) -> bool:
        """Whether it was cut off for falling behind (:attr:`OnFull.DISCONNECT` or ``WAIT``)."""
        return self._overflowed

    @property
    def clear(self) -> bool:
        """Whether nothing is queued for it, nor in the consumer's hands: :meth:`take` is idle."""
        return self._clear and not self._ended

    def _channel(
        self,
    ) -> tuple[trio.MemorySendChannel[tuple[T, ...]], trio.MemoryReceiveChannel[tuple[T, ...]]]:
        """The queue, made on first use, in the state the subscription is in."""
        if self._send is None or self._receive is None:
            self._send, self._receive = trio.open_memory_channel[tuple[T, ...]](
                self._fanout.queue_size
            )
            if self._ended:
                self._send.close()
            if self._closed:
                self._receive.close()
                self._send.close()
        return self._send, self._receive

    def _queue_nowait(self, item: tuple[T, ...]) -> None:
        """Queue ``item`` (raises :class:`trio.WouldBlock` when full), and wake the consumer."""
        self._channel()[0].send_nowait(item)
        self._queued()

    def _queued(self) -> None:
        """Something was queued: it must not be overtaken, and the consumer must know."""
        self._clear = False
        if self._wake is not None:
            self._wake()

    async def receive(self) -> list[T]:
        """Wait for at least one message, then return every message queued.

        Raises :class:`trio.EndOfChannel` once the fan-out is closed and all was
        delivered, and :class:`Overflow` if this subscriber was cut off.
        """
        receive = self._channel()[1]
        if self._backlog:
            # As a trio receive does: a cancelled call takes nothing (the history
            # stays for the next one), and one that takes cannot be cancelled.
            await trio.lowlevel.checkpoint_if_cancelled()
            messages, self._backlog = self._backlog, []
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            # Calling receive() again means the last batch has been dealt with.
            self._clear = receive.statistics().current_buffer_used == 0
            try:
                messages = list(await receive.receive())
            except trio.ClosedResourceError:
                raise self._closed_error() from None
        self._drain_into(messages)
        return messages

    def take(self) -> list[T]:
        """Return every message queued, without waiting; ``[]`` if there is none.

        The consumer that does not wait in :meth:`receive` (it is woken by the
        ``wake`` callback of :meth:`Fanout.subscribe` instead) calls this until
        it returns ``[]``: calling it again means the last batch has been dealt
        with, and an empty answer means the subscriber is clear again, so the
        next batch goes through ``deliver``, and the next one queued wakes it.
        Raises as :meth:`receive` does, once nothing is left.
        """
        messages, self._backlog = self._backlog, []
        if self._receive is not None:
            self._drain_into(messages)
        if not messages:
            if self._receive is not None:
                try:
                    messages.extend(self._receive.receive_nowait())
                except trio.WouldBlock:
                    pass
                except trio.ClosedResourceError:
                    raise self._closed_error() from None
            elif self._ended:
                raise trio.EndOfChannel
            if not messages:
                self._clear = True
        return messages

    def _drain_into(self, messages: list[T]) -> None:
        assert self._receive is not None
        while True:
            try:
                messages.extend(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                # The end, or the cut-off, is reported by the next receive().
                return

    def _closed_error(self) -> Exception:
        if self.overflowed:
            return Overflow(
                f"fell behind by {self._fanout.queue_size} queued messages and was cut off"
            )
        return trio.ClosedResourceError("this subscription was closed")

    def _end(self) -> None:
        """The feed ended: what is queued is still received, then :class:`trio.EndOfChannel`."""
        self._ended = True
        if self._send is not None:
            self._send.close()
        if self._wake is not None:
            self._wake()

    def join(self) -> None:
        """Receive every batch published from now on (see ``join`` of :meth:`Fanout.subscribe`).

        Synchronous: the caller can make sure that no checkpoint comes between
        its last look at the feed and joining it, so that nothing falls between.
        After :meth:`Fanout.close`, it gets :class:`trio.EndOfChannel` at once.
        """
        if self._fanout._closed:
            self._end()
        else:
            self._fanout._subscribers[self] = None

    def close(self) -> None:
        """Unsubscribe. Idempotent; queued messages are discarded."""
        self._fanout._subscribers.pop(self, None)
        self._backlog = []
        self._closed = True
        self._wake = self._cut_off = None  # nothing calls the consumer back any more
        # The receiving end first, so that a receive() in progress fails with
        # ClosedResourceError rather than a clean EndOfChannel.
        if self._receive is not None:
            self._receive.close()
        if self._send is not None:
            self._send.close()

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Fanout(Generic[T]):
    """Deliver every published batch to every subscriber; wait only under :attr:`OnFull.WAIT`."""

    def __init__(
        self,
        *,
        queue_size: int = 16,
        on_full: OnFull = OnFull.DISCONNECT,
        history: int = 0,
        max_wait: float = 5.0,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        """``on_wait``, if given, is called with the number of full subscribers
        each time a publish starts waiting for room (to report it)."""
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if history < 0:
            raise ValueError(f"history must be at least 0, not {history}")
        if not 0 < max_wait < math.inf:
            raise ValueError(f"max_wait must be more than 0 seconds, not {max_wait}")
        self.queue_size = queue_size
        self.on_full = on_full
        self.max_wait = max_wait
        self._on_wait = on_wait
        self._history: deque[T] = deque(maxlen=history)
        # A dict rather than a set: publishing visits subscribers in the order
        # they joined, which keeps runs reproducible.
        self._subscribers: dict[Subscription[T], None] = {}
        self._closed = False
        self.published = 0
        """Messages published so far."""
        self.dropped = 0
        """Messages skipped, over all subscribers, under :attr:`OnFull.DROP`."""
        self.overflows = 0
        """Subscribers cut off for falling behind (:attr:`OnFull.DISCONNECT` or ``WAIT``)."""
        self.waits = 0
        """Publishes that had to wait for room (:attr:`OnFull.WAIT`)."""
        self.waited = 0.0
        """Seconds spent in those waits, in all."""
        self._publishing = trio.StrictFIFOLock()

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: the feed has ended."""
        return self._closed

    def subscribe(
        self,
        deliver: Deliver[T] | None = None,
        *,
        history: bool = True,
        join: bool = True,
        cut_off: Callable[[], None] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> Subscription[T]:
        """Join the feed: the history first (unless ``history=False``), then every
        batch published from now on.

        ``deliver``, if given, is tried before the queue whenever this
        subscriber is idle: it must not block, must not raise, and returns what
        to queue instead (see :data:`Deliver`), which is queued ahead of
        anything newer. With ``join=False`` the subscription receives nothing
        until :meth:`Subscription.join`: a consumer that first catches up from
        elsewhere (a resumed backlog) joins once it has, and nothing queues up
        for it meanwhile. Use the subscription as a context manager so that
        leaving unsubscribes.

        ``cut_off``, if given, is called (by the publisher, synchronously) when
        the subscriber is cut off for falling behind, so that a consumer busy
        elsewhere learns it at once, with no task waiting for it. ``wake``, if
        given, is called whenever something is queued for it or its feed ends
        (also from :meth:`Subscription.join`), and once here if it starts with
        a backlog: a consumer that calls :meth:`Subscription.take` instead of
        waiting in :meth:`Subscription.receive` starts its work then. Both must
        not block nor raise; ``wake`` may be called again while the consumer
        is already at work. Neither is called after the subscription is closed.
        """
        backlog = list(self._history) if history else []
        subscription = Subscription(self, backlog, deliver, cut_off, wake)
        if backlog and wake is not None:
            wake()
        if join:
            subscription.join()
        return subscription

    def publish(self, messages: Sequence[T]) -> None:
        """Queue ``messages`` as one batch for every subscriber; never blocks.

        Publishing a whole read's worth of lines as one batch keeps a burst from
        counting as many queue slots: the bound is for subscribers that fall
        behind, not for input that arrives all at once.

        Under :attr:`OnFull.WAIT` it raises :class:`RuntimeError`: publishing
        may have to wait, so use :meth:`publish_waiting`.
        """
        if self.on_full is OnFull.WAIT:
            raise RuntimeError("under OnFull.WAIT, publish with: await publish_waiting()")
        self.publish_held(messages)

    async def publish_waiting(self, messages: Sequence[T]) -> None:
        """Publish ``messages`` as :meth:`publish` does, but wait for room under ``WAIT``.

        Under the other policies it is :meth:`publish` followed by a checkpoint,
        which lets the subscribers run. Under :attr:`OnFull.WAIT`, a subscriber
        whose queue is full gets the batch as soon as it has room, in order
        (behind what it has queued, ahead of anything published later); the
        wait is at most ``max_wait`` seconds from its start, over all the full
        subscribers together, and whoever is still full then is cut off. The
        others receive on as usual in the meantime. Concurrent calls take turns,
        in the order they were made.

        Cancelled while waiting, it returns at once (raising
        :class:`trio.Cancelled`): the subscribers still waited for miss this
        batch, as a cancelled :meth:`trio.MemorySendChannel.send` sends nothing,
        and are not cut off (cancelling is the publisher's decision, not their fault).
        """
        if self.on_full is not OnFull.WAIT:
            self.publish_held(messages)
        else:
            async with self._publishing:
                await self.wait_for_room(self.publish_held(messages))
        await trio.lowlevel.checkpoint()

    def publish_held(self, messages: Sequence[T]) -> Held[T]:
        """Publish without waiting; under ``WAIT``, return who was full, and with what.

        The first half of :meth:`publish_waiting`, for a caller that must
        publish several things at once, with no checkpoint between them, before
        it waits: it must then ``await`` :meth:`wait_for_room` with what this
        returned, and must not publish again until that is done.
        """
        if self._closed:
            raise trio.ClosedResourceError("publish() after close()")
        full: Held[T] = []
        if not messages:
            return full
        batch = tuple(messages)
        self.published += len(batch)
        self._history.extend(batch)
        # Iterate over a copy: cutting a subscriber off removes it from the dict.
        for subscription in list(self._subscribers):
            item = batch
            if subscription._clear and subscription._deliver is not None:
                item = subscription._deliver(batch)
                if not item:
                    continue
            try:
                subscription._queue_nowait(item)
            except trio.WouldBlock:
                if self.on_full is OnFull.DROP:
                    subscription.dropped += len(batch)
                    self.dropped += len(batch)
                elif self.on_full is OnFull.WAIT:
                    full.append((subscription, item))
                else:
                    self._overflow(subscription)
        return full

    async def wait_for_room(self, full: Held[T], deadline: float | None = None) -> None:
        """Queue the batches that :meth:`publish_held` held, cutting off whoever is
        still full at ``deadline`` (default: ``max_wait`` from now). Returns at
        once if nothing was held."""
        if not full:
            return
        # One after the other, under one deadline: waiting for the first lets
        # the others drain too, so this takes as long as the slowest, never
        # more than max_wait. Nothing newer can overtake the item: the next
        # publish waits for the lock, and a full subscriber has _clear False
        # until it has received everything, this item included (trio's channel
        # moves a waiting send into the queue as soon as a receive makes room).
        began = trio.current_time()
        if deadline is None:
            deadline = began + self.max_wait
        self.waits += 1
        if self._on_wait is not None:
            self._on_wait(len(full))
        try:
            for subscription, item in full:
                if not await _send_by(deadline, subscription._channel()[0], item):
                    self._overflow(subscription)
                else:
                    # The consumer may have emptied its queue while this was
                    # held, found nothing more and become clear: not any more.
                    subscription._queued()
        finally:
            self.waited += trio.current_time() - began

    def _overflow(self, subscription: Subscription[T]) -> None:
        subscription._overflowed = True
        self.overflows += 1
        cut_off = subscription._cut_off
        subscription.close()
        if cut_off is not None:
            cut_off()

    def close(self) -> None:
        """End the feed: subscribers get what is queued, then :class:`trio.EndOfChannel`.

        A batch that :meth:`publish_waiting` is still waiting to queue for a
        subscriber is not delivered to it.
        """
        self._closed = True
        subscribers = list(self._subscribers)
        self._subscribers.clear()
        for subscription in subscribers:
            subscription._end()


async def _send_by(deadline: float, send: trio.MemorySendChannel[T], item: T) -> bool:
    """Send ``item`` as soon as ``send`` has room, by ``deadline``; whether it had room.

    Room that came while another subscriber was waited for is taken even past
    the deadline. A channel closed meanwhile (its subscriber left) counts as done.
    """
    gone = (trio.BrokenResourceError, trio.ClosedResourceError)
    try:
        send.send_nowait(item)
    except trio.WouldBlock:
        pass
    except gone:
        return True
    else:
        return True
    with trio.move_on_at(deadline) as waiting, contextlib.suppress(*gone):
        await send.send(item)
    return not waiting.cancelled_caught
