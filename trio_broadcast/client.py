"""One task per client: the race between its socket and its broadcast queue.

After the handshake, :func:`serve_client` runs a small nursery of competing
tasks, and whichever finishes first decides how the connection ends:

* ``_receive``: read the client's messages and echo each one back (or discard
  it with ``echo=False``; reading must go on so that pings and close frames are
  still processed);
* ``_broadcast``: wait on the client's :class:`~trio_broadcast.fanout.Subscription`
  and write whatever is queued, frames encoded once for all clients
  (:mod:`~trio_broadcast.frames`), in a single write. While the client keeps
  up, its queue stays empty: the publisher writes the frames itself through
  :meth:`_Sender.deliver_nowait`, and this task only wakes when the socket
  could not take everything at once;
* ``_keepalive``: ping every ``ping_interval`` seconds; a peer that has not
  answered by the next ping is dropped;
* ``_cut_off``: wait for the fan-out to cut the client off for falling behind,
  which must end the race even while ``_broadcast`` is stuck in a write.

The first to return an :class:`Ending` cancels the others. Cancellation only
ever interrupts a *wait* (for a message, a batch, a pong); a frame being written
is never cut in half, because every write goes through :class:`_Sender`, which
shields it from cancellation and bounds it with a deadline instead. Once the
race is over the connection is closed with the ending's code, within a bounded
time, or dropped if the peer does not cooperate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from .config import Config
from .counters import Counters
from .fanout import Fanout, Overflow, Subscription
from .frame_writer import FrameWriter
from .frames import message_frame
from .protocol_errors import fix_close_handling

log = logging.getLogger("trio_broadcast")

ABNORMAL = 1006
"""Never sent on the wire: the TCP connection is dropped without a close frame."""


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a connection ended, and with which close code."""

    code: int
    reason: str
    by_peer: bool = False
    """The peer (or the protocol library on its behalf) closed; nothing is left to send."""

    def __str__(self) -> str:
        # by_peer covers closes that trio-websocket makes on the peer's account
        # (1009 for an oversized message), so it does not claim who started it.
        how = "connection ended" if self.by_peer else "closed"
        return f"{how} with {self.code}" + (f" ({self.reason})" if self.reason else "")


GOING_AWAY = Ending(1001, "server shutting down")
FEED_ENDED = Ending(1000, "end of feed")
INTERNAL_ERROR = Ending(1011, "internal error")
TOO_SLOW = Ending(1008, "too slow: broadcast queue full")  # a reason fits in 123 bytes


def _closed_by_peer(reason: CloseReason | None) -> Ending:
    if reason is None:
        return Ending(ABNORMAL, "connection lost", by_peer=True)
    return Ending(reason.code, reason.reason or "", by_peer=True)


class _Tail(bytes):
    """The unwritten end of a batch whose frames were already counted as sent."""


class Stuck(Exception):
    """A write (or a ping's answer) did not complete in time."""


