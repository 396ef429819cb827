"""A Redis connection of our own for the hot path: one request, then its reply, on a Trio stream.

An append (``EVAL``) and a read (``XREAD BLOCK``) are one command each per batch
of lines, and the publisher and every instance run them for each batch: at
1,000 lines/s that is several thousand commands a second on the core that
also runs the fan-out. Through coredis each cost about 170-300 µs of client
CPU (its writer and reader tasks, an anyio event and cancel scope per
request); a Trio ``send_all`` and ``receive_some`` cost about 40-70. So the
adapter runs these two commands on a :class:`RespConnection`, which took a
third off the publisher's CPU per line at 1,000 lines/s and more off an
instance's (bench/README.md, "The Redis path"). The RESP2 protocol is
:mod:`~trio_broadcast.redis_stream.resp` (no I/O), and this module only
opens the stream, says who it is, and moves bytes.

There is no background reader. :meth:`RespConnection.request` sends one
command and reads until its reply is complete, and only one caller at a time
may use a connection (the adapter gives one to the append's writer task and
one to the reader, each its only user; a second concurrent request raises
:class:`trio.BusyResourceError`). A request that does not finish (cancelled,
timed out, the connection lost, a reply that is not RESP2) leaves the
connection owing a reply: it is closed on the spot and is no longer
:attr:`~RespConnection.usable`, so no reply can ever be taken as the answer
to the next command; its owner opens a new one.

What it raises: :class:`ConnectionLost` (an :class:`OSError`) when the stream
breaks or closes, :class:`OSError` when it cannot connect,
:class:`trio.TooSlowError` when connecting takes longer than its settings allow,
:class:`~trio_broadcast.redis_stream.resp.ReplyError` for an error reply and
:class:`~trio_broadcast.redis_stream.resp.ProtocolError` for bytes that are
not RESP2; the adapter counts them all as "unreachable", worth a retry.
"""

from __future__ import annotations

import select
import ssl
from dataclasses import dataclass

import trio

from .resp import (
    NEED_DATA,
    Arg,
    Error,
    ProtocolError,
    Reply,
    ReplyError,
    ReplyParser,
    encode_command,
)

RECEIVE_SIZE = 65536
"""Bytes asked of the stream per receive."""


class ConnectionLost(ConnectionError):
    """The connection to Redis broke, closed, or was given up in the middle of a request."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Where a connection goes and who it says it is: what coredis would use for the same URL."""

    host: str | None = None
    port: int = 6379
    path: str | None = None
    """A unix socket's path (``unix://``); then ``host`` and ``port`` are not used."""
    ssl_context: ssl.SSLContext | None = None
    """TLS (``rediss://``), checking the certificate as this context says."""
    username: str | None = None
    password: str | None = None
    db: int = 0
    client_name: str | None = None
    noevict: bool = False
    notouch: bool = False
    connect_timeout: float | None = None
    """Seconds to connect and say who it is; ``None``: no limit of its own."""

    def handshake(self) -> list[tuple[Arg, ...]]:
        """The commands that make a new connection this one: sent together, before any other."""
        commands: list[tuple[Arg, ...]] = []
        if self.password or self.username:
            # As coredis does (HELLO's AUTH): the two-argument form, "default" if no user
            # is named, which a default user without a password accepts too.
            commands.append((b"AUTH", self.username or "default", self.password or b""))
        if self.db:
            commands.append((b"SELECT", self.db))
        if self.client_name is not None:
            commands.append((b"CLIENT", b"SETNAME", self.client_name))
        if self.noevict:
            commands.append((b"CLIENT", b"NO-EVICT", b"ON"))
        if self.notouch:
            commands.append((b"CLIENT", b"NO-TOUCH", b"ON"))
        return commands


