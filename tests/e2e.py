"""Helpers for the end-to-end tests of the installed command (``test_command_*.py``).

Each of those tests starts the command in a subprocess
(``conftest.running_command``) and talks to it over 127.0.0.1 with the
independent ``websockets`` library's Trio client (:func:`ws`), or with
:class:`~tests.wire.RawClient` where a test needs a peer that misbehaves on
purpose. Every test is bounded by ``trio.fail_after`` and synchronises on
events: a message received, a line seen on the server's standard error, a
connection closing, the process exiting.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from websockets.trio.client import ClientConnection, connect

import trio_broadcast

from .conftest import COMMAND, Process

PROG = "trio-broadcast"
CLOSE_TIMEOUT = trio_broadcast.Config().close_timeout


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
