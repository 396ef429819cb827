"""The first bytes of a connection: read the HTTP request head, and decide.

Every connection starts as HTTP/1.1. Before trio-websocket sees it, the server
reads the request head itself with h11 (a real HTTP parser, with a size bound),
so that:

* bytes that are not HTTP at all get an immediate HTTP error instead of waiting
  out a handshake timeout;
* a refusal (bad token or origin, too many clients) is a plain HTTP answer;
* plain HTTP endpoints (:mod:`trio_broadcast.web`) share the port.

An upgrade request is then handed to trio-websocket already parsed, with the
h11 parser that read it (:mod:`trio_broadcast.request_handoff`): the head is
read once.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from . import subprotocol
from .client_text import SHOWN, shown
from .frame_stream import linger

RECEIVE_SIZE = 4096
VERSION = "13"
"""The WebSocket version spoken (RFC 6455); the only one wsproto speaks."""
_ASCII_HEADERS = frozenset(
    {"connection", "host", "upgrade", "sec-websocket-protocol", "sec-websocket-extensions"}
)
"""Headers that wsproto decodes as ASCII (or IDNA) without catching the error."""
_QUERY_OR_FRAGMENT = re.compile("[?#]")


class BadRequest(Exception):
    """The request head is malformed or too large; :attr:`status` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RequestHead:
    """An HTTP request line and headers, and the h11 parser that read them."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    """Header names lower-cased, values decoded as Latin-1, in arrival order."""
    http_version: str = "1.1"
    """``1.1`` or ``1.0`` (h11 reads no other)."""
    parsed: h11.Request | None = None
    """The request as h11 read it, for trio-websocket (``None``: not read from a connection)."""
    parser: h11.Connection | None = None
    """The h11 connection that read it, which holds any bytes received after the head."""

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower-case), repeated values joined by ``, ``."""
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    @property
    def path(self) -> str:
        """The path of the request target, without its query; ``""`` if it has none.

        The target is a path (``/feed?x=1``, what clients send) or an absolute URL
        (``http://host/feed``, which servers must accept too, RFC 9112 3.2.2).
        ``//healthz`` is a path, not a URL without a scheme whose host is ``healthz``.
        """
        if self.target.startswith("/"):
            return _QUERY_OR_FRAGMENT.split(self.target, maxsplit=1)[0]
        return urlsplit(self.target).path

    def query(self, name: str) -> str | None:
        """The first value of query parameter ``name``, if the target has one."""
        if "?" not in self.target:  # most handshakes: no query to parse
            return None
        values = parse_qs(urlsplit(self.target).query, keep_blank_values=True).get(name)
        return values[0] if values else None

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols offered in ``Sec-WebSocket-Protocol``, in order."""
        value = self.header("sec-websocket-protocol") or ""
        return [token.strip() for token in value.split(",") if token.strip()]

    def _tokens(self, name: str) -> set[str]:
        value = self.header(name) or ""
        return {token.strip().lower() for token in value.split(",")}

    @property
    def is_websocket(self) -> bool:
        """Whether the client asks to upgrade to WebSocket."""
        return "websocket" in self._tokens("upgrade")

    def last(self, name: str) -> str | None:
        """The value of the last header called ``name`` (lower-case), if any."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def websocket_problem(self) -> str | None:
        """Why this upgrade request would be refused, or ``None``.

        RFC 6455's rules (4.2.1), read at least as strictly as wsproto reads
        them in trio-websocket (which gets the request next, through
        :func:`~trio_broadcast.request_handoff.accept_parsed`, with its
        Connection lines joined): repeated Connection lines are one list (RFC 9110 5.3);
        of a repeated Upgrade or Sec-WebSocket-Version header the last one counts;
        the Sec-WebSocket-Key must be the base64 of 16 bytes (which two keys
        joined are not: wsproto would answer with an accept value computed from
        both); these headers and the subprotocols and extensions must be ASCII,
        and the Host a valid IDNA name. Before the hand-over, a request that
        passed here and failed there got no clear answer (a traceback in
        trio-websocket's reader, or a bare 400 while the handshake held a client
        slot until it timed out); it now gets a 400 and its slot back
        (:func:`~trio_broadcast.request_handoff.accept_parsed`), but these checks
        are what keeps it from getting there. A body is not looked at here: h11
        reads it in the hand-over, and refuses a malformed one there.
        """
        if self.method != "GET":
            return f"a WebSocket handshake must use GET, not {shown(self.method)}"
        for key, value in self.headers:
            if key in _ASCII_HEADERS and not value.isascii():
                return f"the {key} header must be ASCII"
        if "upgrade" not in self._tokens("connection"):
            return "the Connection header must include 'upgrade'"
        if (self.last("upgrade") or "").strip().lower() != "websocket":
            return "the Upgrade header must be 'websocket'"
        if self.last("sec-websocket-version") != VERSION:
            return f"only WebSocket version {VERSION} is supported"
        nonce = self.header("sec-websocket-key")
        if nonce is None:
            return "the Sec-WebSocket-Key header is missing"
        if not _is_nonce(nonce):
            return "the Sec-WebSocket-Key header must be the base64 of 16 bytes"
        hosts = [value for key, value in self.headers if key == "host"]
        if not hosts:
            return "the Host header is missing"
        for host in hosts:
            try:
                host.encode("ascii").decode("idna")
            except UnicodeError:
                return "the Host header is not a valid host name"
        if self.query(subprotocol.SINCE) is not None and not subprotocol.chosen(self.subprotocols):
            return (
                f"?{subprotocol.SINCE}= resumes a feed of IDs: it needs the "
                f"{subprotocol.NAME} subprotocol (Sec-WebSocket-Protocol)"
            )
        return None


