"""Clients that misbehave, end to end: one that vanishes (TCP reset) at any stage,
protocol errors and invalid UTF-8 (1002, 1007), plain HTTP (the page), garbage
(400 or dropped), a handshake that never completes (``--handshake-timeout``).
Each ends only its own connection.
"""

from __future__ import annotations

import random

import pytest
import trio

from .conftest import running_command
from .e2e import (
    echoes,
    lines_of,
    local_port,
    recv_text,
    recv_texts,
    seen_connected,
    stop,
    url_port,
    ws,
)
from .wire import CLOSE, RawClient

pytestmark = pytest.mark.e2e


async def test_client_that_vanishes_mid_broadcast_leaves_no_trace() -> None:
    with trio.fail_after(15):
        async with running_command() as process:
            async with ws(process.url) as good:
                await seen_connected(process, local_port(good))
                vanishing = await RawClient.handshake(url_port(process.url))
                port = vanishing.port
                try:
                    await seen_connected(process, port)
                    for chunk in range(60):
                        lines = lines_of(chunk)
                        await process.write(("\n".join(lines) + "\n").encode())
                        assert await recv_texts(good, len(lines)) == lines
                        if chunk == 10:
                            frame = await vanishing.read_frame()
                            assert frame is not None
                            assert frame.text == lines_of(0)[0]
                            vanishing.reset()
                finally:
                    await vanishing.aclose()
                await process.read_stderr_until(
                    rf"client 127\.0\.0\.1:{port} (closed|connection ended)"
                )
                await echoes(good, "unaffected")
                # Vanishing at each stage of the handshake leaves no trace either.
                request = (
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                for sent in (b"", b"GET / HT", request, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
                    early = await RawClient.open(url_port(process.url))
                    if sent:
                        await early.stream.send_all(sent)
                    early.reset()
                await process.write(b"after the resets\n")
                assert await recv_text(good) == "after the resets"
            await stop(process)


BAD_FRAMES = {
    "invalid UTF-8 text": bytes([0x81, 0x82]) + bytes(4) + b"\xff\xfe",
    "unmasked": b"\x81\x02hi",
    "reserved opcode": bytes([0x83, 0x81]) + bytes(4) + b"x",
    "reserved bit": bytes([0xC1, 0x80]) + bytes(4),
    "continuation first": bytes([0x80, 0x81]) + bytes(4) + b"x",
    "fragmented ping": bytes([0x09, 0x80]) + bytes(4),
}


async def test_client_protocol_errors_end_only_that_connection() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as bystander:
                for name, frame in BAD_FRAMES.items():
                    bad = await RawClient.handshake(url_port(process.url))
                    try:
                        await seen_connected(process, bad.port)
                        await bad.stream.send_all(frame)
                        frames = await bad.read_until_gone()
                    finally:
                        await bad.aclose()
                    assert all(frame.opcode == CLOSE for frame in frames), (name, frames)
                    await process.read_stderr_until(
                        rf"client 127\.0\.0\.1:{bad.port} (closed|connection ended) "
                        r".*with 100[27]\b"
                    )
                    await echoes(bystander, f"unaffected by {name}")
            await stop(process)


async def test_invalid_utf8_from_a_client_gets_close_1007() -> None:
    """RFC 6455 7.1.7: the close frame first (protocol_errors.fix_close_handling)."""
    with trio.fail_after(10):
        async with running_command() as process:
            bad = await RawClient.handshake(url_port(process.url))
            try:
                await seen_connected(process, bad.port)
                await bad.stream.send_all(BAD_FRAMES["invalid UTF-8 text"])
                frames = await bad.read_until_gone()
            finally:
                await bad.aclose()
            assert [frame.close_code for frame in frames] == [1007]
            await stop(process)


async def test_plain_http_request_gets_the_page() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as bystander:
                http = await RawClient.open(url_port(process.url))
                try:
                    await http.stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    answer = await http.read_to_end()
                finally:
                    await http.aclose()
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                assert b"\r\nContent-Type: text/html; charset=utf-8\r\n" in answer
                assert answer.rstrip().endswith(b"</html>")
                await echoes(bystander, "unaffected")
                async with ws(process.url) as newcomer:
                    await echoes(newcomer, "still accepting")
            await stop(process)


@pytest.mark.parametrize(
    ("data", "exactly_400"),
    [
        (random.Random(1).randbytes(2048), False),
        (random.Random(2).randbytes(2048) + b"\r\n\r\n", False),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64), False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", False),
    ],
    ids=["random", "random-then-blank-line", "tls-hello", "upgrade-without-key", "bad-length"],
)
async def test_garbage_gets_400_or_is_dropped(data: bytes, exactly_400: bool) -> None:
    with trio.fail_after(10):
        async with running_command("--handshake-timeout", "0.5") as process:
            async with ws(process.url) as bystander:
                garbage = await RawClient.open(url_port(process.url))
                try:
                    await garbage.stream.send_all(data)
                    answer = await garbage.read_to_end()
                finally:
                    await garbage.aclose()
                if exactly_400 or answer:
                    assert answer.startswith(b"HTTP/1.1 400 "), answer
                await echoes(bystander, "unaffected")
                async with ws(process.url) as newcomer:
                    await echoes(newcomer, "still accepting")
            await stop(process)


@pytest.mark.parametrize(
    "sent", [b"", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"], ids=["nothing", "half-a-head"]
)
async def test_handshake_timeout_drops_an_unfinished_handshake(sent: bytes) -> None:
    with trio.fail_after(10):
        async with running_command("--handshake-timeout", "0.5") as process:
            async with ws(process.url) as bystander:
                idle = await RawClient.open(url_port(process.url))
                try:
                    started = trio.current_time()
                    await idle.stream.send_all(sent)
                    answer = await idle.read_to_end()
                    waited = trio.current_time() - started
                finally:
                    await idle.aclose()
                assert answer == b""
                assert 0.4 <= waited < 2.5
                await echoes(bystander, "unaffected")
            await stop(process)