async def open_connection(settings: Settings) -> RespConnection:
    """Connect, authenticate, select the database and set the client name.

    Raises :class:`OSError` if it cannot connect (refused, unknown host, TLS
    refused), :class:`ConnectionLost` if the server goes away midway, and
    :class:`~trio_broadcast.redis_stream.resp.ReplyError` if the server refuses a
    step (bad credentials: ``WRONGPASS``; a database that does not exist).
    """
    with trio.fail_after(settings.connect_timeout if settings.connect_timeout else float("inf")):
        stream: trio.abc.Stream
        if settings.path is not None:
            stream = await trio.open_unix_socket(settings.path)
        else:
            assert settings.host is not None, "a TCP connection without a host"
            stream = await trio.open_tcp_stream(settings.host, settings.port)
            if settings.ssl_context is not None:
                # https_compatible: no close_notify expected, as coredis connects.
                stream = trio.SSLStream(
                    stream,
                    settings.ssl_context,
                    server_hostname=settings.host,
                    https_compatible=True,
                )
        connection = RespConnection(stream)
        try:
            if isinstance(stream, trio.SSLStream):
                await _tls_handshake(stream)  # a certificate refused is refused here
            # At least one round trip, PING if there is nothing else to say: over TLS
            # 1.3 it also reads the session tickets the server sends after the
            # handshake, which left unread would make the idle connection look ended.
            await connection.pipeline(settings.handshake() or [(b"PING",)])
        except BaseException:
            await connection.aclose()
            raise
        return connection


async def _tls_handshake(stream: trio.SSLStream[trio.abc.Stream]) -> None:
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        why = exc.__cause__ or exc
        raise ConnectionLost(f"the TLS handshake with Redis failed: {why}") from exc


class RespConnection:
    """One Redis connection used by one owner: a request, then its reply, nothing in between."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._parser = ReplyParser()
        self._busy = False
        self._closed = False
        self._idle = _readable_check(stream)

    @property
    def usable(self) -> bool:
        """Open, owing no reply, and not ended by the server while idle.

        Redis closes a client idle for longer than its ``timeout`` setting, and
        proxies and NAT drop idle connections too. With no reader in the
        background, nothing notices until the next request, which would fail
        and be retried with a warning. But an idle connection has nothing to
        read: if its socket is readable (the end of the stream, a TLS
        ``close_notify``, bytes nobody asked for), it is done, and its owner
        opens another instead. One ``poll`` with no wait, per request.
        """
        if self._closed:
            return False
        return self._busy or self._idle is None or not self._idle.poll(0)

    async def request(self, *command: Arg) -> Reply:
        """Send ``command``; its reply. An error reply raises :class:`ReplyError`."""
        (reply,) = await self.pipeline([command])
        return reply

    async def pipeline(self, commands: list[tuple[Arg, ...]]) -> list[Reply]:
        """Send ``commands`` at once; their replies, in order.

        An error reply to any of them raises :class:`ReplyError` for the first,
        once all replies have arrived (so the connection stays usable).
        """
        if self._busy:
            raise trio.BusyResourceError("another request is in flight on this Redis connection")
        if self._closed:
            raise ConnectionLost("this Redis connection was closed")
        if not commands:
            return []
        self._busy = True
        try:
            await self._stream.send_all(b"".join(encode_command(*args) for args in commands))
            replies = [await self._receive() for _ in commands]
            self._check_nothing_more()
        except BaseException as exc:
            # Cancelled, timed out or broken midway: the connection may still owe
            # replies, which must never answer a later request. Drop it now.
            await self.aclose()
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                raise ConnectionLost(f"the connection to Redis broke: {exc}") from exc
            raise
        finally:
            self._busy = False
        for args, reply in zip(commands, replies, strict=True):
            if isinstance(reply, Error):
                raise ReplyError(_name(args), reply)
        return replies

    def _check_nothing_more(self) -> None:
        if self._parser.buffered:
            raise ProtocolError("Redis sent more than the replies to the commands asked")

    async def _receive(self) -> Reply:
        parser = self._parser
        while (reply := parser.next_reply()) is NEED_DATA:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise ConnectionLost("Redis closed the connection")
            parser.feed(data)
        return reply

    async def aclose(self) -> None:
        """Close it at once (no goodbye to the server); it is then not :attr:`usable`."""
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)


def _readable_check(stream: trio.abc.Stream) -> select.poll | None:
    """A poll of the socket under ``stream`` (through TLS) for input; ``None`` if there
    is no socket to poll (another kind of stream) or no ``poll`` (Windows)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream) or not hasattr(select, "poll"):
        return None
    idle = select.poll()
    idle.register(stream.socket.fileno(), select.POLLIN)
    return idle


def _name(args: tuple[Arg, ...]) -> str:
    """A command's name for a message (never its arguments: they may hold a password)."""
    name = args[0]
    if isinstance(name, bytes):
        return name.decode(errors="replace")
    return str(name)
