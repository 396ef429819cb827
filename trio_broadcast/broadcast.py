"""The broadcast: each line encoded once per format, published to the clients of that format.

A line reaches clients in one of two formats: a bare text frame for plain
clients, or a ``line`` message with its ID for ``trio-broadcast.v1`` clients
(:mod:`trio_broadcast.subprotocol`). :class:`Broadcast` holds one
:class:`~trio_broadcast.fanout.Fanout` per format, encodes each batch once
for all clients of a format, and keeps the :class:`~trio_broadcast.retention.History`
that resuming clients read from: this server's :class:`~trio_broadcast.retention.Retention`,
which it fills as lines are published, or a Redis stream, which names the lines itself.

The ``line`` messages are encoded only while a v1 client is connected: a server
with plain clients only pays for the retention, not for a second encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from .config import Config, OnFull
from .fanout import Deliver, Fanout, Held, Subscription
from .frames import encode_lines
from .retention import History, Retention, line_frame

Callback = Callable[[], None] | None


class Broadcast:
    """Publish lines to plain and v1 clients alike; see the module's docstring."""

    def __init__(
        self,
        config: Config,
        history: History | None = None,
        *,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        self.plain: Fanout[bytes] = Fanout(
            queue_size=config.queue_size,
            on_full=config.on_full,
            history=config.history,
            max_wait=config.max_wait,
            on_wait=on_wait,
        )
        """Bare text frames, with the last ``history`` lines for each new client."""
        self.v1: Fanout[bytes] = Fanout(
            queue_size=config.queue_size,
            on_full=config.on_full,
            max_wait=config.max_wait,
            on_wait=on_wait,
        )
        """``line`` messages; a v1 client's history comes from :attr:`history` instead."""
        self.retention: Retention | None = None
        """This server's own retention, or ``None`` when the source keeps the history."""
        if history is None:
            self.retention = history = Retention(config.retain, config.retain_bytes)
        self.history = history
        """Where a v1 client's history and resumed backlog are read from."""
        self._max_wait = config.max_wait
        self._publishing = trio.StrictFIFOLock()

    async def publish(self, lines: Sequence[str], ids: Sequence[str] | None = None) -> None:
        """Publish one batch in both formats, then checkpoint.

        Never waits on a client, except under ``--on-full wait``: then at most
        ``max_wait`` for both formats together (see :meth:`Fanout.publish_waiting`).
        ``ids`` are the lines' IDs when the source names them (a Redis stream),
        and ``None`` when this server does (it then retains the lines).

        Retaining a batch and handing it to both fan-outs happen with no
        checkpoint in between, so that a v1 client subscribing meanwhile
        (:meth:`subscribe_v1`) gets each line once: in its backlog or live.
        """
        if self.plain.on_full is not OnFull.WAIT:
            self._publish(lines, ids)
        else:
            async with self._publishing:
                held_v1, held_plain = self._publish(lines, ids)
                deadline = trio.current_time() + self._max_wait
                await self.v1.wait_for_room(held_v1, deadline)
                await self.plain.wait_for_room(held_plain, deadline)
        await trio.lowlevel.checkpoint()

    def _publish(
        self, lines: Sequence[str], ids: Sequence[str] | None
    ) -> tuple[Held[bytes], Held[bytes]]:
        frames = encode_lines(lines)
        v1 = self.v1.subscribers > 0
        messages: list[bytes] = []
        if self.retention is not None:
            messages = self.retention.extend(lines, [len(frame) for frame in frames], v1=v1)
        elif ids is None:
            raise ValueError("a source that keeps the history must name its lines")
        elif v1:
            messages = [line_frame(i, line) for i, line in zip(ids, lines, strict=True)]
        return self.v1.publish_held(messages), self.plain.publish_held(frames)

    def subscribe_plain(
        self, deliver: Deliver[bytes], *, cut_off: Callback = None, wake: Callback = None
    ) -> Subscription[bytes]:
        """Join as a plain client: the history, then the live feed.

        ``cut_off`` and ``wake`` are as for :meth:`Fanout.subscribe`."""
        return self.plain.subscribe(deliver, cut_off=cut_off, wake=wake)

    def subscribe_v1(
        self, deliver: Deliver[bytes], *, cut_off: Callback = None, wake: Callback = None
    ) -> Subscription[bytes]:
        """A v1 client's subscription, not joined yet: the client first catches
        up from :attr:`history`, then joins (:meth:`Subscription.join`) when
        it has sent every line up to :meth:`History.position`."""
        return self.v1.subscribe(deliver, history=False, join=False, cut_off=cut_off, wake=wake)

    def close(self) -> None:
        """End the feed for every client (see :meth:`Fanout.close`)."""
        self.plain.close()
        self.v1.close()

    @property
    def closed(self) -> bool:
        return self.plain.closed

    @property
    def dropped(self) -> int:
        """Messages skipped for slow clients under ``--on-full drop``, both formats."""
        return self.plain.dropped + self.v1.dropped

    @property
    def overflows(self) -> int:
        """Clients cut off for falling behind, both formats."""
        return self.plain.overflows + self.v1.overflows

    @property
    def waits(self) -> int:
        """Times a fan-out waited for room under ``--on-full wait``."""
        return self.plain.waits + self.v1.waits

    @property
    def waited(self) -> float:
        """Seconds spent in those waits."""
        return self.plain.waited + self.v1.waited