def _is_nonce(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # not base64 (binascii.Error), or not ASCII
        return False


async def read_request_head(stream: trio.abc.ReceiveStream, max_size: int) -> RequestHead | None:
    """Read up to the end of the request head; ``None`` if the peer closed first.

    Raises :class:`BadRequest` for anything h11 rejects, including a head larger
    than ``max_size`` bytes (status 431). The caller bounds the time.
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    received = 0
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            if received:
                raise BadRequest(400, "the connection closed inside the request head")
            return None
        received += len(data)
        parser.receive_data(bytes(data))
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            # h11's message may quote the whole request line or header.
            raise BadRequest(exc.error_status_hint, shown(str(exc), 2 * SHOWN)) from None
        if isinstance(event, h11.Request):
            # h11 bounds only a head that is still incomplete; one that arrived
            # whole in a single read is measured here.
            head_size = received - len(parser.trailing_data[0])
            if head_size > max_size:
                raise BadRequest(431, f"request head of {head_size} bytes is over {max_size}")
            return RequestHead(
                method=event.method.decode("ascii", errors="replace"),
                target=event.target.decode("ascii", errors="replace"),
                headers=tuple(
                    (name.decode("ascii").lower(), value.decode("latin-1"))
                    for name, value in event.headers.raw_items()  # a list: quicker to walk
                ),
                http_version=event.http_version.decode("ascii"),
                parsed=event,
                parser=parser,
            )
        if event is not h11.NEED_DATA:  # pragma: no cover - h11 yields nothing else first
            raise BadRequest(400, f"unexpected {event!r}")


def http_response(status: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a plain-text body.

    ``nosniff`` keeps a browser from reading the body (which may quote the
    request) as anything but the plain text it is.
    """
    payload = body.encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


LINGER_BYTES = 64 * 1024
"""At most this many bytes are read and discarded after the last response."""


async def send_last(stream: trio.abc.Stream, response: bytes) -> None:
    """Send the last response on a connection, and let the client read it before it closes.

    A client that is still sending (the rest of a body, of a request head too
    large to read) would get a reset and could lose the response:
    :func:`~trio_broadcast.frame_stream.linger` closes in two steps instead,
    reading and discarding at most :data:`LINGER_BYTES`. The caller closes the
    stream afterwards.
    """
    await stream.send_all(response)
    await linger(stream, LINGER_BYTES)
