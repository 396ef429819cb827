"""End-to-end tests of the installed ``trio-broadcast`` command, against real clients.

Each test starts the command in a subprocess (``conftest.running_command``) and
talks to it over 127.0.0.1 with the independent ``websockets`` library's Trio
client, or with a hand-written raw-socket client where a test needs a peer that
misbehaves on purpose (never reads, never answers pings, vanishes with a TCP
reset, speaks plain HTTP or garbage). Every test is bounded by
``trio.fail_after`` and synchronises on events: a message received, a line seen
on the server's standard error, a connection closing, the process exiting.

What is covered:

* the broadcast: every standard-input line (``\\n``-split, one trailing ``\\r``
  stripped, empty lines kept) reaches every client, in order and promptly;
  invalid UTF-8 arrives as U+FFFD;
* the echo: back to the sender only, text as text and binary as binary, and
  ``--no-echo`` (messages still read: pings answered, broadcasts flowing);
* the end of input: the server keeps serving, or with ``--exit-on-eof`` it
  delivers every line, closes each client with 1000 and exits 0;
* the ``listening on`` line and ``--port 0``; ``--queue-size``, ``--on-full``,
  ``--history``, ``--max-clients``, ``--max-message-size``, ``--max-line-size``,
  ``--ping-interval``, ``--handshake-timeout``, ``--certfile``/``--keyfile``,
  ``--log-level``, ``--version`` (also as ``python -m trio_broadcast``) and bad
  option values;
* the log: hostile close reasons, request lines and headers leave every line
  with the server's prefix, printable and bounded; the token never appears in
  it, even at ``--log-level debug``;
* faults: a client that stops reading, one that vanishes, plain HTTP, garbage,
  a handshake that never completes, SIGINT/SIGTERM (and a second signal), a port
  in use, a privileged port, a bad certificate; standard input as a regular
  file, a FIFO, ``/dev/null``, closed, and a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.trio.client import ClientConnection, connect

import trio_broadcast

from .conftest import COMMAND, Process, running_command
from .wire import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    ZERO_MASK,
    Frame,
    RawClient,
    masked_frame,
    upgrade_request,
)

pytestmark = pytest.mark.e2e

PROG = "trio-broadcast"
CLOSE_TIMEOUT = trio_broadcast.Config().close_timeout


# --- helpers -------------------------------------------------------------------------


def ws(url: str, **options: Any) -> connect:
    """A ``websockets`` Trio client; it answers pings but never sends its own."""
    options.setdefault("ping_interval", None)
    return connect(url, proxy=None, open_timeout=5, close_timeout=2, **options)


def url_port(url: str) -> int:
    match = re.fullmatch(r"wss?://127\.0\.0\.1:(\d+)/", url)
    assert match, url
    return int(match[1])


def local_port(client: ClientConnection) -> int:
    return int(client.local_address[1])


async def recv_text(client: ClientConnection) -> str:
    message = await client.recv()
    assert isinstance(message, str), message
    return message


async def recv_texts(client: ClientConnection, count: int) -> list[str]:
    return [await recv_text(client) for _ in range(count)]


async def echoes(client: ClientConnection, message: str | bytes) -> None:
    """The client's message comes back unchanged, with its type."""
    await client.send(message)
    assert await client.recv() == message


async def seen_connected(process: Process, port: int) -> None:
    """The server logged the client from ``port`` as connected (so it is subscribed)."""
    await process.read_stderr_until(rf"client 127\.0\.0\.1:{port} connected")


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert ": ERROR:" not in stderr, stderr


async def stop(process: Process, signum: int = signal.SIGTERM) -> str:
    """Stop the server with a signal; it must exit 0 without a traceback. Its stderr."""
    process.process.send_signal(signum)
    code = await process.process.wait()
    stderr = await process.read_all_stderr()
    assert code == 0, stderr
    assert_clean(stderr)
    return stderr


async def exited(process: Process) -> tuple[int, str]:
    """Wait for the process to end by itself: its exit code and whole stderr."""
    code = await process.process.wait()
    return code, await process.read_all_stderr()


def lines_of(chunk: int, count: int = 20, width: int = 1000) -> list[str]:
    return [f"{chunk:04d}-{i:02d} " + "x" * width for i in range(count)]


