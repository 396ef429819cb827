"""``--on-full wait``, end to end: a piped file reaches a slow client whole.

Under ``wait`` the server stops reading its standard input while a client's
queue is full, so a client that reads slowly gets every line, where
``disconnect`` closes it with 1008 (and may close a client that reads as fast
as it can, too); a client that never reads is closed with 1008 once
``--max-wait`` has passed, while a client that keeps up gets every line. The
warning that the feed waits, and ``/metrics``, say what happened.
"""

from __future__ import annotations

import contextlib
import re

import httpx
import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection

from .conftest import Process, running_command
from .e2e import exited, lines_of, local_port, recv_text, seen_connected, stop, url_port, ws
from .wire import CLOSE, Frame, RawClient

pytestmark = pytest.mark.e2e

WAITS = r"WARNING: the feed waits for \d+ slow clients?, at most"


def the_file(chunks: int = 50) -> list[str]:
    """1,000 lines of 1 KB: far more than the queue and the socket buffers hold."""
    return [line for chunk in range(chunks) for line in lines_of(chunk)]


async def pipe_in(process: Process, lines: list[str]) -> None:
    """Write ``lines`` to the server's standard input, then close it (``cat file |``)."""
    await process.write("".join(line + "\n" for line in lines).encode())
    await process.close_stdin()


async def read_lines(client: ClientConnection, count: int, into: list[str]) -> None:
    """Read up to ``count`` lines into ``into``; stop early if the server closes."""
    with contextlib.suppress(ConnectionClosed):
        for _ in range(count):
            into.append(await recv_text(client))


@pytest.mark.parametrize("on_full", ["wait", "disconnect"])
async def test_a_slow_reader_gets_the_whole_file_only_under_wait(on_full: str) -> None:
    lines = the_file()
    args = ("--on-full", on_full, "--max-wait", "30", "--queue-size", "2", "--exit-on-eof")
    with trio.fail_after(30):
        async with running_command(*args) as process:
            async with ws(process.url, max_size=None) as good:
                await seen_connected(process, local_port(good))
                slow = await RawClient.handshake(url_port(process.url), rcvbuf=4096)
                try:
                    await seen_connected(process, slow.port)
                    got: list[str] = []
                    frames: list[Frame] = []

                    async def read_slowly() -> None:
                        frames.extend(await slow.read_until_gone())

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(read_lines, good, len(lines), got)
                        nursery.start_soon(pipe_in, process, lines)
                        # The slow client reads nothing until the server had to
                        # do something about it: wait for room, or cut it off.
                        if on_full == "wait":
                            await process.read_stderr_until(WAITS)
                        else:
                            await process.read_stderr_until(
                                rf":{slow.port} closed with 1008 \(too slow"
                            )
                        nursery.start_soon(read_slowly)
                finally:
                    await slow.aclose()
            code, stderr = await exited(process)
            assert code == 0, stderr
        assert frames
        closing = frames.pop()
        texts = [frame.text for frame in frames]
        if on_full == "wait":
            assert got == lines
            assert texts == lines
            assert closing.opcode == CLOSE
            assert closing.close_code == 1000
            assert "1008" not in stderr
        else:
            # Even a client that reads as fast as it can may not keep up with a
            # pipe read flat out: it too may be cut off.
            assert got == lines[: len(got)]
            assert len(texts) < len(lines)
            assert texts == lines[: len(texts)]
            if closing.opcode == CLOSE:
                assert closing.close_code == 1008


async def test_a_client_that_never_reads_is_cut_off_after_max_wait() -> None:
    lines = the_file()
    max_wait = 1.0
    args = ("--on-full", "wait", "--max-wait", str(max_wait), "--queue-size", "2")
    with trio.fail_after(30):
        async with running_command(*args) as process:
            async with ws(process.url, max_size=None) as good:
                await seen_connected(process, local_port(good))
                stuck = await RawClient.handshake(url_port(process.url), rcvbuf=4096)
                try:
                    await seen_connected(process, stuck.port)
                    began = trio.current_time()
                    got: list[str] = []
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(read_lines, good, len(lines), got)
                        await process.write("".join(line + "\n" for line in lines).encode())
                    assert got == lines  # every line, stuck client or not
                    await process.read_stderr_until(WAITS)
                    await process.read_stderr_until(
                        rf"client 127\.0\.0\.1:{stuck.port} closed with 1008 \(too slow"
                    )
                    # It could not have been cut off before the wait ran out.
                    assert trio.current_time() - began >= max_wait
                    await process.write(b"after\n")
                    assert await recv_text(good) == "after"
                    metrics = await scrape(process.url)
                finally:
                    await stuck.aclose()
            await stop(process)
        assert metrics["trio_broadcast_slow_disconnects_total"] == 1
        # The wait that ran out, and maybe short ones for the good client.
        assert max_wait <= metrics["trio_broadcast_input_wait_seconds_total"] < max_wait + 5


async def scrape(url: str) -> dict[str, float]:
    """The server's ``/metrics``, as name to value (samples without labels)."""
    http_url = url.replace("ws://", "http://") + "metrics"
    async with httpx.AsyncClient() as client:
        response = await client.get(http_url)
    assert response.status_code == 200
    return {
        match[1]: float(match[2])
        for match in re.finditer(r"^(\w+) (\S+)$", response.text, re.MULTILINE)
    }
