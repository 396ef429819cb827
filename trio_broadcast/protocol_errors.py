"""What trio-websocket's reader does not do for a client that breaks the protocol.

The one module that changes how trio-websocket (0.12) handles what a client
sends; it wraps the connection's wsproto ``events()`` and touches nothing else:

* a parse failure (invalid UTF-8: 1007; an unmasked frame, a reserved opcode or
  bit, a bad close frame: 1002) gets its close frame before the connection is
  dropped, as RFC 6455 7.1.7 asks (upstream: python-hyper/wsproto#100,
  python-trio/trio-websocket#90);
* a ping or a message that arrives after our close frame is dropped instead of
  answered (python-trio/trio-websocket#184).

Private names it relies on, each checked by :func:`check_compatible` on every
connection, so that a trio-websocket or wsproto release that changes them fails
loudly instead of silently losing the fix:

* ``WebSocketConnection._wsproto`` and, on ``WebSocketRequest``,
  ``_connection``: where the events come from;
* wsproto's ``WSConnection.connection`` and ``Connection._state``: the state
  that decides whether trio-websocket answers a close;
* ``Connection._proto.extensions``: no extension (permessage-deflate) may be
  negotiated, because broadcast frames are encoded once, without one.

The upper pin in ``pyproject.toml`` (``trio-websocket<0.13``) stays as long as
any of these is used.
"""

from __future__ import annotations

from collections.abc import Generator

from trio_websocket import WebSocketConnection, WebSocketRequest
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

_ANSWERED = (Ping, TextMessage, BytesMessage)
"""Events that trio-websocket may answer by sending: a pong, or a 1009 close."""


class IncompatibleWebSocket(RuntimeError):
    """trio-websocket's internals are not what this module was written against."""


def check_compatible(ws: WebSocketConnection) -> None:
    """Raise :class:`IncompatibleWebSocket` unless ``ws`` has what this module uses."""
    try:
        protocol = ws._wsproto
        state = protocol.state
        connection = protocol.connection
        extensions = connection._proto.extensions  # type: ignore[union-attr]
        connection_state = connection._state  # type: ignore[union-attr]
    except AttributeError as exc:
        raise IncompatibleWebSocket(
            f"trio-websocket internals changed ({exc}); trio_broadcast.protocol_errors "
            "needs updating for this trio-websocket release"
        ) from None
    if not isinstance(state, ConnectionState) or not isinstance(connection_state, ConnectionState):
        raise IncompatibleWebSocket("wsproto's connection state changed type")
    if not isinstance(connection, Connection):
        raise IncompatibleWebSocket("wsproto's connection changed type")
    if extensions:
        raise IncompatibleWebSocket(
            f"extensions were negotiated ({extensions!r}); pre-encoded frames would be wrong"
        )


def fix_close_handling(target: WebSocketConnection | WebSocketRequest) -> None:
    """Answer a client's protocol error with a close frame, and ignore late pings.

    When a client breaks the protocol (invalid UTF-8 in a text message: 1007;
    an unmasked frame, a reserved opcode or bit, a fragmented or oversized
    control frame, a bad close frame: 1002), wsproto's ``events()`` reports the
    parse failure as a ``CloseConnection`` event with that code, while its state
    stays ``OPEN``. A close frame actually received moves the state to
    ``REMOTE_CLOSING`` before its event is yielded, and that is the only state in
    which trio-websocket's reader answers with a close frame; otherwise it just
    closes the TCP connection, so the client saw 1006 (no close frame) where RFC
    6455 7.1.7 says the server SHOULD send the code first.

    This wraps the connection's ``events()`` so that a ``CloseConnection`` still
    seen in state ``OPEN`` (a parse failure: nothing else yields one) finds the
    state ``REMOTE_CLOSING``. trio-websocket then does what it does for a
    client's close: it sets the close reason (so that nothing is written after
    it), sends the close frame with the code and wsproto's reason under the
    stream lock, and closes the TCP connection; the client's task sees
    ``ConnectionClosed`` with that code. The close frame is written by
    trio-websocket's reader task where it used to drop the connection: it now
    waits for the stream lock and the socket, which the client task's close
    path bounds (``close_timeout``), as it does for a client's own close. Should wsproto stop
    keeping its state in ``_state``, the assignment changes nothing and the
    connection is dropped as before (and :func:`check_compatible` fails loudly).

    It also drops what arrives after the server has sent its close frame (a
    shutdown, a 1009, a client cut off) and would make trio-websocket answer:
    a ping (it sends a pong) or a message (it may close with 1009 if the
    message is too large). wsproto refuses to send anything in
    ``LOCAL_CLOSING``, and the reader task died with ``LocalProtocolError``
    and a logged traceback
    (https://github.com/python-trio/trio-websocket/issues/184). Nothing is
    lost: after its close frame an endpoint sends nothing more (RFC 6455
    5.5.1), and a message that arrives then is read by no one.

    Call it on the request, before accepting the handshake: frames are parsed
    from the 101 on, and one parsed before this call is dropped without a close
    frame. :func:`~trio_broadcast.client.serve_client` calls it on the accepted
    connection too (a second call does nothing), which covers every frame that
    arrives once it has started.

    Upstream: wsproto could raise ``RemoteProtocolError`` with the close as its
    ``event_hint``, which trio-websocket already sends
    (https://github.com/python-hyper/wsproto/pull/100, open); trio-websocket's
    close paths are tracked in https://github.com/python-trio/trio-websocket/issues/90.
    """
    ws = target._connection if isinstance(target, WebSocketRequest) else target
    protocol = ws._wsproto
    if "events" in vars(protocol):  # already wrapped
        return
    parse = protocol.events

    def events() -> Generator[Event, None, None]:
        for event in parse():
            connection = protocol.connection
            state = None if connection is None else connection.state
            if isinstance(event, CloseConnection) and state is ConnectionState.OPEN:
                connection._state = ConnectionState.REMOTE_CLOSING  # type: ignore[union-attr]
            elif state is ConnectionState.LOCAL_CLOSING and isinstance(event, _ANSWERED):
                continue  # our close frame is out: nothing may follow it
            yield event

    protocol.events = events  # type: ignore[method-assign]
