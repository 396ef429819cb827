"""The server: one nursery holding the listeners, the line source and every connection.

:func:`serve` is the whole server as a Trio function. Its nursery holds:

* the accept loop (:func:`~trio_broadcast.listeners.accept_forever`, one task
  per listening socket), which starts one task per connection in the same nursery;
* the line source (standard input, for the command), which hands each batch of
  lines to :meth:`Server.publish`, which hands them to the
  :class:`~trio_broadcast.broadcast.Broadcast`: encoded once per format, retained
  for clients that resume, published to every client (see :mod:`~trio_broadcast.source`);
* the connection tasks (:meth:`~trio_broadcast.connection.Connections.serve`):
  each answers, refuses or serves one connection;
* the keep-alive (:class:`~trio_broadcast.keepalive.KeepAlive`), one task that
  pings every client, while there are clients.

Stopping is cancellation, in two flavours. :meth:`Server.shutdown` is the
graceful one: it cancels the scopes that make up the server's *work* (accepting,
reading input, each client's race and each handshake; see
:mod:`~trio_broadcast.shutdown`), after which every client is closed with 1001
"going away" and :func:`serve` returns. Cancelling :func:`serve` itself is the
hard stop: connections are dropped at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import MappingProxyType

import trio

from . import metrics, request_handoff
from .broadcast import Broadcast
from .config import Config
from .connection import Connections
from .counters import Counters, Statistics
from .errors import StartupError
from .keepalive import KeepAlive
from .listeners import DescriptorReserve, accept_forever, open_listeners, url
from .retention import History
from .shutdown import Shutdown
from .source import LineSource
from .web import Site

log = logging.getLogger("trio_broadcast")

DROP_REPORT_INTERVAL = 10.0
"""Seconds between two warnings about slow clients: messages dropped, or waits for room."""


class Server:
    """A running server, as returned by ``await nursery.start(serve, config)``."""

    def __init__(
        self,
        config: Config,
        urls: tuple[str, ...],
        counters: Counters | None = None,
        history: History | None = None,
    ) -> None:
        self.config = config
        self.urls = urls
        """One ``ws://`` or ``wss://`` URL per listening socket."""
        self._broadcast = Broadcast(config, history, on_wait=self._report_wait)
        self._input_open = True
        self._lines_read = 0
        self._counters = counters or Counters()
        self._started_at = trio.current_time()
        self._shutdown = Shutdown()
        # Created here, entered by _accept(): the end of input may cancel it first.
        self._accepting = trio.CancelScope()
        self._drops_reported = 0
        self._drops_reported_at = -DROP_REPORT_INTERVAL
        self._wait_reported_at = -DROP_REPORT_INTERVAL
        self._registry = metrics.registry_for(self.statistics)
        site = Site(config, self._health, self._metrics)
        self._connections = Connections(
            config, self._broadcast, self._counters, self._shutdown, site
        )

    @property
    def port(self) -> int:
        """The port of the first listening socket (the only one for most hosts)."""
        return int(self.urls[0].rsplit(":", 1)[1].rstrip("/"))

    @property
    def clients(self) -> int:
        """Connected WebSocket clients (handshake done, not yet closed)."""
        return self._connections.clients

    def statistics(self) -> Statistics:
        """Every number the server keeps, gathered now into one frozen value.

        What ``/metrics`` and ``/healthz`` report; see
        :mod:`trio_broadcast.counters` for where each count lives.
        """
        counters = self._counters
        retention = self._broadcast.retention
        return Statistics(
            clients=self._connections.clients,
            connections=self._connections.open,
            handshakes=MappingProxyType(dict(counters.connections)),
            lines_read=self._lines_read,
            input_open=self._input_open,
            delivered=counters.delivered,
            bytes_sent=counters.bytes_sent,
            dropped=self._broadcast.dropped,
            slow_disconnects=self._broadcast.overflows,
            waited=self._broadcast.waited,
            lines_too_long=counters.lines_too_long,
            retained_lines=None if retention is None else retention.lines,
            retained_bytes=None if retention is None else retention.bytes,
            tasks=trio.lowlevel.current_statistics().tasks_living,
            uptime=trio.current_time() - self._started_at,
        )

    def shutdown(self) -> None:
        """Stop gracefully: stop accepting and reading, close every client with 1001.

        :func:`serve` returns once the last client is closed, each within
        ``config.close_timeout``. Calling it again does nothing more.
        """
        self._shutdown.request()

    async def publish(self, lines: Sequence[str], ids: Sequence[str] | None = None) -> None:
        """Broadcast ``lines`` to every client, then let the clients run.

        Each line is encoded here, once per format for all clients. ``ids``
        name the lines when the source keeps the history (``history`` of
        :func:`serve`); otherwise the server numbers and retains them.

        Never waits on a client, except under ``--on-full wait`` (at most
        ``config.max_wait``); publishing ends with a checkpoint, which is what
        lets client tasks write before the next batch arrives.
        """
        await self._broadcast.publish(lines, ids)
        self._lines_read += len(lines)
        self._report_drops()

    def _report_drops(self) -> None:
        now = trio.current_time()
        dropped = self._broadcast.dropped
        if (
            dropped > self._drops_reported
            and now - self._drops_reported_at >= DROP_REPORT_INTERVAL
        ):
            log.warning(
                "dropped %d messages for slow clients (--on-full drop); %d in all",
                dropped - self._drops_reported,
                dropped,
            )
            self._drops_reported = dropped
            self._drops_reported_at = now

    def _report_wait(self, full: int) -> None:
        now = trio.current_time()
        if now - self._wait_reported_at >= DROP_REPORT_INTERVAL:
            broadcast = self._broadcast
            log.warning(
                "the feed waits for %d slow client%s, at most %g s (--on-full wait); "
                "%d waits, %.1f s in all so far, %d clients cut off",
                full,
                "" if full == 1 else "s",
                self.config.max_wait,
                broadcast.waits,
                broadcast.waited,
                broadcast.overflows,
            )
            self._wait_reported_at = now

    async def _accept(
        self, listeners: list[trio.abc.Listener[trio.abc.Stream]], nursery: trio.Nursery
    ) -> None:
        # Connection tasks start in the server's nursery, outside this scope:
        # cancelling it stops accepting and leaves the connections running.
        reserve = DescriptorReserve()
        try:
            with self._shutdown.cancels(self._accepting), self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(
                            accept_forever,
                            listener,
                            self._connections.serve,
                            nursery,
                            reserve,
                            self._connections.refused_at_limit,
                        )
        finally:
            reserve.close()
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _feed(self, source: LineSource) -> None:
        with self._shutdown.cancels(trio.CancelScope()) as reading, reading:
            await source(self.publish)
            self._input_open = False
            log.info("end of input after %d lines", self._lines_read)
            if self.config.exit_on_eof:
                # Clients drain their queues and close with 1000; once the
                # last one has, serve() returns.
                self._broadcast.close()
                self._accepting.cancel()

    def _health(self) -> dict[str, object]:
        now = self.statistics()
        return {
            "status": "ok",
            "clients": now.clients,
            "uptime_s": round(now.uptime, 3),
            "stdin_open": now.input_open,
        }

    def _metrics(self) -> tuple[bytes, str]:
        return metrics.exposition(self._registry), metrics.CONTENT_TYPE


