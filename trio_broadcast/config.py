"""The server's settings: one frozen value, checked once, shared by every task.

Every limit the server enforces lives here, so that a reader can see in one place
what bounds memory and time. :class:`Config` validates itself on construction: an
impossible value fails at start-up with a message naming the setting, never later
inside a client task.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MiB = 1024 * 1024


class OnFull(enum.Enum):
    """What happens to a client whose broadcast queue is full."""

    DISCONNECT = "disconnect"
    """Close it with code 1008 and a reason that says it was too slow."""

    DROP = "drop"
    """Skip the message for that client only, and count the loss."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything :func:`trio_broadcast.serve` needs to know.

    The defaults are those of the ``trio-broadcast`` command. All sizes are in
    bytes and all durations in seconds.
    """

    host: str = "0.0.0.0"
    """Address or name to bind; an IPv6 literal such as ``::1`` works too."""
    port: int = 8000
    """TCP port; 0 asks the kernel for a free one."""
    queue_size: int = 16
    """Broadcast messages a client may fall behind before :attr:`on_full` applies."""
    on_full: OnFull = OnFull.DISCONNECT
    history: int = 0
    """A new client first receives this many of the latest lines."""
    max_clients: int | None = None
    """Beyond this many connected clients, handshakes are refused with HTTP 503."""
    max_message_size: int = MiB
    """A larger incoming message closes the connection with code 1009."""
    max_line_size: int = MiB
    """A longer standard-input line is skipped (with a warning), never buffered whole."""
    ping_interval: float = 20.0
    """Seconds between keep-alive pings; a peer silent until the next ping is dropped. 0: off."""
    echo: bool = True
    """Send each client's messages back to it."""
    exit_on_eof: bool = False
    """At the end of standard input, deliver what was read, close every client, stop."""
    certfile: str | None = None
    keyfile: str | None = None
    handshake_timeout: float = 10.0
    """A connection must complete TLS and the WebSocket handshake within this time."""
    send_timeout: float = 10.0
    """A single frame that cannot be written within this time aborts the connection."""
    close_timeout: float = 1.5
    """Budget for closing one connection: finishing a frame being written, writing
    the close frame and waiting for the client's; past it the TCP connection is
    dropped. A client that reads what was already sent within it gets its close
    code (under full load, a second of buffered frames is not unusual)."""
    max_request_head: int = 16 * 1024
    """Largest HTTP request head (request line and headers) accepted."""
    redis_url: str | None = None
    """Share the feed through this Redis server (``redis://``, ``rediss://`` or
    ``unix://``); ``None``: this instance stands alone. See :mod:`trio_broadcast.redis_stream`."""
    channel: str = "trio-broadcast"
    """Name of the feed in Redis; instances with the same channel share their lines."""
    redis_maxlen: int = 100_000
    """Lines the Redis stream keeps (approximately, ``MAXLEN ~``); a reader that falls
    further behind than this skips the oldest, and says so."""
    redis_buffer: int = 256
    """Batches of input held while Redis is unreachable; beyond it, input is not read."""
    allowed_origins: tuple[str, ...] = ()
    """Origins (``scheme://host[:port]``) allowed to open a WebSocket; empty: any.
    When not empty, the server's own origin is allowed too, if its host is one
    that DNS cannot point elsewhere: see :attr:`allowed_hosts`."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (``name`` or ``name:port``) by which clients reach the server, on
    top of those always trusted: an IP address, ``localhost`` and :attr:`host`.
    When not empty, a request whose ``Host`` is none of those gets 403. With
    :attr:`allowed_origins`, given or not, a page is the server's own only if its
    host is one of those (a name that DNS rebinding cannot point elsewhere)."""
    require_origin: bool = False
    """Refuse handshakes without an Origin header (that is, from non-browser clients)."""
    token: str | None = field(default=None, repr=False)
    """Secret that handshakes, the page and ``/metrics`` must present; never logged."""
    page: bool = True
    """Serve the live page at ``/``."""

    def __post_init__(self) -> None:
        _at_least("port", self.port, 0)
        if self.port > 65535:
            raise ValueError(f"port must be at most 65535, not {self.port}")
        _at_least("queue_size", self.queue_size, 1)
        _at_least("history", self.history, 0)
        if self.max_clients is not None:
            _at_least("max_clients", self.max_clients, 1)
        _at_least("max_message_size", self.max_message_size, 1)
        _at_least("max_line_size", self.max_line_size, 1)
        _at_least("max_request_head", self.max_request_head, 256)
        _finite_at_least("ping_interval", self.ping_interval, 0.0)
        for name in ("handshake_timeout", "send_timeout", "close_timeout"):
            _positive(name, getattr(self, name))
        if not self.host:
            raise ValueError("host must not be empty")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be given together")
        if not isinstance(self.on_full, OnFull):
            raise TypeError(f"on_full must be an OnFull, not {self.on_full!r}")
        if self.redis_url is not None:
            _redis_url(self.redis_url)
        if not self.channel or not self.channel.isprintable() or " " in self.channel:
            raise ValueError(f"channel must be printable, without spaces, not {self.channel!r}")
        _at_least("redis_maxlen", self.redis_maxlen, 1)
        _at_least("redis_buffer", self.redis_buffer, 1)
        for origin in self.allowed_origins:
            _origin(origin)
        for host in self.allowed_hosts:
            _allowed_host(host)
        if self.token is not None and not _TOKEN.fullmatch(self.token):
            raise ValueError("token must be 1 or more printable ASCII characters without spaces")

    @property
    def tls(self) -> bool:
        """Whether the server speaks ``wss://``."""
        return self.certfile is not None