class _Sender:
    """Every write to one connection goes through here.

    A write first offers its bytes to the socket without waiting
    (:meth:`FrameWriter.write_nowait`), which cannot be interrupted. What the
    socket does not take at once is written under a shield from cancellation,
    so that a frame is never left half-written, and bounded by a deadline, so
    that a peer that stops reading cannot hold the task forever: past the
    deadline :class:`Stuck` is raised and the connection is dropped rather than
    closed. When the connection is being closed, :meth:`finish_by` shortens the
    deadline of writes still in flight.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        transport: trio.abc.Stream,
        timeout: float,
        counters: Counters,
    ) -> None:
        self._ws = ws
        self._counters = counters
        self._frames = FrameWriter(ws, transport)
        self._timeout = timeout
        self._in_flight: set[trio.CancelScope] = set()
        self.sent = 0
        """Messages written so far."""
        self.broken = False
        """A write was cut short: the stream may end mid-frame, so it must not be
        used again, not even for a close frame."""
        self.close_deadline = math.inf
        """When the connection must be closed by, once :meth:`finish_by` was called."""

    async def send(self, message: str | bytes) -> None:
        """Send one message (an echo), keeping its type."""
        frame = message_frame(message)
        await self._write(frame)
        self.sent += 1
        self._counters.count_frames(1, len(frame))

    def deliver_nowait(self, frames: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """The fan-out's fast path: write ``frames`` now if the socket takes them.

        Called by the publisher while this client has nothing queued. Returns
        what is left to write (the whole batch, or the unwritten tail of it as a
        :class:`_Tail`), which the fan-out queues for :meth:`send_frames`.
        Never raises: a closed connection is the client task's to notice.
        """
        data = b"".join(frames)
        try:
            written = self._frames.write_nowait(data)
        except ConnectionClosed:
            return frames
        if written == 0:
            return frames
        self.sent += len(frames)
        self._counters.count_frames(len(frames), len(data))
        return () if written == len(data) else (_Tail(data[written:]),)

    async def send_frames(self, frames: list[bytes]) -> None:
        """Send queued broadcast frames, already encoded, with a single write."""
        data = b"".join(frames)
        await self._write(data)
        tails = [frame for frame in frames if isinstance(frame, _Tail)]
        messages = len(frames) - len(tails)
        self.sent += messages
        self._counters.count_frames(messages, len(data) - sum(map(len, tails)))

    async def _write(self, data: bytes) -> None:
        # The socket usually takes it all at once; only a remainder needs the
        # shielded, bounded path, entered without yielding so that it follows
        # on the wire.
        written = self._frames.write_nowait(data)
        if written < len(data):
            rest = memoryview(data)[written:]
            await self._shielded(partial(self._frames.write, rest), self._timeout)

    async def ping(self, seconds: float) -> None:
        """Ping and wait for the pong, at most ``seconds``."""
        await self._shielded(self._ws.ping, seconds)

    async def _shielded(self, write: Callable[[], Awaitable[None]], seconds: float) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + seconds) as scope:
            self._in_flight.add(scope)
            try:
                await write()
            finally:
                self._in_flight.discard(scope)
        if scope.cancelled_caught:
            self.broken = True
            raise Stuck(f"no progress within {seconds:g} s")

    def finish_by(self, deadline: float) -> None:
        """Writes in flight, and the close that follows them, must end by ``deadline``.

        One deadline for both, because the close frame waits behind whatever
        is being written: time the write does not use is the close frame's.
        """
        self.close_deadline = min(self.close_deadline, deadline)
        for scope in self._in_flight:
            scope.deadline = min(scope.deadline, deadline)


async def _receive(ws: WebSocketConnection, sender: _Sender, echo: bool) -> Ending:
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as exc:
            return _closed_by_peer(exc.reason)
        if echo:
            await sender.send(message)


async def _broadcast(subscription: Subscription[bytes], sender: _Sender) -> Ending:
    while True:
        try:
            frames = await subscription.receive()
        except trio.EndOfChannel:
            return FEED_ENDED
        except Overflow:
            return TOO_SLOW
        await sender.send_frames(frames)


async def _cut_off(subscription: Subscription[bytes]) -> Ending:
    await subscription.cut_off()
    return TOO_SLOW


async def _keepalive(sender: _Sender, interval: float) -> Ending:
    while True:
        await trio.sleep(interval)
        try:
            await sender.ping(interval)
        except Stuck:
            return Ending(ABNORMAL, f"no pong within {interval:g} s")


async def _until_cancelled() -> None:
    await trio.sleep_forever()


async def _race(
    ws: WebSocketConnection,
    subscription: Subscription[bytes],
    sender: _Sender,
    config: Config,
) -> Ending:
    """Run the competing sides; the first to finish cancels the others."""
    ending: Ending | None = None

    async def run(side: Callable[[], Awaitable[Ending]]) -> None:
        nonlocal ending
        try:
            result = await side()
        except ConnectionClosed as exc:
            result = _closed_by_peer(exc.reason)
        except Stuck as exc:
            result = Ending(ABNORMAL, f"write stuck: {exc}")
        if ending is None:
            ending = result
        race.cancel_scope.cancel()

    async with trio.open_nursery() as race:
        race.start_soon(run, lambda: _receive(ws, sender, config.echo))
        race.start_soon(run, lambda: _broadcast(subscription, sender))
        race.start_soon(run, lambda: _cut_off(subscription))
        if config.ping_interval > 0:
            race.start_soon(run, lambda: _keepalive(sender, config.ping_interval))
        try:
            await _until_cancelled()
        finally:
            # The race is over, by a side finishing or by cancellation from
            # outside: from now on, closing has close_timeout in all.
            sender.finish_by(trio.current_time() + config.close_timeout)
    assert ending is not None
    return ending


@dataclass(frozen=True, slots=True)
class Report:
    """How a client's connection went."""

    ending: Ending
    sent: int
    """Messages written to it: broadcast lines and echoes."""
    dropped: int
    """Broadcast messages it missed under ``--on-full drop``."""


async def serve_client(
    ws: WebSocketConnection,
    hub: Fanout[bytes],
    config: Config,
    *,
    stop: trio.CancelScope,
    transport: trio.abc.Stream,
    counters: Counters | None = None,
) -> Report:
    """Subscribe one accepted connection to ``hub`` and serve it until it ends.

    Then close it, and report why.

    ``stop`` is the scope the server cancels to shut this client down: the race
    runs inside it, and the close that follows runs outside it, so a shutdown
    still gets its 1001 close frame out. ``transport`` is the connection's own
    stream: broadcast frames may be written to it directly, and it is closed
    at once when the connection must be dropped rather than closed.
    Closing takes at most ``config.close_timeout`` seconds in all. Messages
    written are counted in ``counters``. A client that breaks the protocol gets
    a close frame with 1002 or 1007 before its connection is dropped
    (:func:`~trio_broadcast.protocol_errors.fix_close_handling`).
    """
    # Does nothing if it was already called on the request, before the 101: the
    # earlier the better, since a frame parsed before it gets no close frame.
    fix_close_handling(ws, max_message_size=config.max_message_size)
    sender = _Sender(ws, transport, config.send_timeout, counters or Counters())
    ending = GOING_AWAY
    subscription = hub.subscribe(deliver=sender.deliver_nowait)
    try:
        with stop, subscription:
            ending = await _race(ws, subscription, sender, config)
    except Exception:
        ending = INTERNAL_ERROR
        raise
    finally:
        dropping = ending.code == ABNORMAL or sender.broken
        sender.finish_by(trio.current_time() + config.close_timeout)  # if the race never ran
        with trio.move_on_at(sender.close_deadline) as closing:
            if not dropping:
                await ws.aclose(ending.code, ending.reason)
        if dropping or closing.cancelled_caught:
            await trio.aclose_forcefully(transport)
    return Report(ending, sender.sent, subscription.dropped)
