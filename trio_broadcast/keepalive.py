"""Keep-alive: one task pings every client in turn, instead of a task per client.

Every ``ping_interval`` seconds each connected client gets a ping; a client
whose last ping has no pong by the time the next one is due is dropped
(:meth:`Pinged.no_pong`). Before, each client had a task of its own asleep
between pings; an idle client's task costs about 1.5 KB and a task switch per
ping, so the server now keeps one scheduler for all of them:

* every client is pinged at the same interval, from the moment it registers
  (:meth:`KeepAlive.add`), and each ping's next one is due an interval after
  it is sent, so appending each client back after its ping keeps the queue in
  the order of the next ping due: a plain deque, no heap;
* the scheduler sleeps until the first ping due, pings everyone due, and
  appends them back; a client that left is skipped when its turn comes (its
  entry only lets go of it when it leaves, so leaving costs nothing);
* a ping is sent, and its pong awaited, by a short task in the scheduler's
  nursery, the only task a ping costs and only while one is in flight; a
  client that leaves cancels it (:meth:`Entry.remove`), and a cancelled ping
  leaves no half frame behind: the frame is the connection's
  :class:`~trio_broadcast.frame_stream.FrameStream`'s once handed over;
* the scheduler runs in the server's nursery while any client is registered,
  and returns as soon as none is (so a server that is stopping is not held up
  by it), to be started again by the next :meth:`KeepAlive.add`.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

log = logging.getLogger("trio_broadcast")


class Pinged(Protocol):
    """A client that the keep-alive pings, and tells when it must end."""

    @property
    def ws(self) -> WebSocketConnection:
        """The connection to ping."""

    def no_pong(self, interval: float) -> None:
        """Its last ping had no pong within ``interval`` seconds: drop it. Must not block."""

    def ping_failed(self) -> None:
        """A ping could not be sent: the connection is closed or broken. Must not block."""


class Entry:
    """One registered client: when its next ping is due, and the ping in flight, if any."""

    __slots__ = ("_keepalive", "client", "due", "pinging")

    def __init__(self, keepalive: KeepAlive, client: Pinged, due: float) -> None:
        self._keepalive = keepalive
        self.client: Pinged | None = client
        """The client; ``None`` once it has left. An entry stays queued until its
        turn comes, and must not keep a departed client's connection alive until then."""
        self.due = due
        self.pinging: trio.CancelScope | None = None
        """The scope of the ping in flight, until its pong comes."""

    def remove(self) -> None:
        """Stop pinging this client (it is leaving): cancel the ping in flight. Idempotent."""
        if self.client is not None:
            self._keepalive._forget(self)


class KeepAlive:
    """Ping every registered client every ``interval`` seconds, from one task."""

    __slots__ = ("_due", "_live", "_nursery", "_running", "_sleep", "interval")

    def __init__(self, interval: float, nursery: trio.Nursery) -> None:
        """``nursery`` is where the scheduler runs (the server's), while it has clients."""
        if not 0 < interval < float("inf"):
            raise ValueError(f"interval must be more than 0 seconds, not {interval}")
        self.interval = interval
        self._nursery = nursery
        self._due: deque[Entry] = deque()
        self._live = 0
        self._running = False
        self._sleep: trio.CancelScope | None = None

    @property
    def clients(self) -> int:
        """How many clients are registered."""
        return self._live

    def add(self, client: Pinged) -> Entry:
        """Ping ``client`` every ``interval`` from now on, until :meth:`Entry.remove`."""
        entry = Entry(self, client, trio.current_time() + self.interval)
        self._due.append(entry)  # due last: every other is due at most an interval from now
        self._live += 1
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._run)
        return entry

    def _forget(self, entry: Entry) -> None:
        entry.client = None
        if entry.pinging is not None:
            entry.pinging.cancel()
        self._live -= 1
        if not self._live and self._sleep is not None:
            self._sleep.cancel()  # nobody left: the scheduler returns now

    async def _run(self) -> None:
        while True:
            async with trio.open_nursery() as pings:
                await self._schedule(pings)
                pings.cancel_scope.cancel()  # the pings of clients that all left
            # No checkpoint from this test to the end: an add() now starts a new run.
            if not self._live:
                self._running = False
                self._due.clear()  # only entries of clients that left
                return

    async def _schedule(self, pings: trio.Nursery) -> None:
        due = self._due
        while self._live:
            with trio.CancelScope(deadline=due[0].due) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            while due and due[0].due <= now:
                entry = due.popleft()
                client = entry.client
                if client is None:  # it left
                    continue
                if entry.pinging is not None:  # no pong since the last ping
                    self._forget(entry)
                    client.no_pong(self.interval)
                    continue
                # From now, not from when it was due: after a stall of the
                # event loop, an entry is not due again in the same pass, and
                # appending in the order of now keeps the queue in due order.
                entry.due = now + self.interval
                due.append(entry)
                # Made here, so that leaving cancels the ping even before its task runs.
                entry.pinging = trio.CancelScope()
                pings.start_soon(self._ping, entry, entry.pinging)

    @staticmethod
    async def _ping(entry: Entry, scope: trio.CancelScope) -> None:
        client = entry.client
        if client is None:
            # It left between start_soon and now, and may be closing: no ping
            # after our close frame. ws.ping() hands the ping over before its
            # first checkpoint, so past this test the client is still in its
            # race, and leaving cancels the wait for the pong.
            return
        with scope:
            try:
                await client.ws.ping()
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                if entry.client is not None:
                    client.ping_failed()
            except Exception:
                # Not this connection's ping only: an error here would end the
                # server's nursery. Log it, and end this client alone.
                log.exception("keep-alive ping failed unexpectedly")
                if entry.client is not None:
                    client.ping_failed()
        if entry.pinging is scope:
            entry.pinging = None
