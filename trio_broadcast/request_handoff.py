"""Hand trio-websocket the request head the server has parsed, not its bytes to parse again.

The server reads every request head itself with h11
(:func:`~trio_broadcast.handshake.read_request_head`: routing, refusals, the
careful checks). trio-websocket (0.12) has no way to take such a request:
:func:`trio_websocket.wrap_server_stream` builds a fresh wsproto
``WSConnection``, whose own h11 parser reads the head again from the stream.
Parsing it twice cost a connect 16 % of the server's instructions
(``bench/README.md``, "Where the connect time goes"). wsproto's
``initiate_upgrade_connection(headers, path)``, the public way in, writes the
request out with a second h11 connection and parses it again, so it saves
nothing. This module does what ``wrap_server_stream`` does, with the parse
already done (:func:`accept_parsed`):

* the ``WSConnection``'s handshake gets the server's h11 parser, which has
  read the request (and holds whatever came after it, as wsproto's own parser
  would have: a client sends nothing before the 101), and the request event
  wsproto would have made of it, queued for trio-websocket's reader;
* the ``WebSocketConnection`` is made as ``wrap_server_stream`` makes it, its
  reader task started in the caller's nursery, and the ``WebSocketRequest``
  awaited as there.

The 101 is then written by wsproto through that h11 parser, as before; after
it, :func:`forget_parser` lets go of the parser, which wsproto would keep for
the connection's whole life.

Private names it relies on, each checked by :func:`check_compatible` (at
every start of :func:`~trio_broadcast.serve`, which refuses to start without
them, and in the test suite, on a real connection), so that a trio-websocket
or wsproto release that changes them fails loudly:

* wsproto's ``H11Handshake._h11_connection``, ``_events`` and
  ``_process_connection_request`` (the handshake's parser, its event queue,
  and what turns an h11 request into wsproto's ``Request`` event);
* trio-websocket's ``WebSocketConnection._reader_task`` and ``_get_request``
  (what ``wrap_server_stream`` calls).

Upstream: an already parsed upgrade is python-trio/trio-websocket#1
(https://github.com/python-trio/trio-websocket/issues/1, open since 2018),
which waits on wsproto (https://github.com/python-hyper/wsproto/pull/37). The
upper pin in ``pyproject.toml`` (``trio-websocket<0.13``) stays as long as
this module is used.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import cast

import h11
import trio
from trio_websocket import WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from .client_text import SHOWN, shown
from .handshake import BadRequest, RequestHead


class IncompatibleHandoff(RuntimeError):
    """wsproto's or trio-websocket's internals are not what this module was written against."""


async def accept_parsed(
    nursery: trio.Nursery, stream: trio.abc.Stream, head: RequestHead, *, max_message_size: int
) -> WebSocketRequest:
    """``wrap_server_stream(nursery, stream, max_message_size=...)``, with the head already read.

    ``head`` was read from ``stream`` by
    :func:`~trio_broadcast.handshake.read_request_head`, and nothing was read
    from ``stream`` after it. It must have passed
    :meth:`~trio_broadcast.handshake.RequestHead.websocket_problem`, which is
    at least as strict as wsproto about the head. A body h11 refuses (the
    checks do not read it), or a head wsproto refuses all the same (a gap in
    those checks), raises :class:`~trio_broadcast.handshake.BadRequest` before
    anything is written or started, so the client gets an answer rather than a
    dropped connection.
    """
    parser, request = head.parser, head.parsed
    if parser is None or request is None:
        raise ValueError("the request head was not read from a connection")
    try:
        _finish_reading(parser)
    except h11.RemoteProtocolError as exc:
        raise BadRequest(exc.error_status_hint, f"bad request body: {_shown(exc)}") from None
    try:
        protocol = _handed_over(parser, _one_connection_line(head, request))
    except (RemoteProtocolError, UnicodeError) as exc:
        raise BadRequest(400, f"refused by wsproto: {_shown(exc)}") from None
    connection = WebSocketConnection(stream, protocol, max_message_size=max_message_size)
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()


def forget_parser(ws: WebSocketConnection) -> None:
    """Let go of the h11 parser that read the request, once the 101 is out.

    wsproto keeps its handshake, and the handshake its h11 parser, for the
    whole life of the connection, though nothing reads or writes HTTP after
    the 101: about 1 KB a connection (issue 14). Call it once
    ``request.accept()`` has returned, not before: the 101 is written through it.
    """
    _forget(ws._wsproto)


def _finish_reading(parser: h11.Connection) -> None:
    """Take ``parser`` on to where wsproto's own ``receive_data()`` leaves it.

    That is the end of the request (a body too, if one came), ``PAUSED`` by the
    upgrade: h11 then meets the 101 in the states it meets it in after
    wsproto's own parse.
    """
    while parser.next_event() not in _STOPS:
        pass


_STOPS = (h11.NEED_DATA, h11.PAUSED, h11.ConnectionClosed())
"""Where wsproto's own loop stops reading (the last one cannot happen here: the
parser is never told of an end of file)."""


def _handed_over(parser: h11.Connection, request: h11.Request) -> WSConnection:
    """A server ``WSConnection`` that has read ``request`` with ``parser``, as if by itself."""
    protocol = WSConnection(ConnectionType.SERVER)
    handshake = protocol.handshake
    event = handshake._process_connection_request(request)
    handshake._h11_connection = parser
    handshake._events.append(event)
    return protocol


def _forget(protocol: WSConnection) -> None:
    protocol.handshake._h11_connection = None  # type: ignore[assignment]


def _shown(exc: BaseException) -> str:
    return shown(str(exc), 2 * SHOWN)


def _one_connection_line(head: RequestHead, request: h11.Request) -> h11.Request:
    """The request h11 read, with its Connection lines joined into one, if it has several.

    wsproto reads only the last Connection line, where the server's checks read
    them all as one list, as HTTP does (RFC 9110 5.3): ``Connection: Upgrade``
    then ``Connection: close`` would pass there and fail here. Any other
    request is handed on as it came.
    """
    if sum(name == "connection" for name, _ in head.headers) < 2:
        return request
    lines = [(name.lower(), value) for name, value in request.headers.raw_items()]
    connections = [value for name, value in lines if name == b"connection"]
    return h11.Request(
        method=request.method,
        target=request.target,
        headers=[
            (b"connection", b", ".join(connections)),
            *((name, value) for name, value in lines if name != b"connection"),
        ],
        http_version=request.http_version,
    )


def check_compatible() -> None:
    """Raise :class:`IncompatibleHandoff` unless wsproto and trio-websocket have what is used.

    Looks for the names, then rehearses a hand-over without I/O (a request
    read, handed over, accepted, the parser forgotten, a ping read after it),
    which takes a fraction of a millisecond: run at every start of
    :func:`~trio_broadcast.serve`.
    """
    handshake = H11Handshake(ConnectionType.SERVER)
    missing = [
        name
        for owner, name in (
            (handshake, "_h11_connection"),
            (handshake, "_events"),
            (handshake, "_process_connection_request"),
            (WebSocketConnection, "_reader_task"),
            (WebSocketConnection, "_get_request"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise IncompatibleHandoff(
            f"{_versions()}: internals changed (no {', '.join(missing)}); "
            "trio_broadcast.request_handoff needs updating for this release"
        )
    try:
        _rehearse()
    except Exception as exc:  # synchronous, no I/O: anything at all means incompatible
        raise IncompatibleHandoff(
            f"{_versions()}: a rehearsed hand-over failed ({exc!r}); "
            "trio_broadcast.request_handoff needs updating for this release"
        ) from exc


_REHEARSED_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_REHEARSED_PING = bytes([0x89, 0x82, 0, 0, 0, 0]) + b"hi"  # masked with a zero key


def _rehearse() -> None:
    """What a connection does, without I/O; raises if anything differs."""
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(_REHEARSED_REQUEST)
    request = cast(h11.Request, parser.next_event())  # a request h11 reads, or it raises below
    _finish_reading(parser)
    protocol = _handed_over(parser, request)
    handed_over = [type(event) for event in protocol.events()]
    answer = protocol.send(AcceptConnection())[: len(b"HTTP/1.1 101")]
    _forget(protocol)
    protocol.receive_data(_REHEARSED_PING)
    seen = (handed_over, answer, [type(event) for event in protocol.events()])
    if seen != ([Request], b"HTTP/1.1 101", [Ping]):
        raise TypeError(f"a Request event, a 101 and then a Ping were expected, not {seen!r}")


def _versions() -> str:
    return f"wsproto {version('wsproto')}, trio-websocket {version('trio-websocket')}"
