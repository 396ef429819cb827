"""FrameStream with real tasks on a real socket pair: writers come, wait, get cancelled;
the peer reads at its own pace; every byte it gets belongs to a whole frame, in order.

The ordering itself is checked exhaustively without I/O in ``test_write_order``;
this is the other half: the waiting, the hand-over between tasks, cancellation,
the time limit, and TLS.
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import struct
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
import trio
import trio.testing
import trustme
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState

from trio_broadcast.frame_stream import TLS_WRITE_SIZE, FrameStream, WriteTimeout
from trio_broadcast.frames import encode_lines
from trio_broadcast.protocol_errors import IncompatibleWebSocket, check_compatible

from .conftest import budget, ws_client
from .test_frames import accepted_pair
from .test_request_handoff import tcp_connection
from .wire import CLOSE, PING, Frame, ServerFrameParser, reset


def control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


@asynccontextmanager
async def socket_pair(
    sndbuf: int = 4096,
) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A connected pair of Unix stream sockets; the first has a small send buffer."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    async with ours, peer:
        yield ours, peer


class Peer:
    """The client end: reads what it is told to, never waiting, and parses strictly."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.fd = stream.socket.fileno()
        self.parser = ServerFrameParser()
        self.frames: list[Frame] = []

    def read(self, size: int) -> bytes:
        """Take up to ``size`` bytes of what has arrived, without waiting."""
        try:
            data = os.read(self.fd, size)
        except BlockingIOError:
            return b""
        self.frames.extend(self.parser.feed(data))
        return data

    async def read_to_end(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            if not self.read(65536):
                return


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(1, 40)),
        st.tuples(st.just("write"), st.integers(1, 40)),
        st.tuples(st.just("echo"), st.integers(1, 4000)),
        st.tuples(st.just("ping"), st.integers(0, 0)),
        st.tuples(st.just("cancel"), st.integers(0, 0)),
        st.tuples(st.just("read"), st.integers(1, 20000)),
    ),
    max_size=40,
)


@budget(60)
@given(actions=ACTIONS, close=st.booleans())
def test_concurrent_writers_never_split_a_frame(
    actions: list[tuple[str, int]], close: bool
) -> None:
    trio.run(_run_writers, actions, close)


async def _run_writers(actions: list[tuple[str, int]], close: bool) -> None:  # noqa: PLR0912
    with trio.fail_after(10):
        async with socket_pair() as (ours, theirs), trio.open_nursery() as nursery:
            stream = FrameStream(ours, send_timeout=30)
            peer = Peer(theirs)
            data: list[bytes] = []  # payloads handed over as data, in order
            control: list[bytes] = []
            writers: list[trio.CancelScope] = []

            async def write(frames: list[bytes], scope: trio.CancelScope) -> None:
                with scope:
                    await stream.write(frames)

            async def send_all(frame: bytes, scope: trio.CancelScope) -> None:
                with scope:
                    await stream.send_all(frame)

            for n, (action, size) in enumerate(actions):
                scope = trio.CancelScope()
                if action == "offer":
                    texts = [f"offer {n}.{k} " + "o" * (size * 97 % 3000) for k in range(size)]
                    written = stream.offer(encode_lines(texts))
                    if written is not None:
                        data.extend(text.encode() for text in texts)
                    if written is False:  # what is left needs a writer, as _WAKE gives it
                        nursery.start_soon(write, [], scope)
                        writers.append(scope)
                elif action in ("write", "echo"):
                    count = size if action == "write" else 1
                    texts = [f"{action} {n}.{k} " + "w" * (size % 5000) for k in range(count)]
                    data.extend(text.encode() for text in texts)
                    nursery.start_soon(write, encode_lines(texts), scope)
                    writers.append(scope)
                elif action == "ping":
                    control.append(b"ping %d" % n)
                    nursery.start_soon(send_all, control_frame(PING, control[-1]), scope)
                elif action == "cancel" and writers:
                    writers.pop(0).cancel()  # a waiting writer (or one already done)
                elif action == "read":
                    peer.read(size)
                await trio.testing.wait_all_tasks_blocked()
            # Every writer still waiting is cancelled: what they handed over
            # stays with the stream, and a last writer finishes it.
            for scope in writers:
                scope.cancel()
            nursery.start_soon(peer.read_to_end)
            if close:
                await stream.send_all(control_frame(CLOSE, struct.pack("!H", 1000)))
            else:
                # Control frames go in order: once this one is out, all are.
                control.append(b"last")
                await stream.send_all(control_frame(PING, control[-1]))
                await stream.write()
            await ours.aclose()
    assert peer.parser.incomplete == 0
    got_control = [f.payload for f in peer.frames if f.opcode == PING]
    assert got_control == control
    got_data = [f.payload for f in peer.frames if f.opcode not in (PING, CLOSE)]
    if close:
        assert peer.frames[-1].opcode == CLOSE
        assert got_data == data[: len(got_data)]
    else:
        assert got_data == data


