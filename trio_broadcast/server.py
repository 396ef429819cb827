"""The server: one nursery holding the listeners, the line source and every connection.

:func:`serve` is the whole server as a Trio function. Its nursery holds:

* the accept loop (:func:`~trio_broadcast.listeners.accept_forever`, one task
  per listening socket), which starts one task per connection in the same nursery;
* the line source (standard input, for the command), which hands each batch of
  lines to :meth:`Server.publish`, which encodes them once and publishes them
  into the :class:`~trio_broadcast.fanout.Fanout` (see :mod:`~trio_broadcast.source`);
* the connection tasks (:meth:`~trio_broadcast.connection.Connections.serve`):
  each answers, refuses or serves one connection.

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

import trio

from . import metrics
from .config import Config
from .connection import Connections
from .counters import Counters
from .fanout import Fanout
from .frames import encode_lines
from .listeners import DescriptorReserve, accept_forever, open_listeners, url
from .shutdown import Shutdown
from .source import LineSource
from .web import Site

log = logging.getLogger("trio_broadcast")

DROP_REPORT_INTERVAL = 10.0
"""Seconds between two warnings about messages dropped for slow clients."""


class Server:
    """A running server, as returned by ``await nursery.start(serve, config)``."""

    def __init__(
        self, config: Config, urls: tuple[str, ...], counters: Counters | None = None
    ) -> None:
        self.config = config
        self.urls = urls
        """One ``ws://`` or ``wss://`` URL per listening socket."""
        self.fanout: Fanout[bytes] = Fanout(
            queue_size=config.queue_size, on_full=config.on_full, history=config.history
        )
        self.input_open = True
        """False once the line source has ended."""
        self.lines_read = 0
        self.counters = counters or Counters()
        """What ``/metrics`` reports, beside the fan-out's own counts."""
        self.started_at = trio.current_time()
        self._shutdown = Shutdown()
        # Created here, entered by _accept(): the end of input may cancel it first.
        self._accepting = trio.CancelScope()
        self._drops_reported = 0
        self._drops_reported_at = -DROP_REPORT_INTERVAL
        self._registry = metrics.registry_for(self)
        site = Site(config, self._health, self._metrics)
        self._connections = Connections(config, self.fanout, self.counters, self._shutdown, site)

    @property
    def port(self) -> int:
        """The port of the first listening socket (the only one for most hosts)."""
        return int(self.urls[0].rsplit(":", 1)[1].rstrip("/"))

    @property
    def clients(self) -> int:
        """Connected WebSocket clients (handshake done, not yet closed)."""
        return self._connections.clients

    @property
    def connections(self) -> int:
        """Open TCP connections, including those still in the handshake."""
        return self._connections.open

    def shutdown(self) -> None:
        """Stop gracefully: stop accepting and reading, close every client with 1001.

        :func:`serve` returns once the last client is closed, each within
        ``config.close_timeout``. Calling it again does nothing more.
        """
        self._shutdown.request()

    async def publish(self, lines: Sequence[str]) -> None:
        """Broadcast ``lines`` to every client, then let the clients run.

        Each line is encoded into its WebSocket frame here, once for all clients.

        Never waits on a client: the checkpoint after publishing is what lets
        client tasks write before the next batch arrives.
        """
        self.fanout.publish(encode_lines(lines))
        self.lines_read += len(lines)
        self._report_drops()
        await trio.lowlevel.checkpoint()

    def _report_drops(self) -> None:
        now = trio.current_time()
        if (
            self.fanout.dropped > self._drops_reported
            and now - self._drops_reported_at >= DROP_REPORT_INTERVAL
        ):
            log.warning(
                "dropped %d messages for slow clients (--on-full drop); %d in all",
                self.fanout.dropped - self._drops_reported,
                self.fanout.dropped,
            )
            self._drops_reported = self.fanout.dropped
            self._drops_reported_at = now

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
            self.input_open = False
            log.info("end of input after %d lines", self.lines_read)
            if self.config.exit_on_eof:
                # Clients drain their queues and close with 1000; once the
                # last one has, serve() returns.
                self.fanout.close()
                self._accepting.cancel()

    def _health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "clients": self.clients,
            "uptime_s": round(trio.current_time() - self.started_at, 3),
            "stdin_open": self.input_open,
        }

    def _metrics(self) -> tuple[bytes, str]:
        return metrics.exposition(self._registry), metrics.CONTENT_TYPE


async def serve(
    config: Config,
    source: LineSource | None = None,
    *,
    counters: Counters | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSocket clients until stopped; supports ``nursery.start``.

    ``source`` feeds the broadcast (``None``: publish with
    :meth:`Server.publish` yourself). ``await nursery.start(serve, config)``
    returns the :class:`Server` once it is listening. :func:`serve` returns after
    :meth:`Server.shutdown`, or at the end of ``source`` when
    ``config.exit_on_eof`` is set. Raises :class:`~trio_broadcast.errors.StartupError`
    when it cannot listen or load its certificate. ``counters`` lets a line source
    count into the same numbers that ``/metrics`` reports (``read_lines`` counts
    long lines).
    """
    listeners = await open_listeners(config)
    server = Server(config, tuple(url(listener) for listener in listeners), counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._accept, listeners, nursery)
        if source is not None:
            nursery.start_soon(server._feed, source)
        task_status.started(server)
