"""Unit tests of :mod:`trio_broadcast.client`: one client's race, without a server around it.

The server's end of a real loopback connection goes through trio-websocket's
handshake on a :class:`~trio_broadcast.frame_stream.FrameStream`, as
:mod:`trio_broadcast.connection` does it, and :func:`serve_client` then serves
it from a :class:`~trio_broadcast.fanout.Fanout` that the test publishes to
directly. The other end is a :class:`~tests.wire.RawClient`, which parses
strictly, so each test decides exactly what the peer does (read, stop reading,
answer pings or not, close) and checks the :class:`Report`: which side of the
race ended it, with which code, and what was counted.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from trio_websocket import CloseReason, WebSocketConnection, wrap_server_stream

from trio_broadcast import Config
from trio_broadcast.broadcast import Broadcast
from trio_broadcast.client import (
    FEED_ENDED,
    GOING_AWAY,
    STUCK,
    TOO_SLOW,
    Ending,
    Report,
    Wants,
    _closed_by_peer,
    serve_client,
)
from trio_broadcast.counters import Counters
from trio_broadcast.fanout import Fanout
from trio_broadcast.frame_stream import FrameStream
from trio_broadcast.frames import encode_lines
from trio_broadcast.keepalive import KeepAlive
from trio_broadcast.retention import History, Retention
from trio_broadcast.shutdown import Shutdown

from .conftest import wait_until
from .wire import CLOSE, PING, PONG, TEXT, RawClient


@dataclass
class Served:
    """One client being served: its raw end, and what the server side is made of."""

    client: RawClient
    fanout: Fanout[bytes]
    stop: Shutdown
    counters: Counters
    done: trio.Event = field(default_factory=trio.Event)
    report: Report | None = None

    async def ended(self) -> Report:
        await self.done.wait()
        assert self.report is not None
        return self.report

    async def close_handshake(self, code: int) -> None:
        """Read up to the server's close frame (it must have ``code``), then answer it."""
        while (frame := await self.client.read_frame()) is not None:
            if frame.opcode == CLOSE:
                assert frame.close_code == code, frame
                await self.client.send_frame(CLOSE, frame.payload[:2])
                return
        raise AssertionError("the connection ended without a close frame")


PLAIN = Wants()


@asynccontextmanager
async def serving(
    rcvbuf: int | None = None,
    *,
    wants: Wants = PLAIN,
    history: History | None = None,
    **settings: Any,
) -> AsyncIterator[Served]:
    """Accept one connection on 127.0.0.1 and serve it with ``Config(**settings)``.

    Yields once it is subscribed, or, for a v1 client (``wants``), once its
    task is blocked: waiting for ``history``, say.
    """
    config = Config(**settings)
    broadcast = Broadcast(config, history)
    fanout = broadcast.plain
    accepted: list[tuple[WebSocketConnection, FrameStream]] = []
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = int(listeners[0].socket.getsockname()[1])

        async def accept() -> None:
            stream = await listeners[0].accept()
            frames = FrameStream(stream, send_timeout=config.send_timeout)
            request = await wrap_server_stream(
                nursery, frames, max_message_size=config.max_message_size
            )
            accepted.append((await request.accept(), frames))

        nursery.start_soon(accept)
        client = await RawClient.handshake(port, rcvbuf=rcvbuf)
        await wait_until(lambda: bool(accepted))
        for listener in listeners:
            await listener.aclose()
        ws, frames = accepted[0]
        served = Served(client, fanout, Shutdown(), Counters())
        # As the server does: one keep-alive for all its clients, in its nursery.
        keepalive = KeepAlive(config.ping_interval, nursery) if config.ping_interval else None

        async def serve() -> None:
            async with frames.transport:  # as the server does: the connection's owner closes it
                served.report = await serve_client(
                    ws,
                    broadcast,
                    config,
                    wants=wants,
                    stop=served.stop,
                    stream=frames,
                    counters=served.counters,
                    keepalive=keepalive,
                )
            served.done.set()

        nursery.start_soon(serve)
        if wants.v1:
            await trio.testing.wait_all_tasks_blocked()
        else:
            await wait_until(lambda: fanout.subscribers == 1)
        try:
            yield served
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


def test_an_ending_says_who_closed_and_why() -> None:
    assert str(GOING_AWAY) == "closed with 1001 (server shutting down)"
    assert str(Ending(1000, "", by_peer=True)) == "connection ended with 1000"
    assert _closed_by_peer(None) == Ending(1006, "connection lost", by_peer=True)
    assert _closed_by_peer(CloseReason(1000, "bye")) == Ending(1000, "bye", by_peer=True)
    assert _closed_by_peer(CloseReason(1001, None)) == Ending(1001, "", by_peer=True)


