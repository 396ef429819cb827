"""One TCP connection, from its first byte to its close: answer it, refuse it, or serve it.

:meth:`Connections.serve` runs once per accepted connection, in the server's
nursery. It reads the request head (bounded in size and time), then either

* answers a plain HTTP request (:class:`~trio_broadcast.web.Site`: the page,
  ``/healthz``, ``/metrics``) and closes;
* refuses an upgrade that :mod:`~trio_broadcast.access` turns down, or one
  beyond ``max_clients``, with its HTTP status, counted and logged at most once
  a second per reason;
* or completes the WebSocket handshake on the connection's
  :class:`~trio_broadcast.frame_stream.FrameStream`, with the
  ``trio-broadcast.v1`` subprotocol if the client offers it, and hands over to
  :func:`~trio_broadcast.client.serve_client`.

A connected client holds one *client slot* (:class:`_ClientSlot`)
from the moment its handshake is accepted until it is closed, and the
``max_clients`` check and the taking of the slot happen with no checkpoint in
between, so the limit is never overshot. Errors stay inside the connection: a
peer that goes away costs a debug line, a bug a logged traceback, never the server.
"""

from __future__ import annotations

import logging
import resource

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from . import subprotocol
from .access import (
    ACCEPTED,
    OUT_OF_DESCRIPTORS,
    TOO_MANY_CLIENTS,
    Refusal,
    RefusalThrottle,
    check_handshake,
)
from .broadcast import Broadcast
from .client import GOING_AWAY, Report, Wants, serve_client
from .client_text import quote, redact
from .config import Config
from .counters import Counters
from .error_cycles import forget_cause_tracebacks
from .frame_stream import FrameStream
from .handshake import BadRequest, RequestHead, http_response, read_request_head, send_last
from .keepalive import KeepAlive
from .protocol_errors import break_cycles, fix_close_handling
from .request_handoff import accept_parsed, forget_parser
from .shutdown import Shutdown
from .web import Site

log = logging.getLogger("trio_broadcast")

# Errors that only mean the peer went away or misbehaved before or during the
# handshake: worth a debug line, never a traceback.
_DISCONNECTS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ConnectionClosed,
    HandshakeError,
)


