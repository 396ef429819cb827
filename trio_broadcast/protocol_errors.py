"""What trio-websocket's reader does not do for a client that breaks the protocol or the limits.

The one module that changes how trio-websocket (0.12) handles what a client
sends; it wraps the connection's wsproto ``events()`` and touches nothing else:

* a parse failure (invalid UTF-8: 1007; an unmasked frame, a reserved opcode or
  bit, a bad close frame: 1002) gets its close frame before the connection is
  dropped, as RFC 6455 7.1.7 asks (upstream: python-hyper/wsproto#100,
  python-trio/trio-websocket#90);
* a ping or a message that arrives after our close frame is dropped instead of
  answered (python-trio/trio-websocket#184);
* a fragmented message is joined here (:class:`MessageAssembler`), so that it
  costs the server its size in bytes and no more, whatever its fragmentation:
  trio-websocket keeps one Python object per fragment and counts neither the
  fragments nor the bytes of a text message, only its characters. A message
  over the limit in UTF-8 bytes gets 1009, one in too many fragments 1008.

Private names it relies on, each checked by :func:`check_compatible` (in the
test suite, on a real connection), so that a trio-websocket or wsproto release
that changes them fails loudly instead of silently losing the fix:

* ``WebSocketConnection._wsproto`` and, on ``WebSocketRequest``,
  ``_connection``: where the events come from;
* wsproto's ``WSConnection.connection`` and ``Connection._state``: the state
  that decides whether trio-websocket answers a close;
* ``Connection._proto.extensions``: no extension (permessage-deflate) may be
  negotiated, because broadcast frames are encoded once, without one;
* ``Connection._proto._parse_more``: the parser's generator, closed when the
  connection ends (:func:`break_cycles`).

The upper pin in ``pyproject.toml`` (``trio-websocket<0.13``) stays as long as
any of these is used.
"""

from __future__ import annotations

from collections.abc import Generator
from types import GeneratorType

from trio_websocket import WebSocketConnection, WebSocketRequest
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

_ANSWERED = (Ping, TextMessage, BytesMessage)
"""Events that trio-websocket may answer by sending: a pong, or a 1009 close."""

BYTES_PER_FRAGMENT = 64
"""A message may have one fragment for each this many bytes of the size limit."""
MIN_FRAGMENTS = 1024
"""...and at least this many fragments, whatever the limit."""

TOO_BIG = 1009
POLICY_VIOLATION = 1008


