"""The one place that reaches inside trio-websocket: writing encoded frames, and
answering a client's protocol error with a close frame.

trio-websocket's public ``send_message()`` encodes one message per call with
wsproto and writes it with one ``send_all``. For fan-out that is the cost that
matters: every line would be encoded again for every client, and a client that
fell behind by 500 lines would need 500 writes. :class:`FrameWriter` instead
writes bytes that :mod:`trio_broadcast.frames` encoded once, as many frames as
are queued in one write.

On a plain TCP connection, :meth:`FrameWriter.write_nowait` goes one step
further: when nothing else is writing to the connection, it hands the bytes to
the kernel with one non-blocking ``os.write`` and no trip through the
scheduler. ``trio.SocketStream.send_all`` would yield after a successful send
(a Trio checkpoint), which costs a task switch per delivery; with thousands of
clients that switch, not the system call, is the price of a broadcast. Only
what the socket does not take at once goes through :meth:`FrameWriter.write`.

To stay correct it does what ``WebSocketConnection._send`` does: it refuses to
write once the connection is closing, holds the connection's stream lock (so
its bytes never interleave with a pong or a close frame written by
trio-websocket's reader task), and turns a broken stream into
``ConnectionClosed``. Sending whole messages only, it leaves wsproto's state
untouched: wsproto tracks outgoing state only inside fragmented messages,
which this server never sends.

:func:`fix_close_handling` makes trio-websocket send the close frame (1002,
1007) that RFC 6455 7.1.7 says a server SHOULD send when a client breaks the
protocol, instead of only dropping the TCP connection, and keeps it from
answering a ping after its own close frame; its docstring says how.

These are private attributes, so :func:`check_compatible` verifies them (and
that no extension such as permessage-deflate was negotiated, which would make
pre-encoded frames wrong) for every connection, and fails loudly if a
trio-websocket release changes them. The dependency is pinned to the tested
range in ``pyproject.toml`` (``trio-websocket>=0.12,<0.13``).
"""

from __future__ import annotations

import os

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection
from wsproto.connection import Connection, ConnectionState

from .protocol_errors import IncompatibleWebSocket


def check_compatible(ws: WebSocketConnection) -> None:
    """Raise :class:`IncompatibleWebSocket` unless ``ws`` has what :class:`FrameWriter` uses."""
    try:
        stream = ws._stream
        lock = ws._stream_lock
        protocol = ws._wsproto
        state = protocol.state
        connection = protocol.connection
        extensions = connection._proto.extensions  # type: ignore[union-attr]
        connection_state = connection._state  # type: ignore[union-attr]
        ws._close_reason  # noqa: B018 - probing that the attribute exists
    except AttributeError as exc:
        raise IncompatibleWebSocket(
            f"trio-websocket internals changed ({exc}); trio_broadcast.frame_writer "
            "needs updating for this trio-websocket release"
        ) from None
    if not isinstance(stream, trio.abc.SendStream) or not isinstance(lock, trio.StrictFIFOLock):
        raise IncompatibleWebSocket("trio-websocket's stream or stream lock changed type")
    if not isinstance(state, ConnectionState) or not isinstance(connection_state, ConnectionState):
        raise IncompatibleWebSocket("wsproto's connection state changed type")
    if not isinstance(connection, Connection):
        raise IncompatibleWebSocket("wsproto's connection changed type")
    if extensions:
        raise IncompatibleWebSocket(
            f"extensions were negotiated ({extensions!r}); pre-encoded frames would be wrong"
        )


class FrameWriter:
    """Write pre-encoded server frames to one accepted WebSocket connection.

    ``transport`` is the connection's own stream: when it is a plain
    :class:`trio.SocketStream`, :meth:`write_nowait` may write to its socket
    directly.
    """

    def __init__(self, ws: WebSocketConnection, transport: trio.abc.Stream) -> None:
        check_compatible(ws)
        self._ws = ws
        self._fd = transport.socket.fileno() if isinstance(transport, trio.SocketStream) else -1

    def _check_open(self) -> None:
        if self._ws._close_reason is not None:
            raise ConnectionClosed(self._ws._close_reason)

    def _broken(self) -> ConnectionClosed:
        return ConnectionClosed(self._ws._close_reason or CloseReason(1006, None))

    def write_nowait(self, frames: bytes) -> int:
        """Write what the socket takes of ``frames`` now, without yielding.

        Returns the number of bytes written: 0 when another task is writing
        (trio-websocket's reader sending a pong, say), when the transport is
        not a plain socket, or when the socket buffer is full. The caller must
        pass the rest to :meth:`write` before yielding, so that no other
        writer can slip in mid-frame. Raises ``ConnectionClosed`` like
        :meth:`write`.
        """
        self._check_open()
        if self._fd < 0 or self._ws._stream_lock.locked():
            return 0
        try:
            return os.write(self._fd, frames)
        except BlockingIOError:
            return 0
        except OSError:
            raise self._broken() from None

    async def write(self, frames: bytes | memoryview) -> None:
        """Write ``frames`` (whole frames, or the rest of them) under the stream lock.

        Acquiring a free lock does not yield, so a caller continuing a partial
        :meth:`write_nowait` keeps its bytes contiguous on the wire. Raises
        ``ConnectionClosed`` if the connection is closing or broken, like
        ``send_message()`` does.
        """
        self._check_open()
        async with self._ws._stream_lock:
            try:
                await self._ws._stream.send_all(frames)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._broken() from None
