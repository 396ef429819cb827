"""The limits, end to end: ``--max-clients`` and running out of file descriptors
(503), ``--max-message-size`` (1009, counted in UTF-8 bytes, also while the
client is still sending), fragmented messages and a fragment flood (1008), and
``--max-line-size`` for standard input.
"""

from __future__ import annotations

import struct

import pytest
import trio
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from .conftest import running_command
from .e2e import (
    echoes,
    local_port,
    recv_text,
    recv_texts,
    seen_connected,
    stop,
    url_port,
    ws,
)
from .wire import (
    BINARY,
    CLOSE,
    TEXT,
    ZERO_MASK,
    Frame,
    RawClient,
    masked_frame,
    upgrade_request,
)

pytestmark = pytest.mark.e2e


async def test_max_clients_refuses_the_next_handshake_with_503() -> None:
    with trio.fail_after(10):
        async with running_command("--max-clients", "2") as process:
            async with ws(process.url) as first, ws(process.url) as second:
                with pytest.raises(InvalidStatus) as refused:
                    async with ws(process.url):
                        pass
                assert refused.value.response.status_code == 503
                # Those connected are not affected.
                await process.write(b"for both\n")
                assert await recv_text(first) == "for both"
                assert await recv_text(second) == "for both"
                # A place frees up when a client leaves.
                leaving = local_port(first)
                await first.aclose()
                await process.read_stderr_until(
                    rf"client 127\.0\.0\.1:{leaving} (closed|connection ended)"
                )
                async with ws(process.url) as third:
                    await echoes(third, "a place was free")
            await stop(process)


async def test_out_of_file_descriptors_refuses_with_503_then_recovers() -> None:
    """Below ``ulimit -n``, the excess clients get a quick 503, not a hang.

    The log says why, the clients already in keep being served, and there is
    room again once some of them leave.
    """
    limit, attempts = 64, 100
    with trio.fail_after(30):
        async with running_command("--no-stdin", fd_limit=limit) as process:
            port = int(process.url.rsplit(":", 1)[1].rstrip("/"))
            accepted: list[RawClient] = []
            refusals: list[bytes] = []
            for _ in range(attempts):
                client = await RawClient.open(port)
                await client.stream.send_all(upgrade_request(host=f"127.0.0.1:{port}"))
                while b"\r\n\r\n" not in client.buffer:
                    assert await client.fill(), f"closed without an answer: {client.buffer!r}"
                if client.buffer.startswith(b"HTTP/1.1 101 "):
                    del client.buffer[: client.buffer.index(b"\r\n\r\n") + 4]
                    accepted.append(client)
                else:
                    refusals.append(await client.read_to_end())
                    await client.aclose()
            assert 0 < len(accepted) < limit
            assert len(refusals) == attempts - len(accepted)
            for answer in refusals:
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert b"out of file descriptors" in answer
            await process.read_stderr_until(rf"out of file descriptors \(ulimit -n {limit}, ")
            # Those in are still served: an echo goes through the last one in.
            await accepted[-1].send_frame(TEXT, b"still here")
            frame = await accepted[-1].read_frame()
            assert frame is not None
            assert frame.text == "still here"
            # Leave with a close handshake: the server's FIN comes when it has
            # closed the socket, so its descriptor is free again.
            leaving = accepted[:10]
            for client in leaving:
                await client.send_frame(CLOSE, struct.pack("!H", 1000))
                assert [f.opcode for f in await client.read_until_gone()] == [CLOSE]
                await client.aclose()
            newcomer = await RawClient.handshake(port)
            await newcomer.aclose()
            for client in accepted[10:]:
                await client.aclose()
            await stop(process)


@pytest.mark.parametrize(
    ("fits", "too_large"),
    [
        ("x" * 100, "y" * 101),
        (b"x" * 100, b"y" * 101),
        (["x" * 50, "x" * 50], ["y" * 60, "y" * 41]),
        ("é" * 50, "é" * 51),
        (["😀" * 12, "😀" * 13], ["😀" * 13, "😀" * 13]),
    ],
    ids=["text", "binary", "fragmented", "utf8", "utf8-fragmented"],
)
async def test_max_message_size_closes_with_1009(
    fits: str | bytes | list[str], too_large: str | bytes | list[str]
) -> None:
    with trio.fail_after(10):
        async with running_command("--max-message-size", "100") as process:
            async with ws(process.url) as client:
                await client.send(fits)
                assert await client.recv() == (
                    fits if not isinstance(fits, list) else "".join(fits)
                )
                # A fragmented message may be cut off while it is still being
                # sent: the close then surfaces from send() rather than recv().
                with pytest.raises(ConnectionClosedError) as closed:  # noqa: PT012
                    await client.send(too_large)
                    await client.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1009
            async with ws(process.url) as other:
                await echoes(other, "others are still served")
            await stop(process)


def message_frames(opcode: int, pieces: list[bytes], *, final: bool = True) -> bytes:
    """One message from a client, a frame per piece (continuations after the first).

    Masked with a zero key, which leaves the payload as it is. ``final=False``
    leaves the last frame unfinished too: the message goes on.
    """
    last = len(pieces) - 1
    return b"".join(
        masked_frame(0 if i else opcode, piece, ZERO_MASK, fin=final and i == last)
        for i, piece in enumerate(pieces)
    )


ASCII_100 = bytes(range(32, 127))[:100]


