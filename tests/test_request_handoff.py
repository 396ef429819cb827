"""A request head handed to trio-websocket already parsed (trio_broadcast.request_handoff).

On a real connection, as the server does it: read the head with
:func:`~trio_broadcast.handshake.read_request_head`, hand the parsed request
over, accept. Fails loudly when a wsproto or trio-websocket release changes
the internals the hand-over uses.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection
from wsproto.handshake import H11Handshake

from trio_broadcast import Config, StartupError, request_handoff, serve
from trio_broadcast.handshake import BadRequest, RequestHead, read_request_head
from trio_broadcast.request_handoff import (
    IncompatibleHandoff,
    accept_parsed,
    check_compatible,
    forget_parser,
)

from .conftest import LineFeed, running_server
from .wire import TEXT, RawClient, accept_key, masked_frame, upgrade_request

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


@asynccontextmanager
async def tcp_connection() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A real connection on the loopback: the client's end, then the server's."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, await trio.open_tcp_stream("127.0.0.1", port) as client:
        server = await listener.accept()
        async with server:
            yield client, server


async def test_a_parsed_request_is_accepted_on_this_release() -> None:
    """Fails loudly if an upgrade of wsproto or trio-websocket changes the internals used."""
    check_compatible()
    with trio.fail_after(5):
        async with tcp_connection() as (client, server), trio.open_nursery() as nursery:
            await client.send_all(
                upgrade_request("/feed", "Sec-WebSocket-Protocol: a, b", key=KEY)
            )
            head = await read_request_head(server, 16384)
            assert head is not None
            request = await accept_parsed(nursery, server, head, max_message_size=1024)
            assert request.path == "/feed"
            assert request.proposed_subprotocols == ("a", "b")
            ws = await request.accept(subprotocol="b")
            forget_parser(ws)
            assert vars(ws._wsproto.handshake)["_h11_connection"] is None
            response = b""
            while b"\r\n\r\n" not in response:
                response += await client.receive_some()
            assert response.startswith(b"HTTP/1.1 101 ")
            assert b"Sec-WebSocket-Accept: " + accept_key(KEY) + b"\r\n" in response
            assert b"Sec-WebSocket-Protocol: b\r\n" in response
            await client.send_all(masked_frame(TEXT, b"hello"))
            assert await ws.get_message() == "hello"  # the parser was not needed
            await ws.send_message("bye")
            assert (await client.receive_some()).endswith(b"bye")
            nursery.cancel_scope.cancel()


async def test_a_request_wsproto_refuses_is_a_bad_request_before_anything_starts() -> None:
    """A gap in the server's checks gets the client a 400, not a dropped connection.

    No request that passes ``websocket_problem`` is known to fail in wsproto (a
    review fuzzed 30,000 hostile heads), so this one skips the checks: it has
    no Sec-WebSocket-Version.
    """
    with trio.fail_after(5):
        async with tcp_connection() as (client, server), trio.open_nursery() as nursery:
            await client.send_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n"
            )
            head = await read_request_head(server, 16384)
            assert head is not None
            assert head.websocket_problem() is not None
            with pytest.raises(BadRequest, match=r"refused by wsproto: .*Sec-WebSocket-Version"):
                await accept_parsed(nursery, server, head, max_message_size=1024)
            assert not nursery.child_tasks  # no reader was started


async def test_only_a_head_read_from_a_connection_can_be_handed_over() -> None:
    head = RequestHead("GET", "/", (("host", "x"),))  # built, as the web tests build them
    with trio.fail_after(5):
        async with tcp_connection() as (_, server), trio.open_nursery() as nursery:
            with pytest.raises(ValueError, match="not read from a connection"):
                await accept_parsed(nursery, server, head, max_message_size=1024)


async def test_the_server_does_not_start_on_a_release_it_cannot_hand_requests_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(WebSocketConnection, "_get_request")
    with trio.fail_after(5), pytest.raises(StartupError, match="request_handoff needs updating"):
        await serve(Config(host="127.0.0.1", port=0))


def test_a_changed_release_is_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(WebSocketConnection, "_get_request")
    with pytest.raises(IncompatibleHandoff, match="internals changed"):
        check_compatible()


def test_a_release_that_breaks_the_hand_over_is_refused_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The names are there, but the rehearsal (what a connection does) fails."""

    def changed(self: H11Handshake, event: h11.Request) -> None:
        return None

    monkeypatch.setattr(H11Handshake, "_process_connection_request", changed)
    with pytest.raises(IncompatibleHandoff, match=r"wsproto \S+, trio-websocket \S+: a rehearsed"):
        check_compatible()


def test_a_release_that_reads_frames_otherwise_is_refused_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rehearsal compares what it saw with what a connection needs to see."""
    pong = bytes([0x8A, 0x80, 0, 0, 0, 0])  # what the rehearsal's ping is not
    monkeypatch.setattr(request_handoff, "_REHEARSED_PING", pong)
    with pytest.raises(IncompatibleHandoff, match="a Request event, a 101 and then a Ping"):
        check_compatible()


async def test_a_connected_client_keeps_no_h11_parser() -> None:
    """Once the 101 is out, the parser that read the request is let go (forget_parser)."""
    with trio.fail_after(5):
        async with running_server(LineFeed()) as server:
            client = await RawClient.handshake(server.port)
            async with client.stream:
                await trio.testing.wait_all_tasks_blocked()
                gc.collect()
                handshakes = [item for item in gc.get_objects() if isinstance(item, H11Handshake)]
                assert handshakes, "no connection found"
                assert all(vars(item)["_h11_connection"] is None for item in handshakes)