async def test_a_write_that_cannot_finish_breaks_the_stream() -> None:
    with trio.fail_after(5):
        async with socket_pair() as (ours, _theirs):
            stream = FrameStream(ours, send_timeout=0.2)
            big = encode_lines(["x" * 100_000])
            with pytest.raises(WriteTimeout):
                await stream.write(big)
            assert stream.broken
            assert stream.offer(encode_lines(["y"])) is None
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(control_frame(CLOSE, b""))


async def tls_over(
    ours: trio.abc.Stream, theirs: trio.abc.Stream
) -> tuple[trio.SSLStream[trio.abc.Stream], trio.SSLStream[trio.abc.Stream]]:
    """TLS over a connected pair, handshake done: (the server's end, the client's end)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = trio.SSLStream(ours, server_context, server_side=True)
    client = trio.SSLStream(theirs, client_context, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    return server, client


class Held:
    """Something a connection's frames hold, to see when they are freed."""


async def _receive_until_reset(stream: FrameStream, held: Held) -> trio.BrokenResourceError:
    """Read ``stream`` until its peer resets it, in a frame that holds ``held``."""
    assert held
    try:
        await stream.receive_some(100)
    except trio.BrokenResourceError as exc:
        return exc
    raise AssertionError("the reset did not break the stream")


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_a_reset_leaves_no_cycle_holding_the_connection(tls: bool) -> None:
    """Found on Python 3.12: a reset connection waited for a full garbage collection.

    trio raises ``BrokenResourceError`` ``from`` the ``OSError`` inside a
    context manager, and from 3.12 the ``OSError``'s traceback is part of a
    cycle that reaches up to the frame reading the socket
    (:mod:`trio_broadcast.error_cycles`). ``receive_some`` drops the causes'
    tracebacks; with the collector off, what the reading frame held is freed.
    """
    with trio.fail_after(5):
        async with tcp_connection() as (theirs, ours):
            transport: trio.abc.Stream = ours
            if tls:
                transport, _ = await tls_over(ours, theirs)
            reset(theirs)
            stream = FrameStream(transport, send_timeout=5)
            held = Held()
            gone = weakref.ref(held)
            gc.collect()
            gc.disable()
            try:
                error = await _receive_until_reset(stream, held)
                causes = []
                cause = error.__cause__
                while cause is not None:
                    causes.append(cause)
                    cause = cause.__cause__
                del error, cause, held
                assert gone() is None, "the reset's error kept the reading frame alive"
            finally:
                gc.enable()
    assert causes, "trio raised the reset from no cause"
    assert [cause.__traceback__ for cause in causes] == [None for _ in causes]


async def test_nothing_after_a_close_frame() -> None:
    with trio.fail_after(5):
        async with socket_pair() as (ours, theirs):
            stream = FrameStream(ours, send_timeout=5)
            await stream.send_all(control_frame(CLOSE, struct.pack("!H", 1001)))
            with pytest.raises(trio.ClosedResourceError, match="close frame"):
                await stream.write(encode_lines(["late"]))
            assert stream.offer(encode_lines(["late"])) is None
            await ours.aclose()
            peer = Peer(theirs)
            with trio.fail_after(5):
                await peer.read_to_end()
            assert [f.opcode for f in peer.frames] == [CLOSE]


