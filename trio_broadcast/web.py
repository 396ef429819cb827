"""The plain HTTP side of the port: a parsed request head in, a whole response out.

Requests that are not WebSocket upgrades land here: the live page at ``/``,
``/healthz`` and ``/metrics``. :meth:`Site.respond` is a pure function of the
request head and of two callables that read the server's state, so every route,
status code and header is tested without a socket; the server only writes the
bytes and closes (``Connection: close``: one request per connection keeps the
HTTP side free of keep-alive state).

Checks run in a fixed order, so that an unauthenticated client learns nothing
about which paths exist: a malformed target (400), then the Host header (403,
only with ``allowed_hosts``: see :func:`~trio_broadcast.access.host_allowed`),
then the token (401, except for ``/healthz``, which a load balancer must reach
without secrets), then the method (405), then the path (404).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from importlib.resources import files

from .access import HOST_NOT_ALLOWED, host_allowed, token_presented_ok
from .client_text import shown
from .config import Config
from .handshake import RequestHead

PAGE = "/"
HEALTH = "/healthz"
METRICS = "/metrics"
OPEN_PATHS = frozenset({HEALTH})
"""Paths served without the token."""
METHODS = ("GET", "HEAD")

_EVERYWHERE = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)
_PAGE_HEADERS = (
    # The page is self-contained: nothing but its own inline code and a
    # WebSocket back to where it came from. The token may be in its URL, so
    # the URL is never sent on as a referrer.
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP/1.1 response, sent once before the connection closes."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        """The bytes on the wire; ``head_only`` (for HEAD) keeps the length, drops the body."""
        lines = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in (*_EVERYWHERE, *self.headers)),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A plain-text response of one line."""
    return Response(status, f"{message}\n".encode(), headers=headers)


@cache
def page() -> bytes:
    """The live page, read once from the package data."""
    return files("trio_broadcast").joinpath("static", "index.html").read_bytes()


@dataclass(frozen=True, slots=True)
class Site:
    """The HTTP endpoints of one server."""

    config: Config
    health: Callable[[], Mapping[str, object]]
    """The ``/healthz`` fields, read at request time."""
    metrics: Callable[[], tuple[bytes, str]]
    """The ``/metrics`` body and its content type, rendered at request time."""

    def respond(self, head: RequestHead) -> Response:
        """The answer to one request that is not a WebSocket upgrade."""
        path = head.path
        if not path.startswith("/"):
            return text(
                400,
                f"cannot serve the request target '{shown(head.target)}'",
            )
        if not host_allowed(head, self.config):
            return text(403, HOST_NOT_ALLOWED)
        if path not in OPEN_PATHS and not token_presented_ok(head, self.config.token):
            return text(
                401,
                "a valid token is required (Authorization: Bearer, or ?token=)",
                (("WWW-Authenticate", 'Bearer realm="trio-broadcast"'),),
            )
        if head.method not in METHODS:
            return text(
                405,
                f"method {shown(head.method)} not allowed",
                (("Allow", ", ".join(METHODS)),),
            )
        if path == HEALTH:
            body = json.dumps(dict(self.health()), separators=(", ", ": ")) + "\n"
            return Response(200, body.encode(), "application/json")
        if path == METRICS:
            exposition, content_type = self.metrics()
            return Response(200, exposition, content_type)
        if path == PAGE and self.config.page:
            return Response(200, page(), "text/html; charset=utf-8", _PAGE_HEADERS)
        return text(404, f"no such page: {shown(path)}")
