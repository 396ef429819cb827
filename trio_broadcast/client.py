"""One client's race: its socket against its broadcast feed, in as few tasks as it needs.

After the handshake, :func:`serve_client` subscribes the client to the
:class:`~trio_broadcast.broadcast.Broadcast` in the format it asked for (:class:`Wants`)
and runs its race (:class:`_Race`): several sides compete, and whichever ends
first decides how the connection ends. An idle client that keeps up costs two
tasks, its connection task and trio-websocket's reader; the other sides are
callbacks, or tasks that exist only while they have work:

* receiving, in the connection task itself: read the client's messages and
  echo each one back (or discard it with ``echo=False``; reading must go on
  so that pings and close frames are still processed);
* the opening, a task for a ``trio-broadcast.v1`` client only, until it has
  sent the hello, the gap notice if any, and the backlog (:class:`_Opening`),
  which the echoes wait for, and joined the live feed;
* the broadcast: while the client keeps up, the publisher writes its frames
  itself through :meth:`_Sender.deliver_nowait` (frames encoded once for all
  clients, :mod:`~trio_broadcast.frames`), and the client has no queue and no
  task for it. When the socket cannot take a batch at once, the fan-out
  queues it and calls :meth:`_Race.wake`, which starts the draining task
  (:meth:`_Race._drain`): it writes everything queued in one write, again
  until nothing is, and ends; the end of the feed wakes it too;
* the cut-off: the fan-out calls :meth:`_Race.cut_off` when the client's
  queue overflows, which must end the race even while the draining task is
  stuck in a write;
* the keep-alive: the server's :class:`~trio_broadcast.keepalive.KeepAlive`
  pings every ``ping_interval`` seconds from one task for all clients, and
  calls :meth:`_Race.no_pong` for a peer that has not answered by the next ping.

The first ending (:meth:`_Race.end`) cancels the race's nursery, and with it
every side. Cancellation only ever interrupts a *wait* (for a message, the
socket, another writer); a frame being written is never cut in half, because
every byte goes through the connection's
:class:`~trio_broadcast.frame_stream.FrameStream`, which keeps what a
cancelled writer handed over and finishes it before anything else. Once the
race is over nothing new starts in it (a late wake is ignored), the keep-alive
forgets the client, the subscription is closed, and the connection is closed
with the ending's code, within a bounded time, or dropped if the peer does not
cooperate.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from . import subprotocol
from .broadcast import Broadcast
from .config import Config
from .counters import Counters
from .fanout import Overflow, Subscription
from .frame_stream import FrameStream
from .frames import message_frame, text_frame
from .keepalive import KeepAlive
from .protocol_errors import fix_close_handling
from .retention import Evicted, History, Unavailable
from .shutdown import Shutdown

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
STUCK = Ending(ABNORMAL, "write stuck: the client stopped reading (send_timeout)")
FELL_BEHIND = Ending(1008, "too slow: fell behind the retained lines")
TRY_AGAIN = Ending(1013, "try again later: the history cannot be read now")

BACKLOG_CHUNK = 256
"""Lines of a resumed backlog read and written at a time: what a client catching up holds."""


@dataclass(frozen=True, slots=True)
class Wants:
    """The feed a client asked for in its handshake."""

    v1: bool = False
    """It speaks ``trio-broadcast.v1`` (:mod:`~trio_broadcast.subprotocol`)."""
    since: str | None = None
    """With ``v1``: the ID to resume after (``?since=``)."""


def _closed_by_peer(reason: CloseReason | None) -> Ending:
    if reason is None:
        return Ending(ABNORMAL, "connection lost", by_peer=True)
    return Ending(reason.code, reason.reason or "", by_peer=True)


_WAKE = b""
"""Queued in place of a batch that the stream took only in part: no frame is
empty, so it writes nothing itself, but it wakes the client's task, whose next
write finishes the batch (the stream writes what it holds first)."""


class _Sender:
    """Hands this client's frames to its :class:`FrameStream`, and counts them.

    The stream is the connection's only writer and keeps every frame whole,
    whoever writes and whenever a writer is cancelled; see
    :mod:`trio_broadcast.frame_stream`.
    """

    __slots__ = ("_counters", "_stream", "_v1", "sent")

    def __init__(self, stream: FrameStream, counters: Counters, *, v1: bool = False) -> None:
        self._stream = stream
        self._counters = counters
        self._v1 = v1
        self.sent = 0
        """Messages handed to the stream: written, or being written when it ended."""

    def _count(self, frames: Sequence[bytes]) -> None:
        self.sent += len(frames)
        self._counters.count_frames(len(frames), sum(map(len, frames)))

    def deliver_nowait(self, frames: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """The fan-out's fast path: hand ``frames`` to the stream now, if it is idle.

        Called by the publisher while this client has nothing queued. Returns
        what the fan-out must queue: nothing, the whole batch (the stream was
        busy), or :data:`_WAKE` (the stream holds the unwritten end of the
        batch, and this client's task must finish it). Never raises: a broken
        connection is the client task's to notice.
        """
        written = self._stream.offer(frames)
        if written is None:
            return frames
        count = len(frames)
        self.sent += count
        self._counters.count_frames(count, len(frames[0]) if count == 1 else sum(map(len, frames)))
        return () if written else (_WAKE,)

    async def send_frames(self, frames: list[bytes]) -> None:
        """Write queued broadcast frames (and what the fast path left) in one go."""
        frames = [frame for frame in frames if frame]  # without the _WAKE markers
        await self._stream.write(frames)
        self._count(frames)

    async def write(self, frames: list[bytes]) -> None:
        """Write frames that are not messages of the feed (a hello, a gap notice): not counted."""
        await self._stream.write(frames)

    async def send(self, message: str | bytes) -> None:
        """Send one message (an echo), keeping its type; a v1 client's text as ``echo``."""
        if self._v1 and isinstance(message, str):
            frame = text_frame(subprotocol.echo(message))
        else:
            frame = message_frame(message)
        await self._stream.write((frame,))
        self._count((frame,))


class _Opening:
    """What a v1 client is sent before its live feed: hello, gap notice, backlog.

    The backlog is read from the history up to its current position, chunk by
    chunk, and the position is looked at again after each chunk: lines keep
    coming while a client catches up, and it reads them from the history too.
    Only once it has sent everything up to the position does it join the
    fan-out, with no checkpoint in between, so the live feed starts right
    after. Until then nothing queues up for it, so however long it takes, its
    queue cannot overflow; a client slower than the feed falls behind the
    history instead, and is closed (:data:`FELL_BEHIND`).

    :attr:`greeted` is set once the hello (and gap notice) are written: echoes
    wait for it, so that the hello is always the first message.
    """

    def __init__(
        self, history: History, since: str | None, lines: int, subscription: Subscription[bytes]
    ) -> None:
        self._history = history
        self._since = since
        self._lines = lines
        self._subscription = subscription
        self.greeted = trio.Event()

    async def send(self, sender: _Sender) -> Ending | None:
        """Send it all and join the live feed; or return why the connection must end."""
        history = self._history
        try:
            start = await history.start(self._since, self._lines, history.position())
            greeting = [text_frame(subprotocol.hello(start.position))]
            if start.gap is not None:
                greeting.append(text_frame(subprotocol.gap(start.gap.since, start.gap.missed)))
            await sender.write(greeting)
            self.greeted.set()
            after = start.position
            while (until := history.position()) != after:
                chunk = await history.read(after, until, BACKLOG_CHUNK)
                if not chunk.frames:
                    after = until  # what is left up to it is not for clients
                    continue
                await sender.send_frames(chunk.frames)
                after = chunk.last
                # Neither the read nor a write the socket takes at once yields:
                # without this, a long backlog would hold up every other client.
                await trio.lowlevel.checkpoint()
        except Evicted:
            return FELL_BEHIND
        except Unavailable:
            return TRY_AGAIN
        self._subscription.join()  # caught up: live from the very next line
        return None


class _Race:
    """One client's race: its sides, and the one :class:`Ending` that the first to end decides.

    A side ends the race with :meth:`end`, which cancels the race's nursery:
    whatever else is running stops at its next wait. Sides that are not tasks
    of their own call it from elsewhere: the fan-out when it cuts the client
    off (:meth:`cut_off`), the server's keep-alive when a ping goes unanswered
    (:meth:`no_pong`) or cannot be sent (:meth:`ping_failed`).
    """

    __slots__ = (
        "_draining",
        "_echo",
        "_nursery",
        "_over",
        "_stream",
        "_subscription",
        "_woken",
        "ending",
        "opening",
        "sender",
        "ws",
    )

    def __init__(
        self, ws: WebSocketConnection, sender: _Sender, stream: FrameStream, echo: bool
    ) -> None:
        self.ws = ws
        self.sender = sender
        self._stream = stream
        self._echo = echo
        self.ending: Ending | None = None
        """The first ending; later ones are ignored."""
        self.opening: _Opening | None = None
        self._subscription: Subscription[bytes] | None = None
        self._nursery: trio.Nursery | None = None
        self._over = False  # the race's body has exited: start nothing more
        self._draining = False  # a _drain task is running
        self._woken = False  # woken before the race's nursery was open

    def end(self, ending: Ending) -> None:
        """End the race with ``ending``, unless it already has one. Never blocks."""
        if self.ending is None:
            self.ending = ending
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def cut_off(self) -> None:
        """The fan-out cut this client off for falling behind (its ``cut_off`` callback)."""
        self.end(TOO_SLOW)

    def no_pong(self, interval: float) -> None:
        """The keep-alive's verdict: the last ping had no answer in time."""
        self.end(Ending(ABNORMAL, f"no pong within {interval:g} s"))

    def ping_failed(self) -> None:
        """The keep-alive could not send a ping."""
        self.end(self._broken())

    def _broken(self) -> Ending:
        # A write that timed out (ours, or a pong or ping of trio-websocket's,
        # which it turns into a 1006) leaves the stream stuck.
        return STUCK if self._stream.stuck else _closed_by_peer(self.ws.closed)

    def wake(self) -> None:
        """Something is queued for this client (the fan-out's ``wake`` callback): drain it.

        Starts the :meth:`_drain` task unless one is running; before the race's
        nursery is open, remembers it for :meth:`run`; once the race is over,
        does nothing (the subscription is about to be closed, and the
        connection with it).
        """
        if self._draining or self._over:
            return
        if self._nursery is None:
            self._woken = True
            return
        self._draining = True
        self._nursery.start_soon(self._side, self._drain)

    async def run(
        self, subscription: Subscription[bytes], close_timeout: float, stop: Shutdown
    ) -> Ending:
        """Run the race until a side ends it: receiving in this task, the rest on demand.

        Returns :data:`GOING_AWAY` if ``stop`` ended it. The race's nursery is
        the one cancel scope of the race: ``stop`` cancels it, and so does :meth:`end`.
        """
        self._subscription = subscription
        async with trio.open_nursery() as race:
            self._nursery = race
            with stop.cancels(race.cancel_scope):
                try:
                    if self.ending is not None:  # cut off before the race began
                        race.cancel_scope.cancel()
                    if self._woken:
                        self._woken = False
                        self.wake()
                    if self.opening is not None:
                        race.start_soon(self._side, self._open)
                    # The receiving side, inline: a coroutine of its own would
                    # stay suspended as long as the client, 0.25 KB (issue 14).
                    # It reads the client's messages and echoes each one; with
                    # echo off it reads on, so that pings and closes are handled.
                    try:
                        if self.opening is not None:
                            await self.opening.greeted.wait()  # the hello comes first
                        while True:
                            try:
                                message = await self.ws.get_message()
                            except ConnectionClosed as exc:
                                ending = _closed_by_peer(exc.reason)
                                break
                            if self._echo:
                                await self.sender.send(message)
                    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                        ending = self._broken()  # the echo's write failed
                    self.end(ending)
                finally:
                    # The race is over, by a side finishing or by cancellation:
                    # from now on, closing has close_timeout in all, and that
                    # bounds a TLS write still in flight, which the nursery
                    # waits for. Nothing new starts in it (see wake()), and
                    # a stop that cancelled it is the ending: a late cut-off
                    # or missing pong must not turn its 1001 into another code.
                    if self.ending is None:
                        self.ending = GOING_AWAY
                    self._over = True
                    self._stream.finish_by(trio.current_time() + close_timeout)
        assert self.ending is not None
        return self.ending

    async def _side(self, side: Callable[[], Awaitable[Ending | None]]) -> None:
        try:
            ending = await side()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            ending = self._broken()
        if ending is not None:
            self.end(ending)

    async def _open(self) -> Ending | None:
        """A v1 client's hello, gap notice and backlog; it joins the live feed at the end."""
        assert self.opening is not None
        return await self.opening.send(self.sender)

    async def _drain(self) -> Ending | None:
        """Write what is queued until nothing is: then the fan-out delivers directly again."""
        assert self._subscription is not None
        try:
            # take() returning [] and _draining going False come with no
            # checkpoint between them, so no wake() falls in the gap.
            while frames := self._subscription.take():
                await self.sender.send_frames(frames)
        except trio.EndOfChannel:
            return FEED_ENDED
        except Overflow:
            return TOO_SLOW
        finally:
            self._draining = False
        return None


@dataclass(frozen=True, slots=True)
class Report:
    """How a client's connection went."""

    ending: Ending
    sent: int
    """Messages written to it: broadcast lines and echoes."""
    dropped: int
    """Broadcast messages it missed under ``--on-full drop``."""


async def _subscribe(
    broadcast: Broadcast, wants: Wants, race: _Race, config: Config, stop: Shutdown
) -> Subscription[bytes] | None:
    """The client's subscription, its opening for a v1 client; ``None`` if ``stop`` came first."""
    deliver = race.sender.deliver_nowait
    if not wants.v1:
        return broadcast.subscribe_plain(deliver, cut_off=race.cut_off, wake=race.wake)
    # The history may take a while to be ready: the shutdown must not wait for it.
    with stop.cancels(trio.CancelScope()) as waiting, waiting:
        await broadcast.history.ready(wants.since)
        subscription = broadcast.subscribe_v1(deliver, cut_off=race.cut_off, wake=race.wake)
        race.opening = _Opening(broadcast.history, wants.since, config.history, subscription)
        return subscription
    return None


async def serve_client(
    ws: WebSocketConnection,
    broadcast: Broadcast,
    config: Config,
    *,
    wants: Wants = Wants(),
    stop: Shutdown,
    stream: FrameStream,
    counters: Counters | None = None,
    keepalive: KeepAlive | None = None,
) -> Report:
    """Subscribe one accepted connection to ``broadcast`` and serve it until it ends.

    Then close it, and report why. ``wants`` is the feed it asked for: plain
    text, or ``trio-broadcast.v1`` messages, maybe resuming after an ID.

    ``stop`` is the server's :class:`~trio_broadcast.shutdown.Shutdown`, which
    shuts this client down: it cancels the race (the race's own nursery is
    registered with it: no scope of its own for that), and the close that
    follows runs outside it, so a shutdown still gets its 1001 close frame out.
    ``stream`` is the connection's :class:`FrameStream`, the one ``ws`` was
    made on: broadcast frames and echoes are written to it directly, and it
    is closed at once when the connection must be dropped rather than closed. Closing takes at most
    ``config.close_timeout`` seconds in all: finishing the frame in progress,
    the close frame, and the client's reply. Messages written are counted in
    ``counters``. ``keepalive`` is the server's, which pings it (none: no
    pings). A client that breaks the protocol gets a close frame with
    1002 or 1007 before its connection is dropped
    (:func:`~trio_broadcast.protocol_errors.fix_close_handling`).
    """
    # Does nothing if it was already called on the request, before the 101: the
    # earlier the better, since a frame parsed before it gets no close frame.
    fix_close_handling(ws, max_message_size=config.max_message_size)
    sender = _Sender(stream, counters or Counters(), v1=wants.v1)
    race = _Race(ws, sender, stream, config.echo)
    ending = GOING_AWAY
    dropped = 0
    try:
        subscription = await _subscribe(broadcast, wants, race, config, stop)
        if subscription is not None:
            pinging = keepalive.add(race) if keepalive is not None else None
            try:
                ending = await race.run(subscription, config.close_timeout, stop)
            finally:
                if pinging is not None:
                    pinging.remove()
                subscription.close()  # not a with: its bound __exit__ would stay 64 B
                dropped = subscription.dropped
    except Exception:
        ending = INTERNAL_ERROR
        raise
    finally:
        deadline = stream.finish_by(trio.current_time() + config.close_timeout)
        dropping = ending.code == ABNORMAL or stream.broken
        with trio.move_on_at(deadline) as closing:
            if not dropping:
                await ws.aclose(ending.code, ending.reason)
        if dropping or closing.cancelled_caught or stream.broken:
            await stream.abort()
    return Report(ending, sender.sent, dropped)
