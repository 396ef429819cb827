"""Frames encoded once, byte for byte what wsproto would send; and the adapter that writes them."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection, serve_websocket
from wsproto.frame_protocol import FrameProtocol

from trio_broadcast.frame_writer import FrameWriter, check_compatible
from trio_broadcast.frames import encode_lines, message_frame, text_frame
from trio_broadcast.protocol_errors import IncompatibleWebSocket

from .conftest import ws_client


def wsproto_server_frame(text: str) -> bytes:
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text, fin=True))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_every_length_encoding_matches_wsproto(size: int) -> None:
    text = "é" * (size // 2) + "a" * (size % 2)
    assert text_frame(text.encode()) == wsproto_server_frame(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=10))
def test_encode_lines_matches_wsproto(lines: list[str]) -> None:
    assert encode_lines(lines) == [wsproto_server_frame(line) for line in lines]


async def accepted_pair(
    nursery: trio.Nursery,
) -> tuple[trio.MemoryReceiveChannel[WebSocketConnection], str]:
    send, receive = trio.open_memory_channel[WebSocketConnection](1)

    async def handler(request: object) -> None:
        ws = await request.accept()  # type: ignore[attr-defined]
        await send.send(ws)
        await trio.sleep_forever()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return receive, f"ws://127.0.0.1:{server.port}/"


async def test_the_writer_works_on_this_trio_websocket_release() -> None:
    """Fails loudly if an upgrade of trio-websocket changes the internals used."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            accepted, url = await accepted_pair(nursery)
            async with ws_client(url) as client:
                server_side = await accepted.receive()
                check_compatible(server_side)
                writer = FrameWriter(server_side, server_side._stream)
                frames = b"".join(encode_lines(["one", "two"]))
                assert writer.write_nowait(frames) == len(frames)
                await writer.write(b"".join(encode_lines(["three"])))
                assert [await client.get_message() for _ in range(3)] == ["one", "two", "three"]
                # Not a plain socket (TLS, say): nothing is written directly.
                other = FrameWriter(server_side, trio.testing.MemorySendStream())  # type: ignore[arg-type]
                assert other.write_nowait(frames) == 0
            nursery.cancel_scope.cancel()


def test_a_changed_connection_is_refused_loudly() -> None:
    with pytest.raises(IncompatibleWebSocket, match="internals changed"):
        check_compatible(object())  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=70000)))
def test_message_frames_match_wsproto(message: str | bytes) -> None:
    expected = FrameProtocol(client=False, extensions=[]).send_data(message, fin=True)
    assert message_frame(message) == bytes(expected)
