"""Slow clients, end to end: one that stops reading is cut off without delaying
the others; ``--queue-size`` lets it catch up; ``--on-full drop`` skips lines
for it but keeps it; and the keep-alive: ``--ping-interval`` drops a peer that
does not answer pings, and ``0`` sends none.
"""

from __future__ import annotations

import itertools

import pytest
import trio

from .conftest import running_command
from .e2e import (
    echoes,
    feed_in_chunks,
    local_port,
    recv_text,
    seen_connected,
    stop,
    url_port,
    ws,
)
from .wire import CLOSE, PING, PONG, RawClient

pytestmark = pytest.mark.e2e


async def test_client_that_stops_reading_is_cut_off_without_delaying_others() -> None:
    with trio.fail_after(15):
        async with running_command() as process:
            async with ws(process.url) as good:
                await seen_connected(process, local_port(good))
                stalled = await RawClient.handshake(url_port(process.url), rcvbuf=4096)
                try:
                    await seen_connected(process, stalled.port)
                    sent = await feed_in_chunks(process, good)  # 2000 lines of 1 KB
                    # The queue overflowed long ago (16 batches); the close budget is 1 s.
                    with trio.fail_after(2):
                        await process.read_stderr_until(
                            rf"client 127\.0\.0\.1:{stalled.port} closed with 1008 \(too slow"
                        )
                    frames = await stalled.read_until_gone()  # the connection is gone
                    if frames and frames[-1].opcode == CLOSE:
                        assert frames.pop().close_code == 1008
                    texts = [frame.text for frame in frames]
                    assert len(texts) < len(sent)
                    assert texts == sent[: len(texts)]
                finally:
                    await stalled.aclose()
                await echoes(good, "unaffected")
            await stop(process)


async def test_queue_size_lets_a_slow_client_catch_up() -> None:
    with trio.fail_after(15):
        async with running_command("--queue-size", "5000") as process:
            async with ws(process.url) as good:
                await seen_connected(process, local_port(good))
                slow = await RawClient.handshake(url_port(process.url), rcvbuf=4096)
                try:
                    await seen_connected(process, slow.port)
                    sent = await feed_in_chunks(process, good)
                    # Its queue held everything: it now reads every line, in order.
                    for line in sent:
                        frame = await slow.read_frame()
                        assert frame is not None
                        assert frame.text == line
                    await process.write(b"live again\n")
                    assert await recv_text(good) == "live again"
                    frame = await slow.read_frame()
                    assert frame is not None
                    assert frame.text == "live again"
                finally:
                    await slow.aclose()
            stderr = await stop(process)
            assert f"127.0.0.1:{slow.port} connection ended" in stderr


async def test_on_full_drop_skips_lines_for_a_slow_client_but_keeps_it() -> None:
    with trio.fail_after(15):
        async with running_command("--on-full", "drop", "--queue-size", "2") as process:
            async with ws(process.url) as good:
                await seen_connected(process, local_port(good))
                slow = await RawClient.handshake(url_port(process.url), rcvbuf=4096)
                try:
                    await seen_connected(process, slow.port)
                    sent = await feed_in_chunks(process, good)
                    await process.read_stderr_until(r"WARNING: dropped \d+ messages for slow")
                    # It catches up, then gets the live feed again: keep publishing
                    # markers until one reaches it.
                    received: list[str] = []
                    caught_up = trio.Event()

                    async def drain() -> None:
                        while not caught_up.is_set():
                            frame = await slow.read_frame()
                            assert frame is not None, "the slow client was disconnected"
                            received.append(frame.text)
                            if frame.text.startswith("marker"):
                                caught_up.set()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(drain)
                        for n in itertools.count():
                            await process.write(f"marker {n}\n".encode())
                            assert await recv_text(good) == f"marker {n}"
                            with trio.move_on_after(0.05):
                                await caught_up.wait()
                            if caught_up.is_set():
                                break
                    lines = [text for text in received if not text.startswith("marker")]
                    assert 0 < len(lines) < len(sent)
                    position = {line: index for index, line in enumerate(sent)}
                    indices = [position[line] for line in lines]
                    assert indices == sorted(set(indices)), "out of order or duplicated"
                finally:
                    await slow.aclose()
            stderr = await stop(process)
            closing = [
                line for line in stderr.splitlines() if f":{slow.port} connection ended" in line
            ]
            assert len(closing) == 1, stderr
            assert "connection ended" in closing[0]
            assert "dropped" in closing[0]


async def test_unanswered_pings_drop_the_client_and_answered_ones_do_not() -> None:
    with trio.fail_after(10):
        async with running_command("--ping-interval", "0.2") as process:
            port = url_port(process.url)
            answering = await RawClient.handshake(port)
            silent = await RawClient.handshake(port)
            try:
                await seen_connected(process, answering.port)
                await seen_connected(process, silent.port)
                pings = 0
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(silent.read_until_gone)
                    while pings < 4:  # more than enough time for the silent one to go
                        frame = await answering.read_frame()
                        assert frame is not None
                        assert frame.opcode == PING, frame
                        pings += 1
                        await answering.send_frame(PONG, frame.payload)
                await process.read_stderr_until(
                    rf"client 127\.0\.0\.1:{silent.port} closed with 1006 \(no pong"
                )
                # The one that answers is still served.
                await process.write(b"still connected\n")
                while (frame := await answering.read_frame()) is not None:
                    if frame.opcode == PING:
                        await answering.send_frame(PONG, frame.payload)
                    else:
                        assert frame.text == "still connected"
                        break
                assert frame is not None
            finally:
                await answering.aclose()
                await silent.aclose()
            await stop(process)


async def test_ping_interval_zero_sends_no_pings() -> None:
    with trio.fail_after(10):
        async with running_command("--ping-interval", "0") as process:
            silent = await RawClient.handshake(url_port(process.url))
            try:
                await seen_connected(process, silent.port)
                # Absence can only be watched over a window: three times the
                # interval with which the previous test sees four pings.
                with trio.move_on_after(0.6):
                    frame = await silent.read_frame()
                    pytest.fail(f"unexpected frame with --ping-interval 0: {frame}")
                await process.write(b"still connected\n")
                frame = await silent.read_frame()
                assert frame is not None
                assert frame.text == "still connected"
            finally:
                await silent.aclose()
            await stop(process)
