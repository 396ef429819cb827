"""Who may connect: the Host, token and Origin checks, and the throttle on refusal logs.

Pure functions over a parsed request head, tested without sockets. The server
asks :func:`check_handshake` about every WebSocket upgrade, and
:func:`host_allowed` and :func:`token_presented_ok` about plain HTTP requests
(:mod:`trio_broadcast.web`); it only writes the answer.

* The token may come as ``Authorization: Bearer …`` or as a ``token`` query
  parameter, because a browser cannot set headers on a WebSocket handshake: the
  page passes on the token from its own URL. It is compared in constant time
  (:func:`hmac.compare_digest`), so the time to refuse does not leak how much of
  a guess was right.
* The Origin check stops other web sites from opening a connection with a
  visitor's browser. A client that sends no Origin is not a browser and is let
  through unless ``require_origin`` says otherwise. When origins are listed, the
  server's own origin is allowed too, so that its built-in page keeps working;
  but only if the page's host is one that DNS cannot point elsewhere
  (:func:`trusted_host`). Otherwise a page from ``http://evil.example:8000``
  whose name is then pointed at this server (DNS rebinding) would send
  ``Host: evil.example:8000`` with ``Origin: http://evil.example:8000``, and
  pass for the server's own.
* With ``allowed_hosts``, the same rule guards every request (:func:`host_allowed`):
  a rebound page cannot then read ``/metrics`` or the page either.

Nothing here stops a client that is not a browser: it may send any Origin and
any Host. That is what the token is for.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from .config import Config, is_ip_address, split_host
from .handshake import VERSION, RequestHead

ACCEPTED = "accepted"
BAD_REQUEST = "bad_request"
FORBIDDEN_HOST = "forbidden_host"
UNAUTHORIZED = "unauthorized"
FORBIDDEN_ORIGIN = "forbidden_origin"
TOO_MANY_CLIENTS = "too_many_clients"
OUT_OF_DESCRIPTORS = "out_of_file_descriptors"
"""Refused at accept, before any request was read (:mod:`trio_broadcast.listeners`)."""
RESULTS = (
    ACCEPTED,
    BAD_REQUEST,
    FORBIDDEN_HOST,
    UNAUTHORIZED,
    FORBIDDEN_ORIGIN,
    TOO_MANY_CLIENTS,
    OUT_OF_DESCRIPTORS,
)
"""Every way a WebSocket handshake ends: the ``result`` label of the connection metric."""

HOST_NOT_ALLOWED = "host not allowed (see --allowed-host)"
"""The answer to a request whose Host :func:`host_allowed` refuses."""

REPORT_INTERVAL = 1.0
"""Seconds between two log lines about refusals for the same reason."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake turned down: the HTTP answer, and the reason for logs and metrics."""

    status: int
    reason: str
    """One of :data:`RESULTS`, never the token."""
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def presented_token(head: RequestHead) -> str | None:
    """The token the request carries: the Bearer credentials first, then ``?token=``."""
    authorization = head.header("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return head.query("token")


def token_presented_ok(head: RequestHead, expected: str | None) -> bool:
    """Whether the request may proceed: no token is configured, or it carries that token."""
    if expected is None:
        return True
    presented = presented_token(head)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def trusted_host(host: str | None, config: Config) -> bool:
    """Whether a ``Host`` header names this server in a way DNS cannot fake.

    True for an IP address (no name to resolve), ``localhost`` (browsers
    resolve it to the loopback themselves, RFC 6761 6.3), the name the server
    was told to listen on (``config.host``), and the names in
    ``config.allowed_hosts`` (with their port, if one is given): names the
    operator chose. Any other name may be one an attacker has pointed at this
    server after serving a page from it.
    """
    parts = split_host(host.strip()) if host is not None else None
    if parts is None:
        return False
    name, port = parts
    if is_ip_address(name) or name in ("localhost", config.host.lower()):
        return True
    return any(
        split_host(allowed) in ((name, None), (name, port)) for allowed in config.allowed_hosts
    )


def host_allowed(head: RequestHead, config: Config) -> bool:
    """Whether the request may be answered: no ``allowed_hosts``, or a trusted Host."""
    return not config.allowed_hosts or trusted_host(head.header("host"), config)


def own_origin(head: RequestHead, tls: bool) -> str | None:
    """The origin a page served by this server has: ``scheme://`` plus the Host header."""
    host = head.header("host")
    if not host:
        return None
    return f"{'https' if tls else 'http'}://{host.strip().lower()}"


def origin_allowed(head: RequestHead, config: Config) -> bool:
    """Whether the Origin header (or its absence) passes ``allowed_origins``/``require_origin``."""
    origin = head.header("origin")
    if origin is None:
        return not config.require_origin
    if not config.allowed_origins:
        return True
    origin = origin.strip().lower()
    if origin in {allowed.lower() for allowed in config.allowed_origins}:
        return True
    return origin == own_origin(head, config.tls) and trusted_host(head.header("host"), config)


def check_handshake(head: RequestHead, config: Config) -> Refusal | None:
    """Why a WebSocket upgrade must be refused (malformed, host, token, origin), or ``None``.

    The number of clients is the server's to check: it is state, not the request.
    """
    problem = head.websocket_problem()
    if problem is not None:
        # The version this server speaks: RFC 6455 4.2.2 requires it in a
        # refusal for the version, and it is useful in any other.
        return Refusal(400, BAD_REQUEST, problem, (("Sec-WebSocket-Version", VERSION),))
    if not host_allowed(head, config):
        return Refusal(403, FORBIDDEN_HOST, HOST_NOT_ALLOWED)
    if not token_presented_ok(head, config.token):
        return Refusal(
            401,
            UNAUTHORIZED,
            "a valid token is required (Authorization: Bearer, or ?token=)",
            (("WWW-Authenticate", 'Bearer realm="trio-broadcast"'),),
        )
    if not origin_allowed(head, config):
        origin = head.header("origin")
        why = "an Origin header is required" if origin is None else "origin not allowed"
        return Refusal(403, FORBIDDEN_ORIGIN, why)
    return None


@dataclass(slots=True)
class RefusalThrottle:
    """At most one log line per reason and :data:`REPORT_INTERVAL`, counting the rest.

    A client retrying in a loop (a page with a wrong token, a scanner) would
    otherwise fill the log; the metrics still count every refusal.
    """

    interval: float = REPORT_INTERVAL
    _last: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def report(self, reason: str, now: float) -> int | None:
        """Whether to log this refusal: ``None`` if not, else how many were held back."""
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return None
        self._last[reason] = now
        return self._suppressed.pop(reason, 0)