async def test_tls_keeps_the_order_and_lets_control_in_between_writes() -> None:
    """Over TLS there is no non-blocking write: offer() declines, write() uses send_all
    of about TLS_WRITE_SIZE bytes of whole frames at a time, and a ping handed over
    during a write goes next, not after the whole batch."""
    lines = [f"line {n} " + "t" * 900 for n in range(400)]
    with trio.fail_after(5):
        async with socket_pair() as (ours, theirs):
            server, client = await tls_over(ours, theirs)
            stream = FrameStream(server, send_timeout=5)
            frames = encode_lines(lines)
            assert stream.offer(frames) is None
            parser = ServerFrameParser()
            received: list[Frame] = []

            async def read() -> None:
                while len(received) < len(lines) + 1:
                    received.extend(parser.feed(bytes(await client.receive_some(65536))))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.write, frames)
                await trio.testing.wait_all_tasks_blocked()  # the first write is stuck
                nursery.start_soon(stream.send_all, control_frame(PING, b"p"))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(read)
    opcodes = [f.opcode for f in received]
    assert opcodes.count(PING) == 1
    # At most one write of about TLS_WRITE_SIZE went ahead of it, not the batch.
    assert opcodes.index(PING) <= TLS_WRITE_SIZE // 900 + 1, opcodes.index(PING)
    assert [f.payload for f in received if f.opcode != PING] == [line.encode() for line in lines]


async def test_the_protocol_fixes_work_on_this_trio_websocket_release() -> None:
    """Fails loudly if an upgrade of trio-websocket changes the internals used."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            accepted, url = await accepted_pair(nursery)
            async with ws_client(url):
                check_compatible(await accepted.receive())
            nursery.cancel_scope.cancel()


async def test_waiting_for_room_waits_on_the_transport() -> None:
    """``wait_send_all_might_not_block`` is the transport's: no queue of ours is in the way."""
    with trio.fail_after(5):
        async with socket_pair() as (ours, _):
            stream = FrameStream(ours, send_timeout=5)
            await stream.wait_send_all_might_not_block()  # an empty socket has room


def test_a_changed_connection_is_refused_loudly() -> None:
    with pytest.raises(IncompatibleWebSocket, match="internals changed"):
        check_compatible(object())  # type: ignore[arg-type]


def _changed(change: str) -> object:
    """A stand-in for a trio-websocket connection whose wsproto has ``change``."""
    connection = Connection(ConnectionType.SERVER)
    if change == "state":
        connection._state = "OPEN"  # type: ignore[assignment]
    elif change == "parser":
        connection._proto._parse_more = None  # type: ignore[assignment]
    elif change == "extensions":
        connection._proto.extensions = ["permessage-deflate"]  # type: ignore[list-item]
    wsproto = SimpleNamespace(
        state=ConnectionState.OPEN,
        connection=SimpleNamespace(_proto=connection._proto, _state=ConnectionState.OPEN)
        if change == "connection"
        else connection,
    )
    return SimpleNamespace(_wsproto=wsproto)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("state", "state changed type"),
        ("connection", "connection changed type"),
        ("parser", "no longer a generator"),
        ("extensions", "extensions were negotiated"),
    ],
)
def test_each_changed_internal_is_named(change: str, message: str) -> None:
    with pytest.raises(IncompatibleWebSocket, match=message):
        check_compatible(_changed(change))  # type: ignore[arg-type]


def test_a_data_writer_behind_a_close_frame_gives_up() -> None:
    """A write waiting when a close frame is handed over fails; the close goes out.

    The close frame may come from trio-websocket while a data writer is the
    one writing (a slow client replies to our close, or sends its own). The
    writer's frames will never be written: it must raise, not loop. Run in a
    thread, because a loop that never yields would hang ``trio.fail_after`` too.
    """
    outcome: list[str] = []

    async def scenario() -> None:
        async with socket_pair() as (ours, theirs):
            stream = FrameStream(ours, send_timeout=10)
            peer = Peer(theirs)
            async with trio.open_nursery() as nursery:

                async def write_backlog() -> None:
                    with pytest.raises(trio.ClosedResourceError, match="close frame"):
                        await stream.write(encode_lines(["b" * 50_000, "more"]))
                    outcome.append("data writer gave up")

                nursery.start_soon(write_backlog)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(stream.send_all, control_frame(CLOSE, struct.pack("!H", 1000)))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(peer.read_to_end)
                await trio.testing.wait_all_tasks_blocked()
                await ours.aclose()
            outcome.append("closed")
            assert [f.opcode for f in peer.frames][-1] == CLOSE

    thread = threading.Thread(target=lambda: trio.run(scenario), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the writers never finished: a loop that does not yield"
    assert outcome == ["data writer gave up", "closed"]