async def test_broadcasts_and_echoes_arrive_and_are_counted() -> None:
    with trio.fail_after(10):
        async with serving(ping_interval=0) as served:
            frames = encode_lines(["first", "second"])
            served.fanout.publish(frames)
            for text in ("first", "second"):
                frame = await served.client.read_frame()
                assert frame is not None
                assert frame.text == text
            await served.client.send_frame(TEXT, b"echo me")
            frame = await served.client.read_frame()
            assert frame is not None
            assert frame.text == "echo me"
            await served.client.send_frame(CLOSE, struct.pack("!H", 1000) + b"bye")
            report = await served.ended()
            assert report == Report(Ending(1000, "bye", by_peer=True), sent=3, dropped=0)
            assert served.counters.delivered == 3
            assert served.counters.bytes_sent == sum(map(len, frames)) + 2 + len("echo me")


async def test_without_echo_messages_are_still_read() -> None:
    with trio.fail_after(10):
        async with serving(echo=False, ping_interval=0) as served:
            await served.client.send_frame(TEXT, b"not echoed")
            await served.client.send_frame(PING, b"behind it")
            frame = await served.client.read_frame()
            assert frame is not None
            assert (frame.opcode, frame.payload) == (PONG, b"behind it")
            served.fanout.publish(encode_lines(["a line"]))
            frame = await served.client.read_frame()
            assert frame is not None
            assert frame.text == "a line"
            assert served.counters.delivered == 1


async def test_the_stop_scope_closes_with_1001() -> None:
    with trio.fail_after(10):
        async with serving(ping_interval=0) as served:
            served.stop.request()
            await served.close_handshake(1001)
            assert (await served.ended()).ending == GOING_AWAY


class NeverReady(Retention):
    """A history that is never ready for a client that resumes (a Redis instance far behind)."""

    async def ready(self, since: str | None = None) -> None:
        await trio.sleep_forever()


async def test_the_stop_closes_a_v1_client_waiting_for_the_history_with_1001() -> None:
    with trio.fail_after(10):
        wants = Wants(v1=True, since="5")
        history = NeverReady(10, 1 << 20)
        async with serving(ping_interval=0, wants=wants, history=history) as served:
            served.stop.request()
            await served.close_handshake(1001)
            assert (await served.ended()).ending == GOING_AWAY


async def test_the_end_of_the_feed_closes_with_1000_after_the_last_line() -> None:
    with trio.fail_after(10):
        async with serving(ping_interval=0) as served:
            served.fanout.publish(encode_lines(["last"]))
            served.fanout.close()
            frame = await served.client.read_frame()
            assert frame is not None
            assert frame.text == "last"
            await served.close_handshake(1000)
            assert (await served.ended()).ending == FEED_ENDED


async def test_a_peer_that_does_not_answer_pings_is_dropped_without_a_close_frame() -> None:
    with trio.fail_after(10):
        async with serving(ping_interval=0.05) as served:
            frames = await served.client.read_until_gone()
            assert frames
            assert {frame.opcode for frame in frames} == {PING}
            report = await served.ended()
            assert report.ending == Ending(1006, "no pong within 0.05 s")


async def test_falling_behind_cuts_the_client_off_even_while_a_write_is_stuck() -> None:
    """The queue overflows while the client task waits on the socket: ``_cut_off`` wins."""
    line = "x" * 60_000
    with trio.fail_after(10):
        async with serving(
            rcvbuf=4096, queue_size=2, ping_interval=0, close_timeout=0.2
        ) as served:
            for _ in range(50):
                served.fanout.publish(encode_lines([line]))
                await trio.sleep(0)
                if served.done.is_set():
                    break
            report = await served.ended()
            assert report.ending == TOO_SLOW
            assert served.fanout.overflows == 1
            frames = await served.client.read_until_gone()
            assert all(frame.opcode in (TEXT, CLOSE) for frame in frames), frames
            assert all(frame.text == line for frame in frames if frame.opcode == TEXT)


async def test_a_write_that_never_finishes_ends_as_stuck() -> None:
    """Within ``send_timeout`` (no overflow: the queue holds everything): dropped, 1006."""
    line = "y" * 60_000
    with trio.fail_after(10):
        async with serving(
            rcvbuf=4096, queue_size=1000, ping_interval=0, send_timeout=0.3, close_timeout=0.2
        ) as served:
            for _ in range(20):
                served.fanout.publish(encode_lines([line]))
            report = await served.ended()
            assert report.ending == STUCK
            assert served.fanout.overflows == 0
            # Dropped with bytes unread: the reset may discard what was on its way.
            frames = await served.client.read_until_gone()
            assert all(frame.text == line for frame in frames)
