"""A resumed backlog shares the server with everyone else (found by the resume storm).

``bench/faults.py``'s resume storm resets 1,000 ``trio-broadcast.v1`` clients at
once and has them all resume with ``?since=``: the reconnections took 23 s, and
479 clients came back too late for the retention and got a gap notice. Each
resumed backlog went out in one step that never yielded: the retention answers
at once, and a chunk the socket takes is written at once, so while one client
caught up on thousands of lines, no other client, handshake or input line was
served. Here one client resumes over a real loopback connection whose buffers
take the whole backlog, while another task counts the times it gets to run.
"""

from __future__ import annotations

import socket

import trio

from trio_broadcast.client import BACKLOG_CHUNK, _Opening, _Sender
from trio_broadcast.counters import Counters
from trio_broadcast.fanout import Fanout
from trio_broadcast.frame_stream import FrameStream
from trio_broadcast.retention import Retention

from .wire import TEXT, RawClient

CHUNKS = 4
BUFFER = 1 << 20
"""Socket buffers asked for on both ends (the kernel may give less): the backlog,
about 55 KB, must fit, so that no write has to wait for the reader."""


async def test_other_tasks_run_between_the_chunks_of_a_resumed_backlog() -> None:
    retention = Retention(10_000, 1 << 24, epoch="e")
    lines = [""] * (CHUNKS * BACKLOG_CHUNK)
    retention.extend(lines, [2] * len(lines))
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = int(listeners[0].socket.getsockname()[1])
        client = await RawClient.open(port, rcvbuf=BUFFER)
        server_side = await listeners[0].accept()
        await listeners[0].aclose()
        server_side.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        stream = FrameStream(server_side, send_timeout=5.0)
        sender = _Sender(stream, Counters(), v1=True)
        subscription = Fanout[bytes]().subscribe(join=False)
        opening = _Opening(retention, retention.id(0), 0, subscription)
        ticks = 0

        async def other_task() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            while not ticks:
                await trio.lowlevel.checkpoint()
            before = ticks
            assert await opening.send(sender) is None
            ran = ticks - before
            nursery.cancel_scope.cancel()

        frames = [await client.read_frame() for _ in range(1 + len(lines))]
        await client.aclose()
        await server_side.aclose()
    assert all(frame is not None and frame.opcode == TEXT for frame in frames)
    last = frames[-1]
    assert last is not None
    assert f'"id":"e:{len(lines)}"' in last.text
    assert ran >= CHUNKS - 1, f"another task ran {ran} times while {CHUNKS} chunks went out"