@pytest.mark.parametrize(
    ("args", "opcode", "pieces"),
    [
        ([], TEXT, [ASCII_100] * 1000),
        ([], TEXT, [bytes([b]) for b in ("é€😀a" * 300).encode()]),
        ([], BINARY, [bytes([b]) for b in bytes(range(256)) * 10]),
        (["--max-message-size", "1000"], TEXT, [b""] * 1014 + [b"x" * 100] * 10),
    ],
    ids=["1000x100-bytes", "utf8-cut-in-every-byte", "binary-1-byte", "1024-frames-1000-bytes"],
)
async def test_a_message_in_many_fragments_is_echoed_whole(
    args: list[str], opcode: int, pieces: list[bytes]
) -> None:
    """Fragments are joined into one message, echoed as one frame.

    Text may be cut inside a character. The last case is exactly at both
    limits: 1,000 bytes in 1,024 frames, the most a 1,000-byte limit allows.
    """
    with trio.fail_after(10):
        async with running_command(*args) as process:
            client = await RawClient.handshake(url_port(process.url))
            try:
                await client.stream.send_all(message_frames(opcode, pieces))
                frame = await client.read_frame()
            finally:
                await client.aclose()
            assert frame == Frame(opcode, b"".join(pieces))
            await stop(process)


@pytest.mark.parametrize(
    ("args", "piece", "bound"),
    [(["--max-message-size", "1000"], b"", 1024), ([], b"ab", 16384)],
    ids=["empty-frames-limit-1000", "2-byte-frames-default-limit"],
)
async def test_a_fragment_flood_is_refused_within_the_bound(
    args: list[str], piece: bytes, bound: int
) -> None:
    """A message still unfinished after its 1,024th fragment (or one per 64 bytes
    of the limit, if more) is refused with 1008 then and there: the client sends
    no frame more, and gets the close frame.

    Empty continuation frames did not count at all, and 2-byte ones only by
    their bytes: trio-websocket kept them all, one Python object each.
    """
    with trio.fail_after(15):
        async with running_command(*args) as process:
            async with ws(process.url) as bystander:
                flood = await RawClient.handshake(url_port(process.url))
                frames: list[Frame] = []
                try:
                    await seen_connected(process, flood.port)
                    await flood.stream.send_all(message_frames(TEXT, [piece] * bound, final=False))
                    with trio.move_on_after(5):
                        frames = await flood.read_until_gone()
                finally:
                    await flood.aclose()
                assert [frame.close_code for frame in frames] == [1008], frames
                assert frames[0].payload[2:] == f"message in more than {bound} fragments".encode()
                await process.read_stderr_until(
                    rf"client 127\.0\.0\.1:{flood.port} connection ended .*with 1008\b"
                )
                await echoes(bystander, "unaffected by the flood")
            await stop(process)


async def test_max_message_size_counts_utf8_bytes() -> None:
    """90,000 emoji are 90,000 characters but 360,000 bytes: over a 100,000-byte limit."""
    with trio.fail_after(10):
        async with running_command("--max-message-size", "100000") as process:
            async with ws(process.url, max_size=None) as client:
                await echoes(client, "😀" * 25000)  # 100,000 bytes: the limit
                with pytest.raises(ConnectionClosedError) as closed:  # noqa: PT012
                    await client.send("😀" * 90000)
                    await client.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009
            assert closed.value.rcvd.reason == "message over 100000 bytes"
            await stop(process)


async def test_a_refused_message_still_gets_its_close_frame_while_the_client_sends() -> None:
    """1009 while the rest of the message is still coming: the close frame, then EOF.

    Many clients (the ``websockets`` library among them) finish sending a
    message before they read again. The server refuses it long before its
    end; if it then closed at once, with the client's bytes unread, the
    client would get a reset and lose the close frame. It reads and discards
    what the client still sends (bounded) first.
    """
    with trio.fail_after(15):
        async with running_command("--max-message-size", "100000") as process:
            client = await RawClient.handshake(url_port(process.url))
            try:
                size = 3_000_000  # more than the socket buffers of both ends hold
                header = bytes([0x82, 0xFF]) + size.to_bytes(8, "big") + b"\0\0\0\0"
                await client.stream.send_all(header + b"\0" * size)
                frames = await client.read_until_gone()
            finally:
                await client.aclose()
            assert [frame.opcode for frame in frames] == [CLOSE], frames
            assert frames[0].close_code == 1009


async def test_max_line_size_skips_long_lines_with_one_warning_each() -> None:
    warning = "skipped a line of standard input longer than 10 bytes"
    with trio.fail_after(10):
        async with running_command("--max-line-size", "10") as process:
            async with ws(process.url) as client:
                await seen_connected(process, local_port(client))
                # Exactly 10 bytes passes, with or without the \r that is stripped.
                await process.write(b"0123456789\n0123456789\r\n" + b"x" * 11 + b"\nafter\n")
                assert await recv_texts(client, 3) == ["0123456789", "0123456789", "after"]
                await process.read_stderr_until(warning)
                # A long line arriving in pieces, and one much longer than the limit.
                await process.write(b"y" * 6)
                await process.write(b"y" * 6 + b"\r\n")
                await process.write(b"z" * 5000)
                await process.write(b"z" * 5000 + b"\nstill\nflowing\n")
                assert await recv_texts(client, 2) == ["still", "flowing"]
            stderr = await stop(process)
            assert stderr.count(warning) == 3, stderr
