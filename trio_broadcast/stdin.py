"""Reading standard input without blocking the event loop, whatever it is.

File descriptor 0 may be a pipe, a terminal, a regular file, ``/dev/null``, or
not open at all, and no single way of reading serves them all:

* a pipe, FIFO or socket: :class:`trio.lowlevel.FdStream` on a duplicate of fd 0
  (it sets ``O_NONBLOCK`` on the pipe's file description, which nothing else is
  writing through);
* a terminal: wait until fd 0 is readable, then ``os.read`` it. ``FdStream``
  would set ``O_NONBLOCK`` on the terminal's file description, which is shared
  with stdout and stderr, and writes to stderr could then fail with ``EAGAIN``;
* a regular file or anything else (``epoll`` refuses regular files): ``os.read``
  in a worker thread, one large chunk per thread call;
* closed or absent: end of input at once.

:func:`read_lines` turns the chunks into lines with
:class:`~trio_broadcast.lines.LineSplitter` and hands each chunk's lines to
``publish`` as one batch.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Protocol

import trio

from .counters import Counters
from .lines import LineSplitter, Split
from .source import Publish

log = logging.getLogger("trio_broadcast")

CHUNK_SIZE = 64 * 1024


class _Reader(Protocol):
    async def read(self) -> bytes: ...
    def close(self) -> None: ...


class _StreamReader:
    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(os.dup(fd))

    async def read(self) -> bytes:
        return await self._stream.receive_some(CHUNK_SIZE)

    def close(self) -> None:
        self._stream.close()


class _TerminalReader:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def read(self) -> bytes:
        await trio.lowlevel.wait_readable(self._fd)
        return os.read(self._fd, CHUNK_SIZE)

    def close(self) -> None:
        pass


class _ThreadReader:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def read(self) -> bytes:
        return await trio.to_thread.run_sync(os.read, self._fd, CHUNK_SIZE, abandon_on_cancel=True)

    def close(self) -> None:
        pass


class _NothingReader:
    async def read(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    def close(self) -> None:
        pass


def open_reader(fd: int) -> _Reader:
    """Pick the way to read ``fd`` from what it is (see the module docstring)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return _NothingReader()
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return _StreamReader(fd)
    if os.isatty(fd):
        return _TerminalReader(fd)
    return _ThreadReader(fd)


async def read_lines(
    publish: Publish, *, max_line_size: int, fd: int = 0, counters: Counters | None = None
) -> None:
    """Publish the lines of ``fd`` batch by batch, until end of input.

    A line longer than ``max_line_size`` bytes is skipped with one warning and
    counted in ``counters``. A read error (a terminal hung up, say) is logged
    and ends the input like EOF.
    """
    splitter = LineSplitter(max_line_size)
    reader = open_reader(fd)
    try:
        while True:
            try:
                chunk = await reader.read()
            except (OSError, trio.BrokenResourceError) as exc:
                cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
                if not (isinstance(cause, OSError) and cause.errno == errno.EIO):
                    log.warning("reading standard input failed: %s; treating it as ended", cause)
                break
            if not chunk:
                break
            await _publish(publish, splitter.feed(chunk), max_line_size, counters)
    finally:
        reader.close()
    await _publish(publish, splitter.end(), max_line_size, counters)


async def _publish(
    publish: Publish, split: Split, max_line_size: int, counters: Counters | None
) -> None:
    if counters is not None:
        counters.lines_too_long += split.too_long
    for _ in range(split.too_long):
        log.warning("skipped a line of standard input longer than %d bytes", max_line_size)
    if split.lines:
        await publish(split.lines)
