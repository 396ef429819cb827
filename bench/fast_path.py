#!/usr/bin/env python3
"""What one delivery costs on the publisher's fast path, against a reference (``nox -s bench``
does not run it; it is for changes to the hot path).

    python bench/fast_path.py [--deliveries N] [--only one-writer|reference]

Hands a 64-byte frame to an idle client ``N`` times, the way the fan-out does
while a client keeps up, over a Unix socket pair that is drained every 100
deliveries, and prints the time per delivery for:

* ``one-writer``: the server's own path, ``client._Sender.deliver_nowait`` over
  a :class:`~trio_broadcast.frame_stream.FrameStream`;
* ``reference``: the fast path as it was before the one-writer change (join,
  check trio-websocket's close reason and stream lock, ``os.write``, count),
  kept here as the yardstick: the least a fast path can do, without the one
  writer's guarantees.

Times are noisy on a shared machine; instruction counts are not. For those,
run each alone under callgrind, twice, and take the difference, so that
start-up cancels out::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/fast_path.py --only one-writer --deliveries 10000
    (the same with 30000; then (I30000 - I10000) / 20000 instructions per delivery)
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable

import trio

from trio_broadcast.client import _Sender
from trio_broadcast.counters import Counters
from trio_broadcast.frame_stream import FrameStream
from trio_broadcast.frames import encode_lines


class _Reference:
    """The fast path before the one-writer change, minus the trio-websocket connection."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._close_reason: object = None
        self._stream_lock = trio.StrictFIFOLock()
        self._counters = Counters()
        self.sent = 0

    def _write_nowait(self, data: bytes) -> int:
        if self._close_reason is not None:
            raise RuntimeError("closed")
        if self._fd < 0 or self._stream_lock.locked():
            return 0
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def deliver_nowait(self, frames: tuple[bytes, ...]) -> tuple[bytes, ...]:
        data = b"".join(frames)
        written = self._write_nowait(data)
        if written == 0:
            return frames
        self.sent += len(frames)
        self._counters.count_frames(len(frames), len(data))
        return () if written == len(data) else (data[written:],)


def _time(
    deliver: Callable[[tuple[bytes, ...]], tuple[bytes, ...]], peer: socket.socket, n: int
) -> float:
    frames = tuple(encode_lines(["x" * 64]))
    started = time.perf_counter()
    for i in range(n):
        deliver(frames)
        if i % 100 == 0:
            try:
                while peer.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
    return (time.perf_counter() - started) / n


async def main(deliveries: int, only: str | None) -> None:
    for name in ("reference", "one-writer"):
        if only not in (None, name):
            continue
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        with ours, peer:
            if name == "reference":
                deliver = _Reference(ours.fileno()).deliver_nowait
            else:
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
                deliver = _Sender(FrameStream(stream, send_timeout=5), Counters()).deliver_nowait
            seconds = _time(deliver, peer, deliveries)
        print(f"{name:>10}: {seconds * 1e6:.2f} us per delivery ({deliveries:,} deliveries)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=300_000)
    parser.add_argument("--only", choices=("one-writer", "reference"))
    args = parser.parse_args()
    trio.run(main, args.deliveries, args.only)
