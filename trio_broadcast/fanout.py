"""Fan-out: one publisher, many subscribers, each behind its own bounded queue.

This is the heart of the design. :meth:`Fanout.publish` is synchronous and never
waits for a subscriber: it puts the batch into every subscriber's
``trio`` memory channel with ``send_nowait``. A subscriber whose channel is full
has fallen ``queue_size`` batches behind, and the configured :class:`OnFull`
policy applies to that subscriber alone, so one stuck client never stalls the
publisher or anybody else.

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
* under :attr:`OnFull.DISCONNECT` an overflowing subscriber is cut off at once:
  :meth:`~Subscription.cut_off` returns and its next
  :meth:`~Subscription.receive` raises :class:`Overflow`; under
  :attr:`OnFull.DROP` the batch is skipped for it and counted in
  :attr:`Subscription.dropped`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Generic, TypeVar

import trio

from .config import OnFull

T = TypeVar("T")

Deliver = Callable[[tuple[T, ...]], tuple[T, ...]]
"""Try to deliver a batch at once, without waiting; return what to queue instead
(``()``: nothing). Usually what was not delivered; a consumer may also queue a
message of its own, such as a marker that wakes its task to finish the job."""


class Overflow(Exception):
    """The subscriber fell behind by a full queue and was cut off."""


class Subscription(Generic[T]):
    """One consumer's end of a :class:`Fanout`. Create it with :meth:`Fanout.subscribe`."""

    def __init__(
        self,
        fanout: Fanout[T],
        send: trio.MemorySendChannel[tuple[T, ...]],
        receive: trio.MemoryReceiveChannel[tuple[T, ...]],
        backlog: list[T],
        deliver: Deliver[T] | None,
    ) -> None:
        self._fanout = fanout
        self._send = send
        self._receive = receive
        self._backlog = backlog
        self._deliver = deliver
        # True while everything handed to the consumer has been dealt with: only
        # then may publish() deliver directly without overtaking older messages.
        self._clear = not backlog
        self.dropped = 0
        """Messages skipped for this subscriber under :attr:`OnFull.DROP`."""
        self._cut_off = trio.Event()

    @property
    def overflowed(self) -> bool:
        """Whether it was cut off under :attr:`OnFull.DISCONNECT`."""
        return self._cut_off.is_set()

    async def cut_off(self) -> None:
        """Wait until this subscriber is cut off for falling behind.

        A consumer busy writing is not waiting in :meth:`receive`; another task
        can wait here to learn at once that it should stop.
        """
        await self._cut_off.wait()

    async def receive(self) -> list[T]:
        """Wait for at least one message, then return every message queued.

        Raises :class:`trio.EndOfChannel` once the fan-out is closed and all was
        delivered, and :class:`Overflow` if this subscriber was cut off.
        """
        if self._backlog:
            # As a trio receive does: a cancelled call takes nothing (the history
            # stays for the next one), and one that takes cannot be cancelled.
            await trio.lowlevel.checkpoint_if_cancelled()
            messages, self._backlog = self._backlog, []
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            # Calling receive() again means the last batch has been dealt with.
            self._clear = self._receive.statistics().current_buffer_used == 0
            try:
                messages = list(await self._receive.receive())
            except trio.ClosedResourceError:
                raise self._closed_error() from None
        self._drain_into(messages)
        return messages

    def _drain_into(self, messages: list[T]) -> None:
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

    def close(self) -> None:
        """Unsubscribe. Idempotent; queued messages are discarded."""
        self._fanout._subscribers.pop(self, None)
        self._backlog = []
        # The receiving end first, so that a receive() in progress fails with
        # ClosedResourceError rather than a clean EndOfChannel.
        self._receive.close()
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
    """Deliver every published batch to every subscriber, without ever waiting."""

    def __init__(
        self,
        *,
        queue_size: int = 16,
        on_full: OnFull = OnFull.DISCONNECT,
        history: int = 0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if history < 0:
            raise ValueError(f"history must be at least 0, not {history}")
        self.queue_size = queue_size
        self.on_full = on_full
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
        """Subscribers cut off under :attr:`OnFull.DISCONNECT`."""

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: the feed has ended."""
        return self._closed

    def subscribe(
        self, deliver: Deliver[T] | None = None, *, history: bool = True, held: bool = False
    ) -> Subscription[T]:
        """Join the feed: the history first (unless ``history=False``), then every
        batch published from now on.

        ``deliver``, if given, is tried before the queue whenever this
        subscriber is idle: it must not block, must not raise, and returns what
        to queue instead (see :data:`Deliver`), which is queued ahead of
        anything newer. With ``held=True`` it is not tried before the first
        :meth:`~Subscription.receive`, so that the consumer can first send
        something of its own (a resumed backlog) without being overtaken. Use
        the subscription as a context manager so that leaving unsubscribes.
        """
        send, receive = trio.open_memory_channel[tuple[T, ...]](self.queue_size)
        backlog = list(self._history) if history else []
        subscription = Subscription(self, send, receive, backlog, deliver)
        if held:
            subscription._clear = False
        if self._closed:
            send.close()
        else:
            self._subscribers[subscription] = None
        return subscription

    def publish(self, messages: Sequence[T]) -> None:
        """Queue ``messages`` as one batch for every subscriber; never blocks.

        Publishing a whole read's worth of lines as one batch keeps a burst from
        counting as many queue slots: the bound is for subscribers that fall
        behind, not for input that arrives all at once.
        """
        if self._closed:
            raise trio.ClosedResourceError("publish() after close()")
        if not messages:
            return
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
                subscription._send.send_nowait(item)
                subscription._clear = False
            except trio.WouldBlock:
                if self.on_full is OnFull.DROP:
                    subscription.dropped += len(batch)
                    self.dropped += len(batch)
                else:
                    subscription._cut_off.set()
                    self.overflows += 1
                    subscription.close()

    def close(self) -> None:
        """End the feed: subscribers get what is queued, then :class:`trio.EndOfChannel`."""
        self._closed = True
        for subscription in self._subscribers:
            subscription._send.close()
        self._subscribers.clear()
