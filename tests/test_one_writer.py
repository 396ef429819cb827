"""One writer per connection, end to end: a slow client that talks gets whole frames only.

The client these tests play is an ordinary one on a bad day: its receive buffer
is tiny and it reads irregularly, so the server's writes to it often stop
mid-frame, while it sends pings and messages and answers the server's
keep-alive pings, so that pongs, echoes and pings are due on the same
connection at those moments. Every byte it receives goes through a strict
parser (:mod:`tests.wire`): a frame written inside another one fails
it at once. Each run is seeded, so a failure can be replayed.
"""

from __future__ import annotations

import random
import signal
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from .conftest import Process, running_command
from .wire import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    Frame,
    ServerFrameParser,
    masked_frame,
    upgrade_request,
)

LINE_SIZE = 2900
LINES_PER_TICK = 3
TICK = 0.012
"""About 0.7 MB/s of input: faster than the slow client reads, so it falls behind."""
FEED_LIMIT = 20_000
"""Lines written at most, whatever happens (about 80 s of feed)."""


def line(n: int) -> str:
    head = f"L{n:06d} "
    return head + "x" * (LINE_SIZE - len(head))


async def feed(process: Process, stop: trio.Event) -> None:
    """Write lines to the server's standard input at a steady pace until ``stop``."""
    n = 0
    while not stop.is_set() and n < FEED_LIMIT:
        batch = "".join(line(n + k) + "\n" for k in range(LINES_PER_TICK))
        n += LINES_PER_TICK
        try:
            await process.write(batch.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(TICK)


@dataclass
class Transcript:
    """What the slow talker sent and got; checked as it arrives."""

    rng: random.Random
    lines: int = 0
    last_line: int = -1
    echoes_expected: list[str] = field(default_factory=list)
    echoes: int = 0
    pings_sent: list[bytes] = field(default_factory=list)
    pongs: int = 0
    server_pings: int = 0
    close: Frame | None = None
    closing: bool = False
    """The client sent its close frame: it sends nothing more."""
    parser: ServerFrameParser = field(default_factory=ServerFrameParser)

    def check(self, frame: Frame) -> bytes | None:
        """Check one frame against what was sent; return the pong it calls for, if any."""
        if frame.opcode == TEXT:
            text = frame.text
            if text.startswith("L"):
                number = int(text[1:7])
                assert text == line(number), f"line {number} arrived altered"
                assert number > self.last_line, f"line {number} after line {self.last_line}"
                self.last_line = number
                self.lines += 1
            else:
                assert self.echoes < len(self.echoes_expected), f"unexpected text {text[:40]!r}"
                assert text == self.echoes_expected[self.echoes], "echoes out of order"
                self.echoes += 1
        elif frame.opcode == PONG:
            assert frame.payload in self.pings_sent[self.pongs :], f"stray pong {frame.payload!r}"
            self.pongs = self.pings_sent.index(frame.payload, self.pongs) + 1
        elif frame.opcode == PING:
            self.server_pings += 1
            return masked_frame(PONG, frame.payload)
        elif frame.opcode == CLOSE:
            self.close = frame
        else:
            assert frame.opcode != BINARY, "no binary message was sent"
        return None

    def close_code(self) -> int | None:
        """The code of the server's close frame, if one came."""
        return None if self.close is None else self.close.close_code

    def chatter(self) -> bytes:
        """A ping or a short text message, as a talkative client sends now and then."""
        n = len(self.pings_sent) + len(self.echoes_expected)
        if self.rng.random() < 0.5:
            self.pings_sent.append(b"p%d" % n)
            return masked_frame(PING, self.pings_sent[-1])
        self.echoes_expected.append(f"E{n:05d} " + "e" * self.rng.randrange(0, 80))
        return masked_frame(TEXT, self.echoes_expected[-1].encode())


@asynccontextmanager
async def slow_connection(port: int) -> AsyncIterator[trio.SocketStream]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    stream = trio.SocketStream(sock)
    try:
        await sock.connect(("127.0.0.1", port))
        await stream.send_all(upgrade_request(host=f"127.0.0.1:{port}"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(1)
            assert chunk, f"closed in the handshake: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


async def talk_while_reading(
    stream: trio.SocketStream, transcript: Transcript, stall: trio.Event | None = None
) -> None:
    """Read irregularly, parse strictly, chatter, answer pings; until the end of the stream.

    The reader alternates between catching up (large reads, no pauses) and
    lagging (small reads, short pauses) every few dozen reads, so that the
    server keeps switching between writing as lines arrive and writing a
    backlog, with its socket often full in the middle of a frame. Once
    ``stall`` is set, it only lags, and more: far slower than the feed.
    """
    rng = transcript.rng
    parser = transcript.parser
    reads_until_chatter = 3
    reads = 0
    while True:
        stalling = stall is not None and stall.is_set()
        lagging = stalling or (reads // 40) % 2 == 1
        reads += 1
        size = rng.choice((7, 100, 700, 1500) if lagging else (2900, 5000, 65536))
        try:
            data = await stream.receive_some(size)
        except trio.BrokenResourceError:
            data = b""  # a reset: the server dropped us, which it may
        if not data:
            return
        replies = [transcript.check(frame) for frame in parser.feed(data)]
        reads_until_chatter -= 1
        if reads_until_chatter == 0:
            reads_until_chatter = rng.randrange(1, 6)
            replies.append(transcript.chatter())
        if transcript.close is None and not transcript.closing:
            try:
                await stream.send_all(b"".join(reply for reply in replies if reply))
            except trio.BrokenResourceError:
                return  # the server dropped us (too slow, or going away), which it may
        if stalling:
            await trio.sleep(0.005)
        elif lagging and rng.random() < 0.5:
            await trio.sleep(rng.uniform(0, 0.004))


SEEDS = [1, 2, 3]


@pytest.mark.e2e
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_slow_client_that_talks_gets_whole_frames(seed: int) -> None:
    """Pongs, echoes and pings never land inside a broadcast frame (they used to).

    Then the client closes while it is still behind: the server's close reply
    follows whole frames (and the server does not hang on the way: it once
    spun forever when a close came while a backlog was being written).
    """
    # A ping must be answered within one interval, and this client reads slowly on
    # purpose, so a ping can wait behind a kernel buffer of frames: at 0.2 s a
    # loaded machine made the server drop it, correctly, for "no pong" (14 runs in
    # 15 with six busy loops on two cores; 0 in 12 at 1 s).
    args = ("--queue-size", "100000", "--on-full", "drop", "--ping-interval", "1")
    transcript = Transcript(random.Random(seed))
    with trio.fail_after(40):
        async with running_command(*args) as process, trio.open_nursery() as nursery:
            stop = trio.Event()
            async with slow_connection(int(process.url.rsplit(":", 1)[1].strip("/"))) as stream:
                nursery.start_soon(feed, process, stop)
                with trio.move_on_after(8):
                    await talk_while_reading(stream, transcript)
                assert transcript.close_code() is None
                await stream.send_all(masked_frame(CLOSE, struct.pack("!H", 1000)))
                transcript.closing = True
                await talk_while_reading(stream, transcript)
                stop.set()
            # The server still serves: a new client gets its handshake answered.
            async with slow_connection(int(process.url.rsplit(":", 1)[1].strip("/"))):
                pass
    # The run exercised what it claims to: lines, echoes, pongs and the server's pings.
    assert transcript.lines > 100, transcript
    assert transcript.echoes > 20, transcript
    assert transcript.pongs > 20, transcript
    assert transcript.server_pings > 3, transcript  # 7-8 in 8 s at 1 s
    assert transcript.close_code() == 1000, "no close reply, or not 1000"


async def _talk_then(
    process: Process, transcript: Transcript, act: trio.Event, *, stall: bool = False
) -> None:
    """Talk while reading until the server ends the connection; ``act`` is set after 3 s."""
    port = int(process.url.rsplit(":", 1)[1].strip("/"))
    stop = trio.Event()
    async with trio.open_nursery() as nursery, slow_connection(port) as stream:
        nursery.start_soon(feed, process, stop)
        nursery.start_soon(_set_after, act, 3)
        await talk_while_reading(stream, transcript, act if stall else None)
        stop.set()


async def _set_after(event: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    event.set()


@pytest.mark.e2e
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("why", ["shutdown", "cut_off"])
async def test_whole_frames_then_a_close(why: str, seed: int) -> None:
    """The server ends the connection mid-feed: whole frames, then the close frame
    after a whole frame (or no close frame at all, if the client cannot read it in time).

    ``shutdown``: SIGTERM after 3 s, 1001. ``cut_off``: after 3 s the client
    reads far slower than the feed until its queue is full, 1008.
    """
    queue, code = ("100000", 1001) if why == "shutdown" else ("150", 1008)
    on_full = "drop" if why == "shutdown" else "disconnect"
    args = ("--queue-size", queue, "--on-full", on_full, "--ping-interval", "0.2")
    transcript = Transcript(random.Random(seed))
    with trio.fail_after(30):
        async with running_command(*args) as process, trio.open_nursery() as nursery:
            act = trio.Event()
            if why == "shutdown":

                async def signal_when_due() -> None:
                    await act.wait()
                    process.process.send_signal(signal.SIGTERM)

                nursery.start_soon(signal_when_due)
            await _talk_then(process, transcript, act, stall=why == "cut_off")
            if why == "shutdown":
                assert await process.process.wait() == 0
            else:
                await process.read_stderr_until(r"client \S+ (closed|connection ended)")
    assert transcript.lines > (50 if why == "shutdown" else 0), transcript
    assert transcript.close_code() in (None, code), transcript.close


def test_close_code_helper() -> None:
    assert Frame(CLOSE, struct.pack("!H", 1001)).close_code == 1001