def _at_least(name: str, value: int, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lowest:
        raise ValueError(f"{name} must be at least {lowest}, not {value}")


_TOKEN = re.compile(r"[!-~]+")


def _origin(origin: str) -> None:
    if not isinstance(origin, str):
        raise TypeError(f"allowed origins must be strings, not {origin!r}")
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or origin != (f"{parts.scheme}://{parts.netloc}")
    ):
        raise ValueError(
            f"allowed origin {origin!r} must look like https://example.com or http://host:port"
        )


def _allowed_host(host: str) -> None:
    if not isinstance(host, str):
        raise TypeError(f"allowed hosts must be strings, not {host!r}")
    if split_host(host) is None:
        raise ValueError(
            f"allowed host {host!r} must look like example.com, example.com:8000 or [::1]:8000"
        )


_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def split_host(text: str) -> tuple[str, int | None] | None:
    """A ``Host`` header (or an allowed host) as ``(host, port)``; ``None`` if malformed.

    ``host`` is a lower-case name or IPv4 address, or an IPv6 address (given in
    brackets, returned without them); ``port`` is ``None`` when there is none.
    """
    text = text.lower()
    if not text.isascii():
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not is_ip_address(host) or ":" not in host:
            return None
    else:
        host, colon, port = text.partition(":")
        rest = colon + port
        if not _NAME.fullmatch(host):
            return None
    if not rest:
        return host, None
    port = rest.removeprefix(":")
    if not rest.startswith(":") or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    return host, int(port)


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")


def _finite_at_least(name: str, value: float, lowest: float) -> None:
    _number(name, value)
    if not math.isfinite(value) or value < lowest:
        raise ValueError(f"{name} must be a finite number of at least {lowest:g}, not {value}")


def _positive(name: str, value: float) -> None:
    _number(name, value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number above 0, not {value}")


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(url: str) -> None:
    """Check the shape of a Redis URL; whether the server answers is checked at start-up."""
    if not isinstance(url, str):
        raise TypeError(f"redis_url must be a string, not {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, not {url!r}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"redis_url {url!r} names no socket path")
        return
    if not parts.hostname:
        raise ValueError(f"redis_url {url!r} names no host")
    try:
        parts.port  # noqa: B018 - the property raises for a bad port
    except ValueError:
        raise ValueError(f"redis_url {url!r} has a bad port") from None
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError(f"redis_url {url!r}: the path must be a database number")
