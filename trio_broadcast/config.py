"""The settings: frozen values, each field declared once, checked on construction.

Every limit the server enforces lives in :class:`Config`, so that a reader can
see in one place what bounds memory and time; :class:`RedisSettings` says where
the command shares its feed. Each field is declared with :func:`~trio_broadcast.setting.setting`:
its default, its check and, when the command sets it, its option and help. An
impossible value fails at start-up with a message naming the setting, never
later inside a client task.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from .setting import (
    Count,
    Many,
    Member,
    MiB,
    Option,
    Seconds,
    SettingError,
    Switch,
    Text,
    check_fields,
    setting,
)

__all__ = [
    "Config",
    "MiB",
    "OnFull",
    "RedisSettings",
    "SettingError",
    "is_ip_address",
    "split_host",
]


class OnFull(enum.Enum):
    """What happens to a client whose broadcast queue is full."""

    DISCONNECT = "disconnect"
    """Close it with code 1008 and a reason that says it was too slow."""

    DROP = "drop"
    """Skip the message for that client only, and count the loss."""

    WAIT = "wait"
    """Make the publisher wait for room, at most ``max_wait`` seconds per
    publish; then close each client still full as under :attr:`DISCONNECT`."""


# The rules below return the problem with a value, or None; see setting.Text.

_TOKEN = re.compile(r"[!-~]+")


def _token(token: str) -> str | None:
    if _TOKEN.fullmatch(token):
        return None
    return "must be 1 or more printable ASCII characters without spaces"


def _origin(origin: str) -> str | None:
    parts = urlsplit(origin)
    if (
        parts.scheme in ("http", "https")
        and parts.netloc
        and origin == f"{parts.scheme}://{parts.netloc}"
    ):
        return None
    return f"{origin!r} must look like https://example.com or http://host:port"


def _allowed_host(host: str) -> str | None:
    if split_host(host) is not None:
        return None
    return f"{host!r} must look like example.com, example.com:8000 or [::1]:8000"


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


def _channel(channel: str) -> str | None:
    if channel and channel.isprintable() and " " not in channel:
        return None
    return f"must be printable, without spaces, not {channel!r}"


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(url: str) -> str | None:
    """The shape of a Redis URL; whether the server answers is checked at start-up."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        return f"must start with redis://, rediss:// or unix://, not {url!r}"
    if parts.scheme == "unix":
        return None if parts.path else f"{url!r} names no socket path"
    if not parts.hostname:
        return f"{url!r} names no host"
    try:
        parts.port  # noqa: B018 - the property raises for a bad port
    except ValueError:
        return f"{url!r} has a bad port"
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        return f"{url!r}: the path must be a database number"
    return None


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything :func:`trio_broadcast.serve` needs to know.

    The defaults are those of the ``trio-broadcast`` command. All sizes are in
    bytes and all durations in seconds. Each field is declared with its check
    and, if the command sets it, its option and help (see :mod:`trio_broadcast.setting`).
    """

    host: str = setting(
        "0.0.0.0",
        Text(lambda host: None if host else "must not be empty"),
        Option("--host", "bind address; an IPv6 literal such as `::1` works too"),
    )
    port: int = setting(
        8000,
        Count(0, 65535),
        Option("--port", "TCP port; `0` picks a free one (the `listening on` line shows it)"),
    )
    queue_size: int = setting(
        16,
        Count(1),
        Option(
            "--queue-size",
            "how far a client may fall behind, in batches (the lines of one read of "
            "standard input)",
            metavar="N",
        ),
    )
    on_full: OnFull = setting(
        OnFull.DISCONNECT,
        Member(OnFull),
        Option(
            "--on-full",
            'a client whose queue is full is closed with 1008 ("too slow"); or (`drop`) '
            "misses that batch, counted and logged at most every 10 s; or (`wait`) makes "
            "reading input pause until it has room, for at most `--max-wait`, after which "
            "it is closed with 1008 and reading goes on",
        ),
    )
    max_wait: float = setting(
        5.0,
        Seconds(),
        Option(
            "--max-wait",
            "with `--on-full wait`: how long reading input may pause for full queues, in all, "
            "per batch; a client still full after that is closed with 1008",
            metavar="SECONDS",
        ),
    )
    """Under :attr:`OnFull.WAIT`, the longest one publish waits for room. Long
    enough to ride out a client's brief stall (a pause, a congested link, a
    burst to catch up on); short enough that a client that will never read again
    (TCP can take minutes to notice a dead peer) costs the others a single pause
    of a few seconds, since it is closed once the wait runs out."""
    history: int = setting(
        0,
        Count(0),
        Option(
            "--history",
            "a new client first receives the last N lines, then the live feed, with no gap "
            "and no duplicate; at most `--retain`",
            metavar="N",
        ),
    )
    retain: int = setting(
        10_000,
        Count(0),
        Option(
            "--retain",
            "lines kept for `trio-broadcast.v1` clients that reconnect with `?since=ID` "
            "(see [Resuming after a disconnect](#resuming-after-a-disconnect)); with "
            "`--redis` the stream is kept instead (`--redis-maxlen`)",
            metavar="N",
        ),
    )
    retain_bytes: int = setting(
        16 * MiB,
        Count(0),
        Option(
            "--retain-bytes",
            "and at most this many bytes of them (each line's frame), whichever bound is "
            "reached first",
            metavar="BYTES",
        ),
    )
    max_clients: int | None = setting(
        None,
        Count(1),
        Option(
            "--max-clients",
            "beyond N clients the handshake is refused with HTTP 503",
            metavar="N",
            shown="unlimited",
        ),
    )
    max_message_size: int = setting(
        MiB,
        Count(1),
        Option(
            "--max-message-size",
            "a larger incoming message closes the connection with 1009; text counts in UTF-8 "
            "bytes, as sent. A message may come in at most one fragment per 64 bytes of the "
            "limit, and at least 1,024 (16,384 for 1 MiB): one still unfinished after that "
            "closes with 1008. However it is fragmented, the server holds about this many "
            "bytes for a message, no more",
            metavar="BYTES",
        ),
    )
    max_line_size: int = setting(
        MiB,
        Count(1),
        Option(
            "--max-line-size",
            "a longer input line is skipped with one warning; memory stays bounded and the "
            "next lines flow",
            metavar="BYTES",
        ),
    )
    ping_interval: float = setting(
        20.0,
        Seconds(zero_allowed=True),
        Option(
            "--ping-interval",
            "keep-alive ping; a peer that has not answered by the next ping is dropped; "
            "`0` disables",
            metavar="SECONDS",
        ),
    )
    handshake_timeout: float = setting(
        10.0,
        Seconds(),
        Option(
            "--handshake-timeout",
            "a connection must finish TLS and the WebSocket handshake within this time",
            metavar="SECONDS",
        ),
    )
    certfile: str | None = setting(
        None,
        None,
        Option(
            "--certfile",
            "serve `wss://` with this certificate chain (PEM); needs `--keyfile`",
            metavar="PATH",
        ),
    )
    keyfile: str | None = setting(
        None,
        None,
        Option("--keyfile", "the private key (PEM) of `--certfile`", metavar="PATH"),
    )
    echo: bool = setting(
        True,
        Switch(),
        Option(
            "--no-echo",
            "do not echo; client messages are still read (and discarded) so pings and closes work",
        ),
    )
    exit_on_eof: bool = setting(
        False,
        Switch(),
        Option(
            "--exit-on-eof",
            "at the end of input, deliver every line read, close each client with 1000, exit 0",
        ),
    )
    allowed_origins: tuple[str, ...] = setting(
        (),
        Many(Text(_origin), "allowed origin"),
        Option(
            "--allowed-origin",
            "repeatable; a WebSocket handshake whose `Origin` is not listed (nor the server's "
            "own: see [Browser page, health and metrics](#browser-page-health-and-metrics)) "
            "gets `403`",
            metavar="ORIGIN",
            shown="any origin",
        ),
    )
    """Origins (``scheme://host[:port]``) allowed to open a WebSocket; empty: any.
    When not empty, the server's own origin is allowed too, if its host is one
    that DNS cannot point elsewhere: see :attr:`allowed_hosts`."""
    allowed_hosts: tuple[str, ...] = setting(
        (),
        Many(Text(_allowed_host), "allowed host"),
        Option(
            "--allowed-host",
            "repeatable; a name clients use to reach the server (`chat.example.com`, or "
            "`chat.example.com:8443` for that port only); IP addresses, `localhost` and the "
            "`--host` name need none. Once given, any request (page, `/healthz`, `/metrics`, "
            "handshake) whose `Host` is none of these gets `403`. Under `--allowed-origin`, "
            "the page's own origin is allowed only on these hosts, given or not (DNS rebinding)",
            metavar="HOST[:PORT]",
            shown="any host",
        ),
    )
    require_origin: bool = setting(
        False,
        Switch(),
        Option(
            "--require-origin",
            "also refuse handshakes without an `Origin` header (that is, from non-browser "
            "clients) with `403`",
        ),
    )
    page: bool = setting(
        True,
        Switch(),
        Option("--no-page", "do not serve the live page (`GET /` gets `404`)"),
    )
    token: str | None = setting(None, Text(_token), repr=False)
    """Secret that handshakes, the page and ``/metrics`` must present; never logged.
    The command reads it from ``--token-file`` or the environment."""
    send_timeout: float = setting(10.0, Seconds())
    """A single frame that cannot be written within this time aborts the connection."""
    close_timeout: float = setting(1.5, Seconds())
    """Budget for closing one connection: finishing a frame being written, writing
    the close frame and waiting for the client's; past it the TCP connection is
    dropped. A client that reads what was already sent within it gets its close
    code (under full load, a second of buffered frames is not unusual)."""
    max_request_head: int = setting(16 * 1024, Count(256))
    """Largest HTTP request head (request line and headers) accepted."""

    def __post_init__(self) -> None:
        check_fields(self)
        if (self.certfile is None) != (self.keyfile is None):
            raise SettingError(("certfile", "keyfile"), "must be given together")
        if self.history > self.retain:
            raise SettingError(
                ("history",),
                f"is {self.history}, more than the {self.retain} lines retained (--retain): "
                "a new client would be sent lines that a client resuming could not get",
            )

    @property
    def tls(self) -> bool:
        """Whether the server speaks ``wss://``."""
        return self.certfile is not None


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """Where the command shares its feed through Redis; see :mod:`trio_broadcast.redis_stream`."""

    url: str | None = setting(
        None,
        Text(_redis_url),
        Option(
            "--redis",
            "share the feed with every instance using this Redis (`redis://host:port/db`, "
            "`rediss://`, `unix://`); needs `pip install 'trio-broadcast[redis]'`; see "
            "[Scaling out with Redis](#scaling-out-with-redis)",
            metavar="URL",
        ),
    )
    channel: str = setting(
        "trio-broadcast",
        Text(_channel),
        Option(
            "--channel",
            "with `--redis`: the feed's name; its stream is the key `trio-broadcast:NAME`",
            metavar="NAME",
        ),
    )
    maxlen: int = setting(
        100_000,
        Count(1),
        Option(
            "--redis-maxlen",
            "with `--redis`: the stream keeps about the last N lines (`XADD … MAXLEN ~ N`); "
            "a reader that falls further behind skips the oldest, and says so",
            metavar="N",
        ),
    )
    buffer: int = setting(256, Count(1))
    """Batches of input held while Redis is unreachable; beyond it, input is not read."""

    def __post_init__(self) -> None:
        check_fields(self)
