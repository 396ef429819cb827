"""Unit tests of :mod:`trio_broadcast.stdin`: each kind of file descriptor, read in-process.

:func:`open_reader` picks how to read from what the descriptor is, and
:func:`read_lines` publishes its lines batch by batch until the end of input:
a pipe and a socket (read as they arrive, and cancellable, the duplicate
closed after), a regular file and ``/dev/null`` (in a thread), a closed
descriptor (the end at once), a pseudo-terminal (left blocking; a hang-up ends
it quietly), and one that fails to read (a warning, then the end). The
command's own standard input is covered end to end in
``test_command_stdin.py``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from trio_broadcast.counters import Counters
from trio_broadcast.stdin import (
    _NothingReader,
    _StreamReader,
    _TerminalReader,
    _ThreadReader,
    open_reader,
    read_lines,
)

from .conftest import wait_until


class Published:
    """A ``publish`` that keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def __call__(self, lines: Sequence[str], ids: Sequence[str] | None = None) -> None:
        self.batches.append(list(lines))

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def reader_kind(fd: int) -> type[object]:
    """The kind of reader :func:`open_reader` picks for ``fd`` (closed at once)."""
    reader = open_reader(fd)
    reader.close()
    return type(reader)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("kind", ["pipe", "socket"])
async def test_a_pipe_or_socket_is_read_as_it_arrives(kind: str) -> None:
    if kind == "pipe":
        reading, writing = os.pipe()
    else:
        ours, theirs = socket.socketpair()
        reading, writing = ours.detach(), theirs.detach()
    published = Published()
    try:
        assert reader_kind(reading) is _StreamReader
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: read_lines(published, max_line_size=100, fd=reading))
                os.write(writing, b"one\ntwo\n")
                await wait_until(lambda: published.batches == [["one", "two"]])
                os.write(writing, b"three\r\nno newline at the end")
                await wait_until(lambda: len(published.batches) == 2)
                os.close(writing)
                writing = -1
        assert published.batches == [["one", "two"], ["three"], ["no newline at the end"]]
    finally:
        os.close(reading)
        if writing >= 0:
            os.close(writing)


async def test_cancelling_a_pipe_read_closes_the_duplicate() -> None:
    reading, writing = os.pipe()
    before = open_fds()
    try:
        with trio.fail_after(5):
            with trio.move_on_after(0.05) as waited:
                await read_lines(Published(), max_line_size=100, fd=reading)
            assert waited.cancelled_caught
        assert open_fds() == before
    finally:
        os.close(reading)
        os.close(writing)


async def test_a_regular_file_is_read_in_a_thread_long_lines_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "input"
    path.write_bytes(b"short\n" + b"x" * 11 + b"\n0123456789\nbad \xff\n" + b"y" * 5000)
    counters = Counters()
    published = Published()
    with path.open("rb") as file, trio.fail_after(5):
        assert reader_kind(file.fileno()) is _ThreadReader
        await read_lines(published, max_line_size=10, fd=file.fileno(), counters=counters)
    assert published.lines == ["short", "0123456789", "bad \ufffd"]
    assert counters.lines_too_long == 2
    assert warnings(caplog) == ["skipped a line of standard input longer than 10 bytes"] * 2


async def test_dev_null_is_the_end_at_once() -> None:
    published = Published()
    with open(os.devnull, "rb") as devnull, trio.fail_after(5):
        assert reader_kind(devnull.fileno()) is _ThreadReader
        await read_lines(published, max_line_size=10, fd=devnull.fileno())
    assert published.batches == []


async def test_a_closed_descriptor_is_the_end_at_once(caplog: pytest.LogCaptureFixture) -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    published = Published()
    assert reader_kind(fd) is _NothingReader
    with trio.fail_after(5):
        await read_lines(published, max_line_size=10, fd=fd)
    assert published.batches == []
    assert warnings(caplog) == []


async def test_a_terminal_is_left_blocking_and_a_hang_up_ends_it_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    master, slave = os.openpty()
    published = Published()
    try:
        assert reader_kind(slave) is _TerminalReader
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: read_lines(published, max_line_size=100, fd=slave))
                os.write(master, b"typed\n")
                await wait_until(lambda: published.lines == ["typed"])
                assert os.get_blocking(slave)
                os.close(master)
                master = -1
        assert published.lines == ["typed"]
        assert warnings(caplog) == []
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)


async def test_a_read_error_is_a_warning_then_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: read() fails with EISDIR
    published = Published()
    try:
        with trio.fail_after(5):
            await read_lines(published, max_line_size=10, fd=fd)
    finally:
        os.close(fd)
    assert published.batches == []
    [warning] = warnings(caplog)
    assert warning.startswith("reading standard input failed: [Errno 21] ")
    assert warning.endswith("; treating it as ended")
