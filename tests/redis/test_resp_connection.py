"""The hot path's own connection (``redis_stream.resp_connection``) against a real redis-server.

It must reach the server coredis reaches for the same URL, as the same user,
database and client name (an ACL user with a password and a database other than
0, a unix socket, TLS), answer each request with its own reply (an error reply
raised clearly, the connection still usable; a request given up closes it),
and a reader whose connection is killed while it waits in ``XREAD BLOCK`` goes
on on a new one with nothing lost or delivered twice.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_broadcast.redis_stream import ORIGIN, Follower, connect, stream_key
from trio_broadcast.redis_stream.adapter import unreachable
from trio_broadcast.redis_stream.resp import ReplyError
from trio_broadcast.redis_stream.resp_connection import (
    ConnectionLost,
    RespConnection,
    open_connection,
)

from .conftest import REDIS_SERVER, RedisServer, _free_port
from .test_redis_stream import blocked, channel, kill_clients_named

coredis = pytest.importorskip("coredis", reason="the redis extra is not installed")


def own_server(tmp_path: Path, *extra: str) -> RedisServer:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(REDIS_SERVER, tmp_path)
    server.start(*extra)
    return server


async def hot_clients(url: str, name: str) -> list[dict[str, Any]]:
    """The append's and the read's connections named ``name`` (coredis's pool has one too)."""
    async with coredis.Redis.from_url(url) as admin:
        return [
            client
            for client in await admin.client_list()
            if client["name"] == name and client["cmd"] in ("eval", "xread")
        ]


async def test_an_acl_user_and_a_database_reach_the_hot_path(tmp_path: Path) -> None:
    server = own_server(
        tmp_path, "--user", "default", "off", "--user", "feed", "on", ">s3cret", "~*", "+@all"
    )
    url = f"redis://feed:s3cret@127.0.0.1:{server.port}/3"
    try:
        with trio.fail_after(10):
            async with connect(url, channel="acl", maxlen=100, name="acl-test") as stream:
                last = await stream.append(["one", "two"])
                entries = await stream.read(ORIGIN, count=10, block_ms=10)
                assert entries.lines == ["one", "two"]
                assert entries.last == last
                ours = await hot_clients(url, "acl-test")
                # The append's and the read's connections: the ACL user, database 3.
                assert len(ours) == 2, ours
                assert {(client["user"], str(client["db"])) for client in ours} == {("feed", "3")}
            async with coredis.Redis.from_url(url) as admin:
                assert await admin.xlen(stream_key("acl")) == 2
            async with coredis.Redis.from_url(url.replace("/3", "/0")) as admin:
                assert await admin.exists([stream_key("acl")]) == 0
    finally:
        server.stop()


async def test_wrong_credentials_on_our_own_connection_are_refused_clearly(
    redis_server: RedisServer,
) -> None:
    async with channel(redis_server) as stream:
        settings = stream.settings
        admin = await open_connection(settings)
        await admin.request(b"ACL", b"SETUSER", b"feed", b"on", b">right", b"~*", b"+@all")
        await admin.aclose()
        bad = type(settings)(host=settings.host, port=settings.port, username="feed", password="x")
        with pytest.raises(ReplyError) as raised:
            await open_connection(bad)
    assert raised.value.code == "WRONGPASS"
    assert str(raised.value).startswith("Redis refused AUTH: WRONGPASS"), raised.value
    assert "right" not in str(raised.value)


async def test_a_password_without_a_user_reaches_the_hot_path(tmp_path: Path) -> None:
    """``redis://:secret@…`` authenticates as the default user, with or without a password
    configured for it, as coredis does (a one-argument ``AUTH`` is refused by a
    default user that has none)."""
    for extra in ((), ("--requirepass", "secret")):
        server = own_server(tmp_path, *extra)
        try:
            with trio.fail_after(10):
                url = f"redis://:secret@127.0.0.1:{server.port}/0"
                async with connect(url, channel="password", maxlen=100) as stream:
                    await stream.append(["with a password"])
                    entries = await stream.read(ORIGIN, count=10, block_ms=10)
                    assert entries.lines == ["with a password"]
        finally:
            server.stop()


async def test_a_unix_socket_url_reaches_the_hot_path(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    if len(str(socket_path)) > 100:
        pytest.skip(f"the temporary path is too long for a unix socket: {socket_path}")
    server = own_server(tmp_path, "--unixsocket", str(socket_path), "--unixsocketperm", "700")
    url = f"unix://{socket_path}?db=2"
    try:
        with trio.fail_after(10):
            async with connect(url, channel="unix", maxlen=100, name="unix-test") as stream:
                assert stream.settings.path == str(socket_path)
                await stream.append(["over a unix socket"])
                entries = await stream.read(ORIGIN, count=10, block_ms=10)
                assert entries.lines == ["over a unix socket"]
                ours = await hot_clients(url, "unix-test")
                assert len(ours) == 2, ours
                assert all(str(client["db"]) == "2" for client in ours), ours
                assert all(str(client["addr"]).startswith(str(socket_path)) for client in ours)
    finally:
        server.stop()


async def test_rediss_reaches_the_hot_path_over_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1")
    cert, key, authority = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(authority))
    tls_port = _free_port()
    server = own_server(
        tmp_path,
        *("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(authority), "--tls-auth-clients", "no"),
    )
    url = (
        f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={authority}"
        "&ssl_cert_reqs=required&ssl_check_hostname=true"
    )
    try:
        with trio.fail_after(10):
            async with connect(url, channel="tls", maxlen=100, name="tls-test") as stream:
                assert stream.settings.ssl_context is not None
                await stream.append(["over TLS"])
                entries = await stream.read(ORIGIN, count=10, block_ms=10)
                assert entries.lines == ["over TLS"]
                ours = await hot_clients(url, "tls-test")
                assert len(ours) == 2, ours
            # With nothing to say at connect (no user, database or name), a connection
            # still reads what TLS 1.3 sends after the handshake (session tickets), which
            # on an idle connection would look like the server ending it.
            plain = type(stream.settings)(
                host="127.0.0.1", port=tls_port, ssl_context=stream.settings.ssl_context
            )
            connection = await open_connection(plain)
            try:
                with trio.move_on_after(0.5):  # whatever Redis sends unasked arrives by then
                    await trio.lowlevel.wait_readable(_socket_of(connection))
                assert connection.usable
                assert await connection.request(b"PING") == "PONG"
            finally:
                await connection.aclose()
            # A certificate the context does not trust is refused when connecting.
            untrusting = type(stream.settings)(
                host="127.0.0.1", port=tls_port, ssl_context=ssl.create_default_context()
            )
            with pytest.raises(ConnectionLost) as raised:
                await open_connection(untrusting)
            assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value), raised.value
    finally:
        server.stop()


def _socket_of(connection: RespConnection) -> trio.socket.SocketType:
    """The socket under a TLS connection (for a test to wait on it)."""
    stream = connection._stream  # what the connection polls; it has no public name
    assert isinstance(stream, trio.SSLStream), stream
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream), transport
    return transport.socket


