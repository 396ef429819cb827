"""Frames encoded once, byte for byte what wsproto would send; and the adapter that writes them."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection, serve_websocket
from wsproto.frame_protocol import FrameProtocol

from trio_broadcast.frames import encode_lines, message_frame, text_frame


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


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=70000)))
def test_message_frames_match_wsproto(message: str | bytes) -> None:
    expected = FrameProtocol(client=False, extensions=[]).send_data(message, fin=True)
    assert message_frame(message) == bytes(expected)