async def serve(
    config: Config,
    source: LineSource | None = None,
    *,
    counters: Counters | None = None,
    history: History | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSocket clients until stopped; supports ``nursery.start``.

    ``source`` feeds the broadcast (``None``: publish with :meth:`Server.publish`
    yourself). ``await nursery.start(serve, config)`` returns the :class:`Server` once
    it is listening. :func:`serve` returns after :meth:`Server.shutdown`, or at the end
    of ``source`` when ``config.exit_on_eof`` is set. Raises
    :class:`~trio_broadcast.errors.StartupError` when it cannot listen or load its
    certificate, or when the installed wsproto or trio-websocket lacks what
    :mod:`~trio_broadcast.request_handoff` uses. ``counters`` lets a line source count
    into the same numbers that ``/metrics`` reports (``read_lines`` counts long lines).
    ``history`` is where resuming clients' lines are read from when ``source`` keeps
    them and names each line (a Redis stream:
    :class:`~trio_broadcast.redis_stream.StreamHistory`); by default the server retains
    them itself (``config.retain``, ``config.retain_bytes``).
    """
    try:
        request_handoff.check_compatible()  # every handshake depends on it
    except request_handoff.IncompatibleHandoff as exc:
        raise StartupError(str(exc)) from None
    listeners = await open_listeners(config)
    server = Server(config, tuple(url(listener) for listener in listeners), counters, history)
    async with trio.open_nursery() as nursery:
        if config.ping_interval > 0:
            server._connections.keepalive = KeepAlive(config.ping_interval, nursery)
        nursery.start_soon(server._accept, listeners, nursery)
        if source is not None:
            nursery.start_soon(server._feed, source)
        task_status.started(server)