def max_fragments(max_message_size: int) -> int:
    """How many frames one message may span under a limit of ``max_message_size`` bytes.

    One per 64 bytes of the limit, and at least 1,024: 16,384 for the default
    1 MiB, 524,288 for the 32 MiB of the Autobahn run (whose case 9.3.1 sends
    4 MiB in 64-byte fragments: 65,536). Joined as they come
    (:class:`MessageAssembler`), fragments cost the server only their bytes;
    what the bound limits is the work one message can make it do for nothing:
    an empty frame is 6 bytes to send and some ten microseconds of wsproto's
    parsing, so without a bound a client could keep a message open, and a core
    busy, forever. At 64 bytes a fragment's header (6 to 14 bytes) is under a
    quarter of its payload. Clients seldom fragment at all; one that streams a
    message in pieces of a few bytes stays within the bound as long as the
    message is small (1,024 fragments whatever the limit).
    """
    return max(MIN_FRAGMENTS, max_message_size // BYTES_PER_FRAGMENT)


class MessageAssembler:
    """Join a client's message fragments into one message, within a size and a fragment limit.

    Sans-I/O: :meth:`feed` takes the ``TextMessage`` and ``BytesMessage``
    events that wsproto yields for one connection, in order, and returns
    ``None`` while the message is incomplete, then one event with the whole
    message (``frame_finished`` and ``message_finished`` true). A message that
    came whole in one event is returned as it came.

    What it holds between two events is the message so far as bytes in one
    ``bytearray`` (text as UTF-8, which is also what the limit counts), never
    more than ``max_bytes``: :attr:`buffered`. A message over ``max_bytes``
    UTF-8 bytes, or that has reached ``max_fragments`` frames and is not
    finished, is refused: :meth:`feed` returns a ``CloseConnection`` (1009
    "message too big", or 1008 with the fragment limit as its reason), drops
    what it held, and returns ``None`` for every event after it.
    """

    def __init__(self, max_bytes: int, fragments: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments(max_bytes) if fragments is None else fragments
        self.refused = False
        """Whether a message was refused: nothing is given back after that."""
        self._parts = bytearray()
        self._frames = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the message being received."""
        return len(self._parts)

    def feed(
        self, event: TextMessage | BytesMessage
    ) -> TextMessage | BytesMessage | CloseConnection | None:
        """The whole message, a refusal, or ``None`` (not finished yet, or refused before)."""
        if self.refused:
            return None
        data = event.data
        chunk = data.encode() if isinstance(data, str) else data
        if len(self._parts) + len(chunk) > self.max_bytes:
            return self._refuse(TOO_BIG, f"message over {self.max_bytes} bytes")
        if event.frame_finished:
            self._frames += 1
        if event.message_finished:
            whole = event if not self._parts else self._join(event, chunk)
            self._parts = bytearray()
            self._frames = 0
            return whole
        if self._frames >= self.max_fragments:
            return self._refuse(
                POLICY_VIOLATION, f"message in more than {self.max_fragments} fragments"
            )
        self._parts += chunk
        return None

    def _join(
        self, last: TextMessage | BytesMessage, chunk: bytes | bytearray
    ) -> TextMessage | BytesMessage:
        self._parts += chunk
        if isinstance(last, TextMessage):
            return TextMessage(self._parts.decode())
        return BytesMessage(bytes(self._parts))

    def _refuse(self, code: int, reason: str) -> CloseConnection:
        self.refused = True
        self._parts = bytearray()
        return CloseConnection(code, reason)


class IncompatibleWebSocket(RuntimeError):
    """trio-websocket's internals are not what this module was written against."""


def check_compatible(ws: WebSocketConnection) -> None:
    """Raise :class:`IncompatibleWebSocket` unless ``ws`` has what this module uses."""
    try:
        protocol = ws._wsproto
        state = protocol.state
        connection = protocol.connection
        extensions = connection._proto.extensions  # type: ignore[union-attr]
        parser = connection._proto._parse_more  # type: ignore[union-attr]
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
    if not isinstance(parser, GeneratorType):
        raise IncompatibleWebSocket("wsproto's frame parser is no longer a generator")
    if extensions:
        raise IncompatibleWebSocket(
            f"extensions were negotiated ({extensions!r}); pre-encoded frames would be wrong"
        )


def fix_close_handling(
    target: WebSocketConnection | WebSocketRequest, *, max_message_size: int
) -> None:
    """Answer a client's protocol error with a close frame, ignore late pings, bound messages.

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
    seen in state ``OPEN`` (a parse failure, or a message refused below:
    nothing else yields one) finds the state ``REMOTE_CLOSING``. trio-websocket
    then does what it does for a client's close: it sets the close reason (so
    that nothing is written after it), sends the close frame with the code and
    reason under the stream lock, and closes the TCP connection; the client's
    task sees ``ConnectionClosed`` with that code. The close frame is written
    by trio-websocket's reader task where it used to drop the connection: it
    now waits for the stream lock and the socket, which the client task's
    close path bounds (``close_timeout``), as it does for a client's own
    close. Should wsproto stop keeping its state in ``_state``, the assignment
    changes nothing and the connection is dropped as before (and
    :func:`check_compatible` fails loudly).

    It also drops what arrives after the server has sent its close frame (a
    shutdown, a 1009, a client cut off) and would make trio-websocket answer:
    a ping (it sends a pong) or a message (it may close with 1009 if the
    message is too large). wsproto refuses to send anything in
    ``LOCAL_CLOSING``, and the reader task died with ``LocalProtocolError``
    and a logged traceback
    (https://github.com/python-trio/trio-websocket/issues/184). Nothing is
    lost: after its close frame an endpoint sends nothing more (RFC 6455
    5.5.1), and a message that arrives then is read by no one.

    It also joins each message's fragments itself (:class:`MessageAssembler`)
    and hands trio-websocket one event per message, so that trio-websocket's
    list of parts holds one object, not one per fragment, and the server holds
    at most about ``max_message_size`` bytes for a message however it is cut
    up. A message over ``max_message_size`` bytes (text counted in UTF-8, as
    it came on the wire) is refused with 1009, one in more fragments than
    :func:`max_fragments` allows with 1008, both as a parse failure is: the
    close frame, then the end of the connection; nothing after it is read.
    trio-websocket's own limit, on characters for text, then never applies:
    a message within ours has no more characters than bytes.

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
    protocol.events = _Events(protocol, max_message_size)  # type: ignore[method-assign]


class _Events:
    """The wrapped ``events()`` of one connection (see :func:`fix_close_handling`).

    A small class rather than a closure: it lives as long as the connection,
    and a function with its cells costs a connection about 200 bytes more (issue 14).
    It is kept on the protocol and holds it, a reference cycle that
    :func:`break_cycles` breaks when the connection ends.
    """

    __slots__ = ("_assembler", "_parse", "_protocol")

    def __init__(self, protocol: WSConnection, max_message_size: int) -> None:
        self._protocol = protocol
        self._parse = type(protocol).events
        self._assembler = MessageAssembler(max_message_size)

    def __call__(self) -> Generator[Event, None, None]:
        protocol, assembler = self._protocol, self._assembler
        for parsed in self._parse(protocol):
            if assembler.refused:
                return  # our close frame is out, and nothing more is read
            connection = protocol.connection
            state = None if connection is None else connection.state
            if state is ConnectionState.LOCAL_CLOSING and isinstance(parsed, _ANSWERED):
                continue  # our close frame is out: nothing may follow it
            event: Event | None
            if isinstance(parsed, (TextMessage, BytesMessage)):
                event = assembler.feed(parsed)
                if event is None:
                    continue  # a fragment, kept
            else:
                event = parsed
            if isinstance(event, CloseConnection) and state is ConnectionState.OPEN:
                connection._state = ConnectionState.REMOTE_CLOSING  # type: ignore[union-attr]
            yield event


def break_cycles(ws: WebSocketConnection) -> None:
    """Let a connection's wsproto and h11 objects go as soon as the connection does.

    Call it once the connection has ended and trio-websocket's reader is gone.
    wsproto's frame parser (``FrameProtocol``) keeps its parsing generator in
    ``_parse_more``, and the generator refers back to the parser: a reference
    cycle, so a connection's whole wsproto state (a few KB) outlives it until
    a full pass of the cyclic garbage collector. In a reconnect storm that
    pass comes after thousands of new connections have been allocated beside
    the dead ones, and the process keeps that peak.
    Taking the generator from the parser breaks the cycle (closing it does not,
    from Python 3.12, when it never ran: its frame keeps the parser); nothing
    parses after the reader has gone. Not reported upstream yet (no
    python-hyper/wsproto issue found). A wsproto without ``_parse_more``
    changes nothing here, and
    :func:`check_compatible` fails in the test suite. The other cycle is ours,
    the wrapped ``events()`` (:class:`_Events`) and its protocol: it is taken
    off the protocol here.
    """
    vars(ws._wsproto).pop("events", None)
    connection = ws._wsproto.connection
    frames = getattr(connection, "_proto", None)
    if isinstance(getattr(frames, "_parse_more", None), GeneratorType):
        frames._parse_more = iter(())  # type: ignore[union-attr]
