"""The server: one nursery holding the listener, the line source and every client.

:func:`serve` is the whole server as a Trio function. Its nursery holds:

* the accept loop (:mod:`~trio_broadcast.accept`, one task per listening
  socket), which starts one task per connection in the same nursery;
* the line source (standard input, for the command), which publishes into the
  :class:`~trio_broadcast.fanout.Fanout`;
* the connection tasks: each reads the request head, then either answers a plain
  HTTP request (:class:`~trio_broadcast.web.Site`: the page, ``/healthz``,
  ``/metrics``) or checks the upgrade (:mod:`~trio_broadcast.access`), completes
  the WebSocket handshake and hands over to
  :func:`~trio_broadcast.client.serve_client`.

Stopping is cancellation, in two flavours. :meth:`Server.shutdown` is the
graceful one: it cancels the scopes that make up the server's *work* (accepting,
reading input, each client's race and each handshake), after which every client
is closed with 1001 "going away" and :func:`serve` returns. Cancelling
:func:`serve` itself is the hard stop: connections are dropped at once. :func:`run`
adds what the command needs on top: signals.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_server_stream,
)

from . import metrics
from .accept import DescriptorReserve, accept_forever, descriptor_limit
from .access import (
    ACCEPTED,
    OUT_OF_DESCRIPTORS,
    TOO_MANY_CLIENTS,
    Refusal,
    RefusalThrottle,
    check_handshake,
)
from .client import GOING_AWAY, Report, serve_client
from .client_text import quote, redact
from .config import Config
from .counters import Counters
from .fanout import Fanout
from .frame_stream import FrameStream
from .frames import encode_lines
from .handshake import (
    BadRequest,
    RequestHead,
    http_response,
    read_request_head,
    send_last,
)
from .protocol_errors import fix_close_handling
from .signals import StopSignals
from .stdin import Publish
from .web import Site

log = logging.getLogger("trio_broadcast")

LineSource = Callable[[Publish], Awaitable[None]]
"""An async function that calls ``publish`` with each batch of lines and returns
at the end of its input, like :func:`trio_broadcast.read_lines`."""

DROP_REPORT_INTERVAL = 10.0
"""Seconds between two warnings about messages dropped for slow clients."""

# Errors that only mean the peer went away or misbehaved before or during the
# handshake: worth a debug line, never a traceback.
_DISCONNECTS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ConnectionClosed,
    HandshakeError,
)


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


class Server:
    """A running server, as returned by ``await nursery.start(serve, config)``."""

    def __init__(
        self, config: Config, urls: tuple[str, ...], counters: Counters | None = None
    ) -> None:
        self.config = config
        self.urls = urls
        """One ``ws://`` or ``wss://`` URL per listening socket."""
        self.hub: Fanout[bytes] = Fanout(
            queue_size=config.queue_size, on_full=config.on_full, history=config.history
        )
        self.input_open = True
        """False once the line source has ended."""
        self.lines_read = 0
        self._clients = 0
        self._connections = 0
        self._stopping = False
        self._work: set[trio.CancelScope] = set()
        # Created here, entered by _accept(): the end of input may cancel it first.
        self._accepting = trio.CancelScope()
        self._drops_reported = 0
        self._drops_reported_at = -DROP_REPORT_INTERVAL
        self.counters = counters or Counters()
        """What ``/metrics`` reports, beside the fan-out's own counts."""
        self.started_at = trio.current_time()
        self._refusals = RefusalThrottle()
        self._registry = metrics.registry_for(self)
        self._site = Site(config, self._health, self._metrics)

    @property
    def port(self) -> int:
        """The port of the first listening socket (the only one for most hosts)."""
        return int(self.urls[0].rsplit(":", 1)[1].rstrip("/"))

    @property
    def clients(self) -> int:
        """Connected WebSocket clients (handshake done, not yet closed)."""
        return self._clients

    @property
    def connections(self) -> int:
        """Open TCP connections, including those still in the handshake."""
        return self._connections

    def shutdown(self) -> None:
        """Stop gracefully: stop accepting and reading, close every client with 1001.

        :func:`serve` returns once the last client is closed, each within
        ``config.close_timeout``. Calling it again does nothing more.
        """
        self._stopping = True
        for scope in self._work:
            scope.cancel()

    async def publish(self, lines: Sequence[str]) -> None:
        """Broadcast ``lines`` to every client, then let the clients run.

        Each line is encoded into its WebSocket frame here, once for all clients.

        Never waits on a client: the checkpoint after publishing is what lets
        client tasks write before the next batch arrives.
        """
        self.hub.publish(encode_lines(lines))
        self.lines_read += len(lines)
        self._report_drops()
        await trio.lowlevel.checkpoint()

    def _report_drops(self) -> None:
        now = trio.current_time()
        if (
            self.hub.dropped > self._drops_reported
            and now - self._drops_reported_at >= DROP_REPORT_INTERVAL
        ):
            log.warning(
                "dropped %d messages for slow clients (--on-full drop); %d in all",
                self.hub.dropped - self._drops_reported,
                self.hub.dropped,
            )
            self._drops_reported = self.hub.dropped
            self._drops_reported_at = now

    @contextmanager
    def _stopped_by_shutdown(self, scope: trio.CancelScope) -> Iterator[trio.CancelScope]:
        """Make :meth:`shutdown` cancel ``scope`` (at once, if it already began)."""
        self._work.add(scope)
        if self._stopping:
            scope.cancel()
        try:
            yield scope
        finally:
            self._work.discard(scope)

    async def _accept(
        self, listeners: list[trio.abc.Listener[trio.abc.Stream]], nursery: trio.Nursery
    ) -> None:
        # Connection tasks start in the server's nursery, outside this scope:
        # cancelling it stops accepting and leaves the connections running.
        reserve = DescriptorReserve()
        try:
            with self._stopped_by_shutdown(self._accepting), self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(
                            accept_forever,
                            listener,
                            self._connection,
                            nursery,
                            reserve,
                            self._refused_at_limit,
                        )
        finally:
            reserve.close()
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    def _refused_at_limit(self) -> None:
        self.counters.connections[OUT_OF_DESCRIPTORS] += 1
        held_back = self._refusals.report(OUT_OF_DESCRIPTORS, trio.current_time())
        if held_back is not None:
            log.warning(
                "out of file descriptors (ulimit -n %d, %d connections open): "
                "refusing new connections with 503 until clients leave%s",
                descriptor_limit(),
                self._connections,
                f" ({held_back} more refused since the last report)" if held_back else "",
            )

    async def _feed(self, source: LineSource) -> None:
        with self._stopped_by_shutdown(trio.CancelScope()) as reading, reading:
            await source(self.publish)
            self.input_open = False
            log.info("end of input after %d lines", self.lines_read)
            if self.config.exit_on_eof:
                # Clients drain their queues and close with 1000; once the
                # last one has, serve() returns.
                self.hub.close()
                self._accepting.cancel()

    async def _connection(self, stream: trio.abc.Stream) -> None:
        """One TCP connection, from its first byte to its close. Never raises."""
        peer = _peer_name(stream)
        self._connections += 1
        try:
            await self._handshake_and_serve(stream, peer)
        except* _DISCONNECTS as group:
            log.debug("connection from %s lost: %s", peer, quote(repr(group.exceptions[0])))
        except* Exception:
            log.exception("unexpected error on the connection from %s", peer)
        finally:
            self._connections -= 1
            await trio.aclose_forcefully(stream)

    def _health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "clients": self._clients,
            "uptime_s": round(trio.current_time() - self.started_at, 3),
            "stdin_open": self.input_open,
        }

    def _metrics(self) -> tuple[bytes, str]:
        return metrics.exposition(self._registry), metrics.CONTENT_TYPE

    def _refusal(self, head: RequestHead) -> Refusal | None:
        refusal = check_handshake(head, self.config)
        if refusal is not None:
            return refusal
        limit = self.config.max_clients
        if limit is not None and self._clients >= limit:
            return Refusal(
                503,
                TOO_MANY_CLIENTS,
                f"too many clients (--max-clients {limit}), try again later",
            )
        return None

    async def _refuse(self, stream: trio.abc.Stream, peer: str, refusal: Refusal) -> None:
        """Answer a refused handshake; log it, at most once a second per reason."""
        self.counters.connections[refusal.reason] += 1
        held_back = self._refusals.report(refusal.reason, trio.current_time())
        if held_back is not None:
            more = (
                f" ({held_back} more refused for this since the last report)" if held_back else ""
            )
            log.info("refused %s: %s%s", peer, quote(refusal.message), more)
        await send_last(
            stream, http_response(refusal.status, refusal.message + "\n", refusal.headers)
        )

    async def _handshake_and_serve(self, stream: trio.abc.Stream, peer: str) -> None:
        async with trio.open_nursery() as plumbing:  # trio-websocket's reader task
            accepted = await self._handshake(plumbing, stream, peer)
            if accepted is None:
                plumbing.cancel_scope.cancel()
                return
            try:
                await self._serve_accepted(*accepted, peer)
            finally:
                self._clients -= 1
                plumbing.cancel_scope.cancel()

    async def _handshake(
        self, plumbing: trio.Nursery, stream: trio.abc.Stream, peer: str
    ) -> tuple[WebSocketConnection, FrameStream] | None:
        """Read the request head and answer it, within the handshake timeout.

        Returns the accepted WebSocket connection (already counted in
        :attr:`clients`) and the stream it was made on, which from then on is
        the only writer to ``stream``; or ``None`` once a plain HTTP request or a refusal has
        been answered, or the time ran out. A method of its own, so that the
        request's objects are freed when it returns rather than kept for the
        whole life of the connection.
        """
        config = self.config
        ws: WebSocketConnection | None = None
        handshake = trio.move_on_after(config.handshake_timeout)
        with self._stopped_by_shutdown(handshake), handshake:
            try:
                head = await read_request_head(stream, config.max_request_head)
            except BadRequest as exc:
                log.debug("bad request from %s: %s", peer, quote(redact(str(exc))))
                await send_last(stream, http_response(exc.status, f"{exc}\n"))
                return None
            if head is None:
                return None
            if not head.is_websocket:
                response = self._site.respond(head)
                await send_last(stream, response.encode(head_only=head.method == "HEAD"))
                return None
            refusal = self._refusal(head)
            if refusal is not None:
                await self._refuse(stream, peer, refusal)
                return None
            self._clients += 1
            frames = FrameStream(stream, head.replay(), send_timeout=config.send_timeout)
            try:
                request = await wrap_server_stream(
                    plumbing, frames, max_message_size=config.max_message_size
                )
                # Before the 101, so that no frame of the client's is parsed without it.
                fix_close_handling(request, max_message_size=config.max_message_size)
                ws = await request.accept()
                self.counters.connections[ACCEPTED] += 1
            finally:
                if ws is None:
                    self._clients -= 1
        if ws is None:
            log.debug("handshake with %s did not complete in time", peer)
            return None
        return ws, frames

    async def _serve_accepted(
        self, ws: WebSocketConnection, stream: FrameStream, peer: str
    ) -> None:
        log.info("client %s connected (%d clients)", peer, self._clients)
        started = trio.current_time()
        report = Report(GOING_AWAY, 0, 0)  # what a hard stop leaves us to say
        try:
            stop = trio.CancelScope()
            with self._stopped_by_shutdown(stop):
                report = await serve_client(
                    ws,
                    self.hub,
                    self.config,
                    stop=stop,
                    stream=stream,
                    counters=self.counters,
                )
        finally:
            log.info(
                "client %s %s after %.1f s, %d messages sent%s",
                peer,
                quote(str(report.ending)),  # it holds the peer's close reason
                trio.current_time() - started,
                report.sent,
                f", {report.dropped} dropped" if report.dropped else "",
            )


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
    ``config.exit_on_eof`` is set. Raises :class:`StartupError` when it cannot
    listen or load its certificate. ``counters`` lets a line source count into
    the same numbers that ``/metrics`` reports (``read_lines`` counts long lines).
    """
    ssl_context = _ssl_context(config)
    listeners = await _open_listeners(config, ssl_context)
    urls = tuple(_url(listener, config.tls) for listener in listeners)
    server = Server(config, urls, counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._accept, listeners, nursery)
        if source is not None:
            nursery.start_soon(server._feed, source)
        task_status.started(server)


async def run(
    config: Config,
    source: LineSource | None,
    on_listening: Callable[[Server], None],
    counters: Counters | None = None,
) -> None:
    """:func:`serve`, stopped gracefully by SIGINT or SIGTERM; a second one exits at once.

    The exit status after a second signal is 128+N, as a shell reports a process
    killed by signal N; see :mod:`trio_broadcast.signals` for why a plain handler.
    """
    server: Server | None = None
    stop_requested = False

    def stop(signum: signal.Signals) -> None:
        nonlocal stop_requested
        stop_requested = True
        log.info("%s: closing %d clients", signum.name, server.clients if server else 0)
        if server is not None:
            server.shutdown()

    with StopSignals(stop):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, config, source, counters=counters))
            on_listening(server)
            if stop_requested:  # a signal came while starting up
                server.shutdown()


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.certfile is None or config.keyfile is None:
        return None
    # Open each file first: load_cert_chain's errors do not say which one failed.
    for what, path in (("certificate", config.certfile), ("key", config.keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"cannot read the TLS {what} {path!r}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except ssl.SSLError as exc:
        raise StartupError(
            f"cannot use the TLS certificate {config.certfile!r} with the key "
            f"{config.keyfile!r}: {exc.reason or exc}"
        ) from None
    return context


async def _open_listeners(
    config: Config, ssl_context: ssl.SSLContext | None
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    where = f"{config.host}:{config.port}"
    try:
        sockets = await trio.open_tcp_listeners(config.port, host=config.host)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve host {config.host!r}: {exc.strerror}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "address already in use (is another server running on that port?)"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "that address does not belong to this machine"
        else:
            why = exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {where}: {why}") from None
    if ssl_context is None:
        return list(sockets)
    return [trio.SSLListener(s, ssl_context, https_compatible=True) for s in sockets]


def _url(listener: trio.abc.Listener[trio.abc.Stream], tls: bool) -> str:
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    assert isinstance(listener, trio.SocketListener)
    host, port = listener.socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'wss' if tls else 'ws'}://{shown}:{port}/"


def _peer_name(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return repr(stream)
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "(disconnected)"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
