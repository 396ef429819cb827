"""Standard input of every kind, end to end: a regular file, a FIFO, ``/dev/null``,
closed, and a pseudo-terminal (also shared with standard error).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from .conftest import Process, running_command
from .e2e import (
    assert_clean,
    echoes,
    exited,
    local_port,
    recv_text,
    recv_texts,
    seen_connected,
    started_command,
    stop,
    ws,
)

pytestmark = pytest.mark.e2e


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
