"""Shared test helpers: servers started in-process, and the installed command.

Every test bounds itself with ``trio.fail_after`` and synchronises on events
(a line received, a log line printed), never on sleeps.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypothesis import settings
from hypothesis.errors import InvalidArgument
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_broadcast import Config, Publish, Server, serve

from .wire import command_beside_python

COMMAND = command_beside_python()
"""The command of this Python's environment (never one on PATH: the tests run this checkout)."""

# Hypothesis: each property runs the examples its @budget names, which keeps the
# default suite fast. HYPOTHESIS_PROFILE=long runs every property 5000 times
# instead, to shake out rare cases:
#     HYPOTHESIS_PROFILE=long pytest tests/test_lines.py tests/test_fanout.py
# Any other profile registered with Hypothesis works the same way.
try:
    settings.get_profile("long")
except InvalidArgument:
    settings.register_profile("long", max_examples=5000)


def budget(max_examples: int) -> settings:
    """Settings for one property: ``max_examples`` examples, or the selected profile's.

    No deadline: Hypothesis times an example only after it has ended, so a
    deadline cannot catch a hang (``trio.fail_after`` does, in the async
    tests), and on a busy machine one slow example would fail as flaky.
    """
    profile = os.environ.get("HYPOTHESIS_PROFILE")
    if profile:
        return settings(settings.get_profile(profile), deadline=None)
    return settings(max_examples=max_examples, deadline=None)


class LineFeed:
    """A line source for in-process servers, driven by the test.

    ``await feed.send("a", "b")`` publishes one batch; ``feed.end()`` ends the input.
    """

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Sequence[str]](100)

    async def send(self, *lines: str) -> None:
        await self._send.send(lines)

    def end(self) -> None:
        self._send.close()

    async def __call__(self, publish: Publish) -> None:
        async for batch in self._receive:
            await publish(batch)


@asynccontextmanager
async def running_server(source: LineFeed | None = None, **settings: Any) -> AsyncIterator[Server]:
    """Serve on 127.0.0.1 and a free port; hard-stop on leaving."""
    config = Config(host="127.0.0.1", port=0, **settings)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config, source)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def ws_client(url: str, **options: Any) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket's client, making sure its socket is closed on the way out.

    trio-websocket 0.12's client leaves its TCP socket open when the *server*
    started the close (its ``aclose()`` returns early once a close reason is
    set, and only server connections close the stream), which shows up as a
    ResourceWarning. Close it here, through the one private attribute we touch.
    """
    async with open_websocket_url(url, **options) as ws:
        try:
            yield ws
        finally:
            await trio.aclose_forcefully(ws._stream)


async def wait_until(predicate: Any, what: str = "condition") -> None:
    """Wait for ``predicate()`` to become true, re-checking after each scheduling round.

    For state that has no event of its own (a counter in the server); the
    caller's ``fail_after`` bounds it.
    """
    while not predicate():
        await trio.sleep(0.001)


class Process:
    """The installed ``trio-broadcast`` command, running in a subprocess."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = bytearray()
        self.urls: list[str] = []

    @property
    def url(self) -> str:
        return self.urls[0]

    async def read_stderr_until(self, pattern: str, count: int = 1) -> re.Match[str]:
        """Read stderr until ``pattern`` matches ``count`` lines; the caller bounds the time.

        Returns the ``count``-th match.
        """
        assert self.process.stderr is not None
        regex = re.compile(pattern)
        while True:
            lines = self.stderr.decode(errors="replace").splitlines()
            matches = [m for m in map(regex.search, lines) if m]
            if len(matches) >= count:
                return matches[count - 1]
            chunk = await self.process.stderr.receive_some()
            if not chunk:
                raise AssertionError(
                    f"stderr ended without {pattern!r}:\n{self.stderr.decode(errors='replace')}"
                )
            self.stderr += chunk

    async def read_all_stderr(self) -> str:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.stderr += chunk
        return self.stderr.decode(errors="replace")

    async def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(data)

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()


@asynccontextmanager
async def running_command(
    *args: str, stdin: int | None = -1, wait_listening: bool = True, fd_limit: int | None = None
) -> AsyncIterator[Process]:
    """Start ``trio-broadcast --host 127.0.0.1 --port 0 ARGS`` with piped stdin and stderr.

    ``stdin=-1`` gives a pipe (``process.write``); pass a file descriptor to use
    that instead. ``fd_limit`` lowers the command's ``ulimit -n``. On leaving,
    the process is killed if it is still running.
    """
    command = [str(COMMAND), "--host", "127.0.0.1", "--port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def limit_descriptors() -> None:
        if fd_limit is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))

    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.PIPE if stdin == -1 else stdin,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=limit_descriptors,
    )
    running = Process(process)
    try:
        if wait_listening:
            with trio.fail_after(10):
                match = await running.read_stderr_until(r"listening on (wss?://\S+)")
            running.urls = re.findall(r"listening on (wss?://\S+)", running.stderr.decode())
            assert match
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()
        for stream in (process.stdin, process.stderr):
            if stream is not None:
                await trio.aclose_forcefully(stream)