async def feed_in_chunks(
    process: Process, reader: ClientConnection, chunks: int = 100
) -> list[str]:
    """Write ``chunks`` chunks of 20 lines of 1 KB; ``reader`` gets each chunk promptly."""
    sent: list[str] = []
    for chunk in range(chunks):
        lines = lines_of(chunk)
        await process.write(("\n".join(lines) + "\n").encode())
        with trio.fail_after(2):  # never held up by a slow client
            assert await recv_texts(reader, len(lines)) == lines
        sent += lines
    return sent


async def run_command(
    *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    """Run the command to completion with ARGS (no --host/--port added)."""
    return await trio.run_process(
        [*prefix, str(COMMAND), *args],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    """The single ``trio-broadcast: error: ...`` line, checked to be alone of its kind."""
    assert_clean(stderr)
    errors = [line for line in stderr.splitlines() if line.startswith(f"{PROG}: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@asynccontextmanager
async def started_command(
    *args: str, stdin: int | None, stderr: int | None = subprocess.PIPE, **options: Any
) -> AsyncIterator[Process]:
    """Like ``running_command`` with Popen ``options``; does not wait for the listening line."""
    process = await trio.lowlevel.open_process(
        [str(COMMAND), "--host", "127.0.0.1", "--port", "0", *args],
        stdin=stdin,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **options,
    )
    try:
        yield Process(process)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()
        if process.stderr is not None:
            await trio.aclose_forcefully(process.stderr)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            openssl,
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=False,
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {made.stderr.decode()[-300:]}")
    return str(cert), str(key)


# --- what it does ----------------------------------------------------------------------


async def test_listening_line_shows_the_real_port() -> None:
    with trio.fail_after(10):
        async with running_command("--port", "0") as process:
            match = await process.read_stderr_until(r"listening on ws://127\.0\.0\.1:(\d+)/")
            port = int(match[1])
            assert port != 0
            assert process.url == f"ws://127.0.0.1:{port}/"
            async with ws(f"ws://127.0.0.1:{port}/") as client:
                await echoes(client, "the port works")
            await stop(process)


async def test_stdin_lines_reach_every_client_in_order() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as first, ws(process.url) as second:
                await seen_connected(process, local_port(first))
                await seen_connected(process, local_port(second))
                # One line at a time: each arrives before anything else is written.
                for line in ("alpha", "beta", "gamma"):
                    await process.write(f"{line}\n".encode())
                    assert await recv_text(first) == line
                    assert await recv_text(second) == line
                # Splitting: \n ends a line, one trailing \r goes, empty lines stay.
                await process.write(b"one\r\n\ntwo\nin\rside\r\nkeeps one \r\r\n\n\nend\n")
                expected = ["one", "", "two", "in\rside", "keeps one \r", "", "", "end"]
                assert await recv_texts(first, len(expected)) == expected
                assert await recv_texts(second, len(expected)) == expected
                # Many lines, in order, to both.
                many = [f"line {i}" for i in range(500)]
                await process.write(("\n".join(many) + "\n").encode())
                assert await recv_texts(first, 500) == many
                assert await recv_texts(second, 500) == many
                # A line longer than any one read of the input arrives whole.
                long_line = "".join(f"{i:07d}" for i in range(30_000))
                await process.write(long_line.encode() + b"\nafter it\n")
                for client in (first, second):
                    assert await recv_texts(client, 2) == [long_line, "after it"]
            await stop(process)


async def test_echo_goes_back_to_the_sender_only_with_its_type() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as sender, ws(process.url) as other:
                await seen_connected(process, local_port(sender))
                await seen_connected(process, local_port(other))
                await sender.send("text stays text")
                assert await sender.recv() == "text stays text"
                await sender.send(b"\x00\xffbinary stays binary")
                echoed = await sender.recv()
                assert isinstance(echoed, bytes)
                assert echoed == b"\x00\xffbinary stays binary"
                await sender.send("")
                assert await sender.recv() == ""
                await sender.send(["one message ", "in three ", "fragments"])
                assert await sender.recv() == "one message in three fragments"
                # The echoes went out before this line was read; the other client
                # must see the line first, having been sent none of them.
                await process.write(b"broadcast\n")
                assert await recv_text(other) == "broadcast"
                assert await recv_text(sender) == "broadcast"
            await stop(process)


async def test_no_echo_still_reads_client_messages() -> None:
    with trio.fail_after(10):
        async with running_command("--no-echo") as process:
            async with ws(process.url) as client:
                await seen_connected(process, local_port(client))
                for message in ("not echoed", b"nor this", "x" * 100_000):
                    await client.send(message)
                # Messages are still read: a ping queued behind them is answered.
                pong = await client.ping()
                await pong.wait()
                await process.write(b"broadcast still arrives\n")
                assert await client.recv() == "broadcast still arrives"
                await client.send("and again")
                await (await client.ping()).wait()
                await process.write(b"second\n")
                assert await client.recv() == "second"
            await stop(process)


async def test_server_keeps_serving_after_end_of_input() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as before:
                await seen_connected(process, local_port(before))
                await process.write(b"last line\n")
                assert await recv_text(before) == "last line"
                await process.close_stdin()
                await process.read_stderr_until(r"end of input after 1 lines")
                await echoes(before, "still here")
                async with ws(process.url) as after:
                    await echoes(after, "connected after the end of input")
                    await echoes(after, b"\x01\x02")
                assert process.process.returncode is None
            await stop(process)


async def test_exit_on_eof_delivers_everything_then_closes_with_1000() -> None:
    with trio.fail_after(10):
        async with running_command("--exit-on-eof") as process:
            async with ws(process.url) as first, ws(process.url) as second:
                await seen_connected(process, local_port(first))
                await seen_connected(process, local_port(second))
                lines = [f"line {i} " + "y" * 200 for i in range(1000)]
                await process.write(("\n".join(lines) + "\nno newline at the end").encode())
                await process.close_stdin()
                for client in (first, second):
                    received = [message async for message in client]  # ends on 1000
                    assert received == [*lines, "no newline at the end"]
                    assert client.close_code == 1000
            code, stderr = await exited(process)
            assert code == 0, stderr
            assert_clean(stderr)


async def test_history_replays_the_last_lines_then_goes_live() -> None:
    with trio.fail_after(10):
        async with running_command("--history", "3") as process:
            async with ws(process.url) as early:
                await seen_connected(process, local_port(early))
                await process.write(b"a\nb\n")
                assert await recv_texts(early, 2) == ["a", "b"]
                # Fewer lines than --history so far: all of them.
                async with ws(process.url) as second:
                    await seen_connected(process, local_port(second))
                    await process.write(b"\n")
                    assert await recv_texts(second, 3) == ["a", "b", ""]
                await process.write(b"d\ne\n")
                assert await recv_texts(early, 3) == ["", "d", "e"]
                # More: the last three, then the live feed with no gap or duplicate.
                async with ws(process.url) as late:
                    await seen_connected(process, local_port(late))
                    await process.write(b"live\n")
                    assert await recv_texts(late, 4) == ["", "d", "e", "live"]
                    assert await recv_text(early) == "live"
            await stop(process)


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


async def test_tls_serves_wss(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(cafile=cert)
    with trio.fail_after(10):
        async with running_command(
            *("--certfile", cert, "--keyfile", key, "--handshake-timeout", "0.5")
        ) as process:
            assert process.url.startswith("wss://127.0.0.1:")
            async with ws(process.url, ssl=context) as client:
                await seen_connected(process, local_port(client))
                await process.write(b"over TLS\n")
                assert await recv_text(client) == "over TLS"
                await echoes(client, "echo over TLS")
                await echoes(client, b"\x00binary over TLS")
            # A client that does not trust the certificate is refused; the server goes on.
            with pytest.raises(trio.BrokenResourceError) as refused:
                async with ws(process.url, ssl=ssl.create_default_context()):
                    pass
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            # Plain HTTP, and a TCP connection that never starts TLS, are dropped.
            port = url_port(process.url)
            plain = await RawClient.open(port)
            idle = await RawClient.open(port)
            try:
                await plain.stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert await plain.read_to_end() == b""
                started = trio.current_time()
                assert await idle.read_to_end() == b""
                assert trio.current_time() - started < 2.5  # --handshake-timeout 0.5
            finally:
                await plain.aclose()
                await idle.aclose()
            async with ws(process.url, ssl=context) as client:
                await echoes(client, "still serving")
            await stop(process)


async def _connect_then_disconnect(process: Process) -> tuple[int, int]:
    """One client leaves by itself, one is closed by a SIGTERM; their ports."""
    async with ws(process.url) as leaving:
        await echoes(leaving, "hello")
        leaving_port = local_port(leaving)
    async with ws(process.url) as staying:
        await echoes(staying, "hello")
        staying_port = local_port(staying)
        process.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosedOK):
            await staying.recv()
        assert staying.close_code == 1001
    return leaving_port, staying_port


async def test_log_level_info_logs_each_connect_and_disconnect() -> None:
    with trio.fail_after(10):
        async with running_command("--log-level", "info") as process:
            leaving, staying = await _connect_then_disconnect(process)
            code, stderr = await exited(process)
            assert code == 0, stderr
            assert_clean(stderr)
            for port, closing in (
                (leaving, "connection ended with 1000"),
                (staying, "closed with 1001"),
            ):
                lines = [line for line in stderr.splitlines() if f"127.0.0.1:{port}" in line]
                assert len(lines) == 2, stderr
                assert re.search(rf"INFO: client 127\.0\.0\.1:{port} connected", lines[0])
                assert re.search(rf"INFO: client 127\.0\.0\.1:{port} {closing}\b", lines[1])


async def test_log_level_warning_logs_nothing_for_clients() -> None:
    with trio.fail_after(10):
        async with running_command("--log-level", "warning") as process:
            await _connect_then_disconnect(process)
            code, stderr = await exited(process)
            assert code == 0, stderr
            assert stderr.splitlines() == [f"{PROG}: listening on {process.url}"]


LOG_LINE = re.compile(rf"{PROG}: (listening on |(DEBUG|INFO|WARNING|ERROR|CRITICAL): )")
FORGED_REASON = "\r\nclient 1.2.3.4:5 connected (9 clients)\x1b]0;pwned\x07\x1b[2J\u2028\u202e"
HOSTILE_REQUESTS = [
    b"GET /\x1b[2J\r\nclient 1.2.3.4:5 connected (9 clients) HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Evil\x1b]0;pwned\x07: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 3000 + b"\x00\r\n\r\n",
    b"A" * 3000 + b" / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
]


async def refused(port: int, request: bytes) -> bytes:
    """Send ``request`` on a raw connection; the server's whole answer, a 4xx."""
    client = await RawClient.open(port)
    try:
        await client.stream.send_all(request)
        answer = await client.read_to_end()
    finally:
        await client.aclose()
    assert answer.startswith(b"HTTP/1.1 4"), answer
    return answer


def log_lines(stderr: str) -> list[str]:
    """The server's stderr, split on newlines only (not on U+2028 and the like)."""
    lines = stderr.split("\n")
    assert lines.pop() == "", "stderr does not end with a newline"
    return lines


async def test_client_text_cannot_forge_or_flood_log_lines() -> None:
    with trio.fail_after(10):
        async with running_command("--log-level", "debug") as process:
            port = url_port(process.url)
            client = await RawClient.handshake(port)
            try:
                await client.send_frame(CLOSE, struct.pack("!H", 1000) + FORGED_REASON.encode())
                frames = await client.read_until_gone()
            finally:
                await client.aclose()
            assert [frame.close_code for frame in frames] == [1000]
            await process.read_stderr_until(rf"client 127\.0\.0\.1:{client.port} connection ended")
            for request in HOSTILE_REQUESTS:
                await refused(port, request)
            stderr = await stop(process)
    for line in log_lines(stderr):
        assert LOG_LINE.match(line), ascii(line)
        assert line.isprintable(), ascii(line)
        assert len(line) <= 500, line[:300]
    reason = r"\r\nclient 1.2.3.4:5 connected (9 clients)\x1b]0;pwned\x07\x1b[2J\u2028\u202e"
    assert f"client 127.0.0.1:{client.port} connection ended with 1000 ({reason})" in stderr
    assert stderr.count(": DEBUG: bad request from 127.0.0.1:") == 3, stderr
    assert ": INFO: refused 127.0.0.1:" in stderr


async def test_the_token_never_reaches_the_log(tmp_path: Path) -> None:
    token = "s3cret-" + os.urandom(8).hex()
    (tmp_path / "token").write_text(token + "\n")
    upgrade = (
        "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    requests = [
        f"GET /?token={token}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /?x=1&%74oken={token}#\x1b HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer {token}\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization\x01: Token {token}\r\n\r\n",
        f"GET /?token={token} HTTP/1.1\r\n{upgrade}Origin: https://evil.example\r\n\r\n",
        f"POST /?token={token} HTTP/1.1\r\n{upgrade}Authorization: Bearer {token}\r\n\r\n",
    ]
    with trio.fail_after(10):
        async with running_command(
            *("--log-level", "debug", "--token-file", str(tmp_path / "token")),
            *("--allowed-origin", "https://a.example"),
        ) as process:
            for request in requests:
                await refused(url_port(process.url), request.encode())
            headers = {"Authorization": f"Bearer {token}"}
            async with ws(f"{process.url}?token={token}", additional_headers=headers) as client:
                await echoes(client, "let in")
            stderr = await stop(process)
    assert token not in stderr, stderr
    assert stderr.count(": DEBUG: bad request from 127.0.0.1:") == 4, stderr
    assert stderr.count(": INFO: refused 127.0.0.1:") == 2, stderr
    assert ": INFO: client 127.0.0.1:" in stderr, stderr


@pytest.mark.parametrize(
    "command",
    [[str(COMMAND)], [sys.executable, "-m", "trio_broadcast"]],
    ids=["command", "python-m"],
)
async def test_version(command: list[str]) -> None:
    with trio.fail_after(10):
        result = await trio.run_process(
            [*command, "--version"],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
        )
    assert result.stdout.decode() == f"{PROG} {trio_broadcast.__version__}\n"
    assert trio_broadcast.__version__ not in ("", "0+unknown")
    assert result.stderr == b""


BAD_OPTIONS = [
    (["--port", "65536"], "--port"),
    (["--port", "-1"], "--port"),
    (["--queue-size", "0"], "--queue-size"),
    (["--on-full", "block"], "--on-full"),
    (["--history", "-1"], "--history"),
    (["--max-clients", "many"], "--max-clients"),
    (["--max-message-size", "1.5"], "--max-message-size"),
    (["--max-line-size", "0"], "--max-line-size"),
    (["--ping-interval", "nan"], "--ping-interval"),
    (["--ping-interval", "-1"], "--ping-interval"),
    (["--handshake-timeout", "0"], "--handshake-timeout"),
    (["--log-level", "verbose"], "--log-level"),
    (["--certfile", "cert.pem"], "--keyfile"),
    (["--keyfile", "key.pem"], "--certfile"),
    (["--no-such-option"], "--no-such-option"),
]


async def test_bad_option_values_exit_2_with_one_clear_line() -> None:
    """Each case in its own process, all at once (each is mostly interpreter start-up)."""
    results: dict[int, subprocess.CompletedProcess[bytes]] = {}

    async def run_case(index: int, args: list[str]) -> None:
        results[index] = await run_command(*args)

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for index, (args, _) in enumerate(BAD_OPTIONS):
                nursery.start_soon(run_case, index, args)
    for index, (args, named) in enumerate(BAD_OPTIONS):
        result = results[index]
        stderr = result.stderr.decode()
        assert result.returncode == 2, (args, stderr)
        assert named in one_error_line(stderr), (args, stderr)
        assert stderr.splitlines()[-1].startswith(f"{PROG}: error:"), (args, stderr)
        assert "listening" not in stderr, args
        assert result.stdout == b"", args


# --- faults and bad input ------------------------------------------------------------------


async def test_invalid_utf8_arrives_as_replacement_characters() -> None:
    raw_lines = [
        b"ok\xff\xfebad",
        b"\xc3",
        b"truncated \xe2\x82",
        b"surrogate \xed\xa0\x80",
        b"overlong \xc0\xaf",
        b"caf\xc3\xa9 is fine",
    ]
    expected = [raw.decode("utf-8", errors="replace") for raw in raw_lines]
    assert all("\ufffd" in text for text in expected[:-1])
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as client:
                await seen_connected(process, local_port(client))
                await process.write(b"\n".join(raw_lines) + b"\n")
                assert await recv_texts(client, len(raw_lines)) == expected
                # A multi-byte character split across two writes is still one character.
                await process.write(b"split \xe2\x82")
                await process.write(b"\xac\n")
                assert await recv_text(client) == "split \u20ac"
                await echoes(client, "alive")
            assert process.process.returncode is None
            await stop(process)


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_signal_closes_every_client_with_1001(signum: signal.Signals) -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as first, ws(process.url) as second:
                # A third client never reads and never answers the close frame:
                # the server waits its close budget for it, then drops it. A TCP
                # connection still in the handshake must not delay the exit.
                silent = await RawClient.handshake(url_port(process.url))
                idle = await RawClient.open(url_port(process.url))
                try:
                    for port in (local_port(first), local_port(second), silent.port):
                        await seen_connected(process, port)
                    started = trio.current_time()
                    process.process.send_signal(signum)
                    for client in (first, second):
                        with pytest.raises(ConnectionClosedOK):
                            await client.recv()
                        assert client.close_code == 1001
                    code = await process.process.wait()
                    took = trio.current_time() - started
                    frames = await silent.read_until_gone()
                    assert await idle.read_to_end() == b""
                finally:
                    await silent.aclose()
                    await idle.aclose()
            stderr = await process.read_all_stderr()
            assert code == 0, stderr
            # The silent client's close budget was honoured, and the exit came within 2 s.
            assert CLOSE_TIMEOUT - 0.05 <= took < 2, took
            assert [frame.close_code for frame in frames] == [1001]
            assert f"{signum.name}: closing 3 clients" in stderr
            assert_clean(stderr)


async def test_signal_with_a_client_that_stopped_reading_still_exits_within_2_s() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as good:
                await seen_connected(process, local_port(good))
                stalled = await RawClient.handshake(url_port(process.url), rcvbuf=4096)
                try:
                    await seen_connected(process, stalled.port)
                    # Enough to leave a write stuck, not enough to overflow its queue.
                    await feed_in_chunks(process, good, chunks=8)
                    started = trio.current_time()
                    process.process.send_signal(signal.SIGTERM)
                    with pytest.raises(ConnectionClosedOK):
                        await good.recv()
                    assert good.close_code == 1001
                    code = await process.process.wait()
                    took = trio.current_time() - started
                finally:
                    await stalled.aclose()
            stderr = await process.read_all_stderr()
            assert code == 0, stderr
            assert took < 2, took
            assert "SIGTERM: closing 2 clients" in stderr
            assert_clean(stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_second_signal_exits_at_once(signum: signal.Signals) -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            silent = await RawClient.handshake(url_port(process.url))
            try:
                await seen_connected(process, silent.port)
                started = trio.current_time()
                process.process.send_signal(signum)
                # Two signals sent back to back may be merged into one: wait until
                # the first was taken.
                await process.read_stderr_until(rf"{signum.name}: closing 1 clients")
                process.process.send_signal(signum)
                code = await process.process.wait()
                took = trio.current_time() - started
            finally:
                await silent.aclose()
            stderr = await process.read_all_stderr()
            assert code == 128 + signum, stderr
            # The graceful path cannot end before the silent client's close budget.
            assert took < CLOSE_TIMEOUT - 0.05, took
            assert f"second {signum.name}: exiting at once" in stderr
            assert_clean(stderr)


async def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with trio.fail_after(10):
            async with running_command("--port", str(port), wait_listening=False) as process:
                code, stderr = await exited(process)
    assert code == 1, stderr
    assert stderr.splitlines() == [one_error_line(stderr)]
    assert f"127.0.0.1:{port}" in stderr
    assert "address already in use" in stderr


async def test_privileged_port_is_one_clear_line() -> None:
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is not available to drop privileges")
        prefix = (setpriv, "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service")
    with trio.fail_after(10):
        probe = await trio.run_process(
            [
                *prefix,
                sys.executable,
                "-c",
                "import socket; socket.socket().bind(('127.0.0.1', 80))",
            ],
            capture_stderr=True,
            check=False,
        )
        if b"PermissionError" not in probe.stderr:
            pytest.skip(f"binding port 80 is not refused here: {probe.stderr.decode()[-200:]}")
        result = await run_command("--host", "127.0.0.1", "--port", "80", prefix=prefix)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.splitlines() == [one_error_line(stderr)]
    assert "127.0.0.1:80" in stderr
    assert "permission denied" in stderr


@pytest.mark.parametrize("problem", ["missing", "not-pem"])
async def test_bad_certificate_is_one_clear_line(tmp_path: Path, problem: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if problem == "not-pem":
        cert.write_text("this is not a certificate\n")
        key.write_text("this is not a key\n")
    with trio.fail_after(10):
        result = await run_command(
            "--host", "127.0.0.1", "--port", "0", "--certfile", str(cert), "--keyfile", str(key)
        )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    line = one_error_line(stderr)
    assert stderr.splitlines() == [line]
    assert str(cert) in line
    if problem == "missing":
        assert "No such file or directory" in line


async def test_mismatched_key_is_one_clear_line(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, _ = certificate
    other_key = tmp_path / "other-key.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-out", str(other_key)],
        check=True,
        capture_output=True,
    )
    with trio.fail_after(10):
        result = await run_command(
            *("--host", "127.0.0.1", "--port", "0"),
            *("--certfile", cert, "--keyfile", str(other_key)),
        )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    line = one_error_line(stderr)
    assert stderr.splitlines() == [line]
    assert cert in line
    assert str(other_key) in line


async def test_missing_key_names_the_key(tmp_path: Path, certificate: tuple[str, str]) -> None:
    cert, _ = certificate
    missing_key = tmp_path / "no-such-key.pem"
    with trio.fail_after(10):
        result = await run_command(
            *("--host", "127.0.0.1", "--port", "0"),
            *("--certfile", cert, "--keyfile", str(missing_key)),
        )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    line = one_error_line(stderr)
    assert stderr.splitlines() == [line]
    assert str(missing_key) in line, line


# --- standard input of every kind ----------------------------------------------------------


async def test_stdin_regular_file_is_replayed_by_history(tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(b"one\r\ntwo\n\nbad \xff byte\nlast, no newline")
    expected = ["one", "two", "", "bad \ufffd byte", "last, no newline"]
    with path.open("rb") as source, trio.fail_after(10):
        async with running_command("--history", "10", stdin=source.fileno()) as process:
            await process.read_stderr_until(r"end of input after 5 lines")
            async with ws(process.url) as client:
                assert await recv_texts(client, 5) == expected
                await echoes(client, "still serving")
            await stop(process)


async def test_stdin_regular_file_with_exit_on_eof_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(10_000)))
    with path.open("rb") as source, trio.fail_after(10):
        async with running_command("--exit-on-eof", stdin=source.fileno()) as process:
            code, stderr = await exited(process)
    assert code == 0, stderr
    assert "end of input after 10000 lines" in stderr
    assert_clean(stderr)


async def test_stdin_fifo_with_exit_on_eof(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reading = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writing = os.open(fifo, os.O_WRONLY)
    os.set_blocking(reading, True)
    try:
        with trio.fail_after(10):
            async with running_command("--exit-on-eof", stdin=reading) as process:
                os.close(reading)
                reading = -1
                async with ws(process.url) as client:
                    await seen_connected(process, local_port(client))
                    os.write(writing, b"through\na fifo\n")
                    os.close(writing)
                    writing = -1
                    assert [message async for message in client] == ["through", "a fifo"]
                    assert client.close_code == 1000
                code, stderr = await exited(process)
        assert code == 0, stderr
        assert_clean(stderr)
    finally:
        for fd in (reading, writing):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("exit_on_eof", [False, True], ids=["serve", "exit-on-eof"])
async def test_stdin_dev_null(exit_on_eof: bool) -> None:
    args = ["--exit-on-eof"] if exit_on_eof else []
    with open(os.devnull, "rb") as devnull, trio.fail_after(10):
        async with running_command(*args, stdin=devnull.fileno()) as process:
            await process.read_stderr_until(r"end of input after 0 lines")
            if exit_on_eof:
                code, stderr = await exited(process)
                assert code == 0, stderr
                assert_clean(stderr)
            else:
                async with ws(process.url) as client:
                    await echoes(client, "input ended at once")
                await stop(process)


def _close_stdin() -> None:
    os.close(0)


@asynccontextmanager
async def command_with_stdin_closed(*args: str) -> AsyncIterator[Process]:
    async with started_command(*args, stdin=None, preexec_fn=_close_stdin) as process:
        match = await process.read_stderr_until(r"listening on (ws://\S+)")
        process.urls = [match[1]]
        yield process


async def test_stdin_closed_is_the_end_of_input() -> None:
    with trio.fail_after(10):
        async with command_with_stdin_closed() as process:
            await process.read_stderr_until(r"end of input after 0 lines")
            async with ws(process.url) as client:
                await echoes(client, "no input at all")
            await stop(process)
        async with command_with_stdin_closed("--exit-on-eof") as process:
            code, stderr = await exited(process)
            assert code == 0, stderr
            assert_clean(stderr)


async def test_stdin_closed_is_not_a_read_error() -> None:
    with trio.fail_after(10):
        async with command_with_stdin_closed("--exit-on-eof") as process:
            code, stderr = await exited(process)
    assert code == 0, stderr
    assert "end of input after 0 lines" in stderr
    assert "reading standard input failed" not in stderr, stderr


async def test_stdin_pseudo_terminal() -> None:
    master, slave = os.openpty()
    try:
        with trio.fail_after(10):
            async with running_command(stdin=slave) as process:
                async with ws(process.url) as client:
                    await seen_connected(process, local_port(client))
                    os.write(master, b"typed on a terminal\n")
                    assert await recv_text(client) == "typed on a terminal"
                    os.write(master, b"\xc3\xa9t\xc3\xa9\n\n")
                    assert await recv_texts(client, 2) == ["\xe9t\xe9", ""]
                    # The terminal's file description was left blocking.
                    assert os.get_blocking(slave)
                    port = local_port(client)
                # Log lines still appear after reading from the terminal.
                await process.read_stderr_until(rf"client 127\.0\.0\.1:{port} connection ended")
                # Hanging up the terminal ends the input, quietly.
                os.close(master)
                master = -1
                await process.read_stderr_until(r"end of input after 3 lines")
                async with ws(process.url) as client:
                    await echoes(client, "after the hang-up")
                stderr = await stop(process)
                assert "reading standard input failed" not in stderr
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)


async def test_stdin_and_stderr_on_the_same_pseudo_terminal() -> None:
    """Reading the terminal must not make writes to it (stderr) non-blocking."""
    master, slave = os.openpty()
    output = bytearray()
    terminal = trio.lowlevel.FdStream(os.dup(master))

    async def read_terminal_until(pattern: str) -> re.Match[str]:
        while not (match := re.search(pattern, output.decode(errors="replace"))):
            try:
                chunk = await terminal.receive_some()
            except trio.BrokenResourceError:  # EIO: every slave end is closed
                chunk = b""
            assert chunk, f"the terminal closed without {pattern!r}:\n{output.decode()}"
            output.extend(chunk)
        return match

    try:
        with trio.fail_after(10):
            async with started_command(stdin=slave, stderr=slave) as process:
                url = (await read_terminal_until(r"listening on (ws://\S+)\r?\n"))[1]
                async with ws(url) as client:
                    port = local_port(client)
                    await read_terminal_until(rf"client 127\.0\.0\.1:{port} connected")
                    os.write(master, b"hello from the tty\n")
                    assert await recv_text(client) == "hello from the tty"
                    flags = fcntl.fcntl(slave, fcntl.F_GETFL)
                    assert not flags & os.O_NONBLOCK, "stdin's O_NONBLOCK would reach stderr"
                    await echoes(client, "echo")
                await read_terminal_until(rf"client 127\.0\.0\.1:{port} connection ended")
                process.process.send_signal(signal.SIGTERM)
                await read_terminal_until(r"SIGTERM: closing 0 clients")
                assert await process.process.wait() == 0
                assert "Traceback" not in output.decode(errors="replace")
    finally:
        await trio.aclose_forcefully(terminal)
        os.close(slave)
        os.close(master)


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
