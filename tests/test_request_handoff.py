"""A request head handed to trio-websocket already parsed (trio_broadcast.request_handoff).

On a real connection, as the server does it: read the head with
:func:`~trio_broadcast.handshake.read_request_head`, hand the parsed request
over, accept. Fails loudly when a wsproto or trio-websocket release changes
the internals the hand-over uses.
"""

from __future__ import annotations

import pytest
import trio
from trio_websocket import WebSocketConnection

from trio_broadcast.handshake import read_request_head
from trio_broadcast.request_handoff import IncompatibleHandoff, accept_parsed, check_compatible

from .wire import TEXT, accept_key, masked_frame, upgrade_request

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


async def test_a_parsed_request_is_accepted_on_this_release() -> None:
    """Fails loudly if an upgrade of wsproto or trio-websocket changes the internals used."""
    check_compatible()
    with trio.fail_after(5):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        async with listener, await trio.open_tcp_stream("127.0.0.1", port) as client:
            server = await listener.accept()
            async with server, trio.open_nursery() as nursery:
                await client.send_all(
                    upgrade_request("/feed", "Sec-WebSocket-Protocol: a, b", key=KEY)
                )
                head = await read_request_head(server, 16384)
                assert head is not None
                request = await accept_parsed(nursery, server, head, max_message_size=1024)
                assert request.path == "/feed"
                assert request.proposed_subprotocols == ("a", "b")
                ws = await request.accept(subprotocol="b")
                response = b""
                while b"\r\n\r\n" not in response:
                    response += await client.receive_some()
                assert response.startswith(b"HTTP/1.1 101 ")
                assert b"Sec-WebSocket-Accept: " + accept_key(KEY) + b"\r\n" in response
                assert b"Sec-WebSocket-Protocol: b\r\n" in response
                await client.send_all(masked_frame(TEXT, b"hello"))
                assert await ws.get_message() == "hello"
                nursery.cancel_scope.cancel()


def test_a_changed_release_is_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(WebSocketConnection, "_get_request")
    with pytest.raises(IncompatibleHandoff, match="internals changed"):
        check_compatible()