async def test_an_error_reply_is_raised_and_the_connection_stays_usable(
    redis_server: RedisServer,
) -> None:
    async with channel(redis_server) as stream:
        connection = await open_connection(stream.settings)
        try:
            await connection.request(b"SET", b"text", b"not a number")
            with pytest.raises(ReplyError) as raised:
                await connection.request(b"INCR", b"text")
            assert str(raised.value) == (
                "Redis refused INCR: ERR value is not an integer or out of range"
            )
            assert connection.usable
            assert await connection.request(b"GET", b"text") == b"not a number"
        finally:
            await connection.aclose()


async def test_a_request_given_up_closes_its_connection(redis_server: RedisServer) -> None:
    async with channel(redis_server) as stream:
        connection: RespConnection = await open_connection(stream.settings)
        with trio.move_on_after(0.2) as waited:
            await connection.request(b"BLPOP", b"nothing", 5)
        assert waited.cancelled_caught
        # It owes BLPOP's reply: it must never be read as the next command's.
        assert not connection.usable
        with pytest.raises(ConnectionLost):
            await connection.request(b"PING")


async def test_a_closed_stream_opens_no_connection(redis_server: RedisServer) -> None:
    """A task still using a stream after it is closed gets ClosedResourceError, which is
    not retried, and no new connection that nobody would close."""
    async with channel(redis_server, client="closed-test") as stream:
        await stream.append(["x"])
        await stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await stream.append(["y"])
        with pytest.raises(trio.ClosedResourceError):
            await stream.read(ORIGIN, count=10, block_ms=10)
        assert not isinstance(trio.ClosedResourceError(), unreachable())
        assert await hot_clients(redis_server.url, "closed-test") == []


async def test_one_request_at_a_time(redis_server: RedisServer) -> None:
    async with channel(redis_server) as stream:
        connection = await open_connection(stream.settings)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.request, b"BLPOP", b"nothing", 1)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await connection.request(b"PING")
            assert connection.usable  # the BLPOP timed out on the server and got its nil
            assert await connection.request(b"PING") == "PONG"
        finally:
            await connection.aclose()


async def test_a_reader_killed_while_blocked_goes_on_without_loss_or_duplicate(
    redis_server: RedisServer,
) -> None:
    received: list[tuple[str, str]] = []

    async def publish(batch: Sequence[str], ids: Sequence[str] | None = None) -> None:
        assert ids is not None
        received.extend(zip(batch, ids, strict=True))
        await trio.lowlevel.checkpoint()

    sent: list[str] = []
    with trio.fail_after(20):
        async with (
            channel(redis_server) as writer,
            channel(redis_server, client="blocked-reader") as reading,
            trio.open_nursery() as nursery,
        ):
            follower = Follower(reading, publish, history=0, count=100)
            await nursery.start(follower.run)
            for round_ in range(5):
                await blocked(redis_server, "blocked-reader")  # in XREAD BLOCK
                assert await kill_clients_named(redis_server, "blocked-reader") >= 1
                lines = [f"round {round_} line {n}" for n in range(50)]
                last = await writer.append(lines)
                sent += lines
                await follower.delivered(last)
            nursery.cancel_scope.cancel()
    assert [line for line, _ in received] == sent
    ids = [entry for _, entry in received]
    assert len(set(ids)) == len(ids)