class Connections:
    """Every connection of one server: how each is handled, and how many there are."""

    def __init__(
        self,
        config: Config,
        broadcast: Broadcast,
        counters: Counters,
        shutdown: Shutdown,
        site: Site,
    ) -> None:
        self._config = config
        self._broadcast = broadcast
        self._counters = counters
        self._shutdown = shutdown
        self._site = site
        self._refusals = RefusalThrottle()
        self.keepalive: KeepAlive | None = None
        """What pings the clients, set once the server's nursery is open (none: no pings)."""
        self.open = 0
        """Open TCP connections, including those still in the handshake."""
        self.clients = 0
        """Connected WebSocket clients (handshake done, not yet closed): slots taken."""

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Handle one accepted connection until it is closed. Never raises."""
        # For log lines at INFO and DEBUG, which are all that use it but one: a
        # system call per connection saved when they are not written.
        peer = peer_name(stream) if log.isEnabledFor(logging.INFO) else ""
        self.open += 1
        frames: FrameStream | None = None
        ws: WebSocketConnection | None = None
        try:
            async with trio.open_nursery() as plumbing:  # trio-websocket's reader task
                slot = _ClientSlot(self)
                try:
                    accepted = await self._handshake(plumbing, stream, peer, slot)
                    if accepted is not None:
                        ws, frames, wants = accepted
                        # Here, not in a coroutine of its own: its frame would
                        # live as long as the client, 0.4 KB (issue 14).
                        started = self._connected(peer, wants)
                        report = Report(GOING_AWAY, 0, 0)  # what a hard stop leaves us to say
                        try:
                            report = await serve_client(
                                ws,
                                self._broadcast,
                                self._config,
                                wants=wants,
                                stop=self._shutdown,
                                stream=frames,
                                counters=self._counters,
                                keepalive=self.keepalive,
                            )
                        finally:
                            self._ended(peer, report, started)
                finally:
                    slot.release()
                    plumbing.cancel_scope.cancel()
        except* _DISCONNECTS as group:
            forget_cause_tracebacks(group)  # a lost handshake's, say: dropped here
            log.debug("connection from %s lost: %s", peer, quote(repr(group.exceptions[0])))
        except* Exception:
            log.exception("unexpected error on the connection from %s", peer or peer_name(stream))
        finally:
            self.open -= 1
            if ws is not None:  # the reader is gone: nothing parses any more
                break_cycles(ws)
            if frames is not None:  # the client's last bytes are ours
                await frames.close()
            await trio.aclose_forcefully(stream)

    def refused_at_limit(self) -> None:
        """Count and log a connection refused at accept for want of a file descriptor."""
        self._counters.connections[OUT_OF_DESCRIPTORS] += 1
        held_back = self._refusals.report(OUT_OF_DESCRIPTORS, trio.current_time())
        if held_back is not None:
            log.warning(
                "out of file descriptors (ulimit -n %d, %d connections open): "
                "refusing new connections with 503 until clients leave%s",
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                self.open,
                f" ({held_back} more refused since the last report)" if held_back else "",
            )

    async def _handshake(
        self, plumbing: trio.Nursery, stream: trio.abc.Stream, peer: str, slot: _ClientSlot
    ) -> tuple[WebSocketConnection, FrameStream, Wants] | None:
        """Read the request head and answer it, within the handshake timeout.

        Returns the accepted WebSocket connection, whose client slot ``slot``
        now holds (the caller releases it once the connection is closed), the
        stream it was made on, which from then on is the only writer to
        ``stream``, and the feed the client asked for (plain or v1, and where to
        resume); or ``None`` once a plain HTTP request or a refusal has been
        answered, or the time ran out. A method of its own, so that the
        request's objects are freed when it returns rather than kept for the
        whole life of the connection.
        """
        config = self._config
        handshake = trio.move_on_after(config.handshake_timeout)
        with self._shutdown.cancels(handshake), handshake:
            try:
                head = await read_request_head(stream, config.max_request_head)
            except BadRequest as exc:
                await _answer_bad_request(stream, peer, exc)
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
            slot.take()
            try:
                frames = FrameStream(stream, send_timeout=config.send_timeout)
                try:
                    request = await accept_parsed(
                        plumbing, frames, head, max_message_size=config.max_message_size
                    )
                except BadRequest as exc:  # raised before anything was started or written
                    slot.release()
                    await _answer_bad_request(stream, peer, exc)
                    return None
                # Before the 101, so that no frame of the client's is parsed without it.
                fix_close_handling(request, max_message_size=config.max_message_size)
                chosen = subprotocol.chosen(request.proposed_subprotocols)
                ws = await request.accept(subprotocol=chosen)
            except BaseException:
                slot.release()
                raise
            forget_parser(ws)
            self._counters.connections[ACCEPTED] += 1
            wants = Wants(v1=chosen is not None, since=head.query(subprotocol.SINCE))
            return ws, frames, wants
        slot.release()
        log.debug("handshake with %s did not complete in time", peer)
        return None

    def _refusal(self, head: RequestHead) -> Refusal | None:
        refusal = check_handshake(head, self._config)
        if refusal is not None:
            return refusal
        limit = self._config.max_clients
        if limit is not None and self.clients >= limit:
            return Refusal(
                503,
                TOO_MANY_CLIENTS,
                f"too many clients (--max-clients {limit}), try again later",
            )
        return None

    async def _refuse(self, stream: trio.abc.Stream, peer: str, refusal: Refusal) -> None:
        """Answer a refused handshake; log it, at most once a second per reason."""
        self._counters.connections[refusal.reason] += 1
        held_back = self._refusals.report(refusal.reason, trio.current_time())
        if held_back is not None:
            more = (
                f" ({held_back} more refused for this since the last report)" if held_back else ""
            )
            log.info("refused %s: %s%s", peer, quote(refusal.message), more)
        await send_last(
            stream, http_response(refusal.status, refusal.message + "\n", refusal.headers)
        )

    def _connected(self, peer: str, wants: Wants) -> float:
        """Log a client's arrival; return the time it came (for :meth:`_ended`'s line)."""
        if not log.isEnabledFor(logging.INFO):
            return trio.current_time()  # INFO may be turned on before it ends
        log.info(
            "client %s connected (%d clients)%s",
            peer,
            self.clients,
            ""
            if not wants.v1
            else f", {subprotocol.NAME}"
            + (f", resuming after {quote(wants.since)}" if wants.since is not None else ""),
        )
        return trio.current_time()

    def _ended(self, peer: str, report: Report, started: float) -> None:
        """Log how a client's connection ended."""
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "client %s %s after %.1f s, %d messages sent%s",
            peer,
            quote(str(report.ending)),  # it holds the peer's close reason
            trio.current_time() - started,
            report.sent,
            f", {report.dropped} dropped" if report.dropped else "",
        )


async def _answer_bad_request(stream: trio.abc.Stream, peer: str, exc: BadRequest) -> None:
    """Answer a request that cannot be served with its status; a debug line, not a warning."""
    log.debug("bad request from %s: %s", peer, quote(redact(str(exc))))
    await send_last(stream, http_response(exc.status, f"{exc}\n"))


class _ClientSlot:
    """One connection's hold on a client slot: taken with its handshake, released once.

    A plain object rather than a context manager: it is kept for the whole
    life of the connection, and an ``ExitStack`` or a generator costs a
    connection about 1.5 KB more (issue 14).
    """

    __slots__ = ("_connections", "_held")

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._held = False

    def take(self) -> None:
        """Take the slot. The ``max_clients`` check must come with no checkpoint before."""
        assert not self._held
        self._held = True
        self._connections.clients += 1

    def release(self) -> None:
        """Give it back, if held. Idempotent."""
        if self._held:
            self._held = False
            self._connections.clients -= 1


def peer_name(stream: trio.abc.Stream) -> str:
    """The peer's address as ``host:port`` (``[host]:port`` for IPv6), for logs."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return repr(stream)
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "(disconnected)"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
