"""The server in-process: real sockets on 127.0.0.1, real clients.

Well-behaved clients are trio-websocket's; misbehaving ones are raw TCP sockets
that do exactly the wrong thing each test needs (never read, never answer a
ping, send garbage). Every test is bounded by ``trio.fail_after``, and no test
may leave an error in the server's log.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import socket
import ssl
import struct
from collections.abc import Iterator

import pytest
import trio
import trustme
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)
from wsproto.frame_protocol import FrameProtocol

from trio_broadcast import Config, OnFull, Server, StartupError, serve
from trio_broadcast.broadcast import Broadcast
from trio_broadcast.protocol_errors import fix_close_handling
from trio_broadcast.shutdown import Shutdown

from .conftest import LineFeed, running_server, wait_until, ws_client
from .wire import RawClient, reset, upgrade_request


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="trio_broadcast")
    yield
    gc.collect()  # report a leaked socket against the test that leaked it
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def receive_n(ws: WebSocketConnection, count: int) -> list[str | bytes]:
    return [await ws.get_message() for _ in range(count)]


async def close_code(ws: WebSocketConnection) -> int:
    """Read until the server closes; return its close code."""
    with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 - read until it raises
        while True:
            await ws.get_message()
    assert closed.value.reason is not None
    return closed.value.reason.code


async def raw_connect(server: Server, *, rcvbuf: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", server.port))
    return trio.SocketStream(sock)


async def read_head(stream: trio.SocketStream) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        received += chunk
    return received


async def raw_websocket(server: Server, *, rcvbuf: int | None = None) -> trio.SocketStream:
    """A client that completes the handshake by hand and then does only what the test says."""
    stream = await raw_connect(server, rcvbuf=rcvbuf)
    await stream.send_all(upgrade_request())
    assert (await read_head(stream)).startswith(b"HTTP/1.1 101")
    return stream


# --- broadcast and echo -------------------------------------------------------


async def test_lines_reach_every_client_in_order() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with (
            running_server(feed) as server,
            ws_client(server.urls[0]) as a,
            ws_client(server.urls[0] + "any/path?x=1") as b,
        ):
            await wait_until(lambda: server.clients == 2)
            await feed.send("one", "", "three")
            await feed.send("four")
            assert await receive_n(a, 4) == ["one", "", "three", "four"]
            assert await receive_n(b, 4) == ["one", "", "three", "four"]


async def test_echo_keeps_the_type_and_goes_to_the_sender_only() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with (
            running_server(feed) as server,
            ws_client(server.urls[0]) as a,
            ws_client(server.urls[0]) as b,
        ):
            await a.send_message("text")
            await a.send_message(b"\x00\xffbinary")
            assert await receive_n(a, 2) == ["text", b"\x00\xffbinary"]
            await feed.send("after")
            # b's first message is the broadcast, so it got no echo of a's.
            assert await b.get_message() == "after"
            assert await a.get_message() == "after"


async def test_no_echo_still_reads_and_answers_pings() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with (
            running_server(feed, echo=False) as server,
            ws_client(server.urls[0]) as ws,
        ):
            for _ in range(5):  # more than trio-websocket's one-message queue
                await ws.send_message("ignored")
            await ws.ping()
            await feed.send("broadcast")
            assert await ws.get_message() == "broadcast"


async def test_a_burst_larger_than_the_queue_reaches_a_prompt_client() -> None:
    feed = LineFeed()
    lines = [f"line {i}" for i in range(2000)]
    with trio.fail_after(10):
        async with (
            running_server(feed, queue_size=1) as server,
            ws_client(server.urls[0]) as ws,
        ):
            await wait_until(lambda: server.clients == 1)
            await feed.send(*lines)
            assert await receive_n(ws, len(lines)) == lines


async def test_history_then_live_feed_without_gap() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed, history=3) as server:
            await feed.send("a", "b", "c", "d")
            await wait_until(lambda: server.statistics().lines_read == 4)
            async with ws_client(server.urls[0]) as ws:
                await feed.send("e")
                assert await receive_n(ws, 4) == ["b", "c", "d", "e"]


# --- slow, stuck and vanished clients -----------------------------------------


async def test_a_client_that_never_reads_is_cut_off_and_delays_nobody() -> None:
    feed = LineFeed()
    line = "x" * 1000
    with trio.fail_after(15):
        async with running_server(feed, queue_size=4, send_timeout=30) as server:
            stuck = await raw_websocket(server, rcvbuf=4096)
            async with ws_client(server.urls[0]) as ws:
                await wait_until(lambda: server.clients == 2)
                for i in range(300):
                    await feed.send(f"{i} {line}")
                    assert await ws.get_message() == f"{i} {line}"
                assert server.statistics().slow_disconnects == 1
                await wait_until(lambda: server.clients == 1)
            await stuck.aclose()


async def test_drop_policy_skips_messages_for_the_slow_client_only() -> None:
    feed = LineFeed()
    line = "y" * 1000
    with trio.fail_after(15):
        async with running_server(
            feed, queue_size=2, on_full=OnFull.DROP, send_timeout=0.5
        ) as server:
            stuck = await raw_websocket(server, rcvbuf=4096)
            async with ws_client(server.urls[0]) as ws:
                await wait_until(lambda: server.clients == 2)
                for i in range(300):
                    await feed.send(f"{i} {line}")
                    assert await ws.get_message() == f"{i} {line}"
                assert server.statistics().dropped > 0
                assert server.statistics().slow_disconnects == 0
                # The stuck write is bounded by send_timeout: the connection is dropped.
                await wait_until(lambda: server.clients == 1)
            await stuck.aclose()


async def test_a_client_reset_mid_broadcast_leaves_others_unaffected() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed) as server:
            doomed = await raw_websocket(server)
            async with ws_client(server.urls[0]) as ws:
                await wait_until(lambda: server.clients == 2)
                await feed.send(*(f"{i}" for i in range(100)))
                reset(doomed)
                await feed.send(*(f"{i}" for i in range(100, 300)))
                assert await receive_n(ws, 300) == [f"{i}" for i in range(300)]
                await wait_until(lambda: server.clients == 1)


async def test_a_peer_that_stops_answering_pings_is_dropped() -> None:
    with trio.fail_after(10):
        async with running_server(ping_interval=0.1) as server:
            half_open = await raw_websocket(server)
            async with ws_client(server.urls[0]) as ws:
                await wait_until(lambda: server.clients == 2)
                # trio-websocket answers pings; the raw socket does not.
                await wait_until(lambda: server.clients == 1)
                await ws.send_message("still here")
                assert await ws.get_message() == "still here"
            assert await half_open.receive_some() != b""  # the unanswered pings
            await half_open.aclose()


async def test_an_oversized_message_closes_with_1009() -> None:
    with trio.fail_after(10):
        async with (
            running_server(max_message_size=100) as server,
            ws_client(server.urls[0]) as ws,
        ):
            await ws.send_message("z" * 101)
            assert await close_code(ws) == 1009


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes([0x81, 0x82]) + bytes(4) + b"\xff\xfe", 1007),
        (b"\x81\x02hi", 1002),
        (bytes([0x83, 0x81]) + bytes(4) + b"x", 1002),
        (bytes([0x88, 0x82]) + bytes(4) + struct.pack("!H", 999), 1002),
    ],
    ids=["invalid-utf8", "unmasked", "reserved-opcode", "bad-close-code"],
)
async def test_a_protocol_error_gets_a_close_frame_with_its_code(frame: bytes, code: int) -> None:
    """wsproto reports the error as a close in state OPEN; the server still answers it.

    The frame follows the 101 at once, before the client's task may have
    started: the server installs the fix on the request, before accepting.
    """
    with trio.fail_after(10):
        async with running_server() as server:
            stream = await raw_websocket(server)
            await stream.send_all(frame)
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
            await stream.aclose()
            # One unmasked close frame, then the end of the connection.
            assert received[0] == 0x88, received
            assert received[1] == len(received) - 2, received
            assert struct.unpack("!H", received[2:4]) == (code,)
            await wait_until(lambda: server.clients == 0)


@pytest.mark.parametrize(
    "late",
    [bytes([0x89, 0x80]) + bytes(4), bytes([0x88, 0x82]) + bytes(4) + struct.pack("!H", 1000)],
    ids=["ping", "close"],
)
async def test_nothing_is_answered_after_refusing_a_fragment_flood(late: bytes) -> None:
    """A frame after the refused fragment, in the same read, gets no answer and no error.

    After its 1008 close frame the server is in wsproto's CLOSED state, where
    answering a ping raises in trio-websocket's reader (when the reader gets
    to it before the client's task has ended: not every run), so nothing
    after the refusal is passed on to it.
    """
    flood = bytes([0x01, 0x80]) + bytes(4) + (bytes([0x00, 0x80]) + bytes(4)) * 1023
    with trio.fail_after(10):
        async with running_server(max_message_size=100) as server:
            stream = await raw_websocket(server)
            await stream.send_all(flood + late)
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
            await wait_until(lambda: server.statistics().connections == 0)
            await stream.aclose()
            reason = b"message in more than 1024 fragments"
            assert received == bytes([0x88, 2 + len(reason)]) + struct.pack("!H", 1008) + reason


async def test_fix_close_handling_on_the_request_covers_the_first_frame() -> None:
    """Installed before the 101, no frame can be parsed without it; a second call is a no-op."""

    async def handler(request: WebSocketRequest) -> None:
        fix_close_handling(request, max_message_size=100)
        ws = await request.accept()
        fix_close_handling(ws, max_message_size=100)
        with pytest.raises(ConnectionClosed):
            await ws.get_message()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(upgrade_request())
            assert (await read_head(stream)).startswith(b"HTTP/1.1 101")
            await stream.send_all(bytes([0x81, 0x82]) + bytes(4) + b"\xff\xfe")
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
            await stream.aclose()
            assert received[:4] == b"\x88" + bytes([len(received) - 2]) + b"\x03\xef"  # 1007
            nursery.cancel_scope.cancel()


# --- the handshake ------------------------------------------------------------


async def http_exchange(server: Server, request: bytes) -> bytes:
    stream = await raw_connect(server)
    await stream.send_all(request)
    received = b""
    while chunk := await stream.receive_some():
        received += chunk
    await stream.aclose()
    return received


async def test_plain_http_gets_an_answer_and_garbage_gets_400() -> None:
    with trio.fail_after(10):
        async with running_server() as server:
            answer = await http_exchange(server, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 404 ")
            assert (await http_exchange(server, b"\x16\x03\x01garbage\r\n\r\n")).startswith(
                b"HTTP/1.1 400 "
            )
            async with ws_client(server.urls[0]) as ws:
                await ws.send_message("alive")
                assert await ws.get_message() == "alive"


async def test_a_bad_upgrade_request_gets_400() -> None:
    with trio.fail_after(10):
        async with running_server() as server:
            no_key = upgrade_request().replace(b"Sec-WebSocket-Key", b"X-Nothing")
            assert (await http_exchange(server, no_key)).startswith(b"HTTP/1.1 400 ")
            post = upgrade_request().replace(b"GET", b"POST")
            assert (await http_exchange(server, post)).startswith(b"HTTP/1.1 400 ")


async def test_an_oversized_request_head_gets_431() -> None:
    with trio.fail_after(10):
        async with running_server(max_request_head=1024) as server:
            request = upgrade_request().replace(
                b"\r\n\r\n", b"\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
            )
            assert (await http_exchange(server, request)).startswith(b"HTTP/1.1 431 ")


async def test_a_handshake_in_small_pieces_works() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed) as server:
            stream = await raw_connect(server)
            request = upgrade_request()
            for i in range(0, len(request), 7):
                await stream.send_all(request[i : i + 7])
            assert (await read_head(stream)).startswith(b"HTTP/1.1 101")
            await feed.send("hi")
            assert await stream.receive_some() == b"\x81\x02hi"
            await stream.aclose()


async def test_a_connection_that_never_handshakes_is_dropped() -> None:
    with trio.fail_after(10):
        async with running_server(handshake_timeout=0.2) as server:
            idle = await raw_connect(server)
            await wait_until(lambda: server.statistics().connections == 1)
            assert await idle.receive_some() == b""
            await wait_until(lambda: server.statistics().connections == 0)
            await idle.aclose()


async def test_max_clients_refuses_with_503() -> None:
    with trio.fail_after(10):
        async with running_server(max_clients=1) as server:
            async with ws_client(server.urls[0]):
                refused = await http_exchange(server, upgrade_request())
                assert refused.startswith(b"HTTP/1.1 503 ")
                assert b"too many clients" in refused
            await wait_until(lambda: server.clients == 0)
            async with ws_client(server.urls[0]) as ws:
                await ws.send_message("room again")
                assert await ws.get_message() == "room again"


# --- stopping -----------------------------------------------------------------


async def test_shutdown_closes_every_client_with_1001_and_returns() -> None:
    config = Config(host="127.0.0.1", port=0)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            async with (
                ws_client(server.urls[0]) as a,
                ws_client(server.urls[0]) as b,
            ):
                await wait_until(lambda: server.clients == 2)
                server.shutdown()
                assert await close_code(a) == 1001
                assert await close_code(b) == 1001
        # serve() returned by itself: the nursery exited without being cancelled.
        assert server.clients == 0


async def test_shutdown_is_bounded_with_a_stuck_client() -> None:
    config = Config(host="127.0.0.1", port=0, close_timeout=0.4)
    line = "s" * 10_000
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            stuck = await raw_websocket(server, rcvbuf=4096)
            await wait_until(lambda: server.clients == 1)
            for _ in range(10):
                await server.publish([line] * 10)
            started = trio.current_time()
            server.shutdown()
        assert trio.current_time() - started < 1.0
        await stuck.aclose()


async def test_end_of_input_with_exit_on_eof_delivers_then_closes_with_1000() -> None:
    feed = LineFeed()
    config = Config(host="127.0.0.1", port=0, exit_on_eof=True)
    lines = [f"last {i}" for i in range(500)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config, feed)
            async with ws_client(server.urls[0]) as ws:
                await wait_until(lambda: server.clients == 1)
                await feed.send(*lines)
                feed.end()
                assert await receive_n(ws, len(lines)) == lines
                assert await close_code(ws) == 1000
        assert not server.statistics().input_open


async def test_end_of_input_keeps_serving_by_default() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed) as server:
            feed.end()
            await wait_until(lambda: not server.statistics().input_open)
            async with ws_client(server.urls[0]) as ws:
                await ws.send_message("after eof")
                assert await ws.get_message() == "after eof"


# --- TLS and start-up errors --------------------------------------------------


async def test_tls(tmp_path: os.PathLike[str]) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile = os.path.join(tmp_path, "cert.pem")
    keyfile = os.path.join(tmp_path, "key.pem")
    certificate.cert_chain_pems[0].write_to_path(certfile)
    certificate.private_key_pem.write_to_path(keyfile)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed, certfile=certfile, keyfile=keyfile) as server:
            assert server.urls[0].startswith("wss://127.0.0.1:")
            async with ws_client(server.urls[0], ssl_context=client_context) as ws:
                await wait_until(lambda: server.clients == 1)
                await feed.send("secret")
                assert await ws.get_message() == "secret"
            # Plain TCP on the TLS port: dropped, and the server carries on.
            assert (await http_exchange(server, b"GET / HTTP/1.1\r\n\r\n")) == b""


async def test_port_in_use_is_a_startup_error() -> None:
    with trio.fail_after(5):
        async with running_server() as server:
            with pytest.raises(StartupError, match="address already in use"):
                await serve(Config(host="127.0.0.1", port=server.port))


async def test_a_missing_certificate_is_a_startup_error(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "missing.pem")
    with (
        trio.fail_after(5),
        pytest.raises(StartupError, match=r"cannot read the TLS certificate.*missing\.pem"),
    ):
        await serve(Config(host="127.0.0.1", port=0, certfile=missing, keyfile=missing))


async def test_a_bad_certificate_is_a_startup_error(tmp_path: os.PathLike[str]) -> None:
    bogus = os.path.join(tmp_path, "bogus.pem")
    with open(bogus, "w") as file:
        file.write("not a certificate\n")
    with trio.fail_after(5), pytest.raises(StartupError, match="cannot use the TLS certificate"):
        await serve(Config(host="127.0.0.1", port=0, certfile=bogus, keyfile=bogus))


async def test_an_unknown_host_is_a_startup_error() -> None:
    with trio.fail_after(10), pytest.raises(StartupError, match="cannot resolve host"):
        await serve(Config(host="no-such-host.invalid", port=0))


async def test_statistics_is_one_frozen_snapshot() -> None:
    """``Server.statistics()`` gathers every count once; later changes do not reach it."""
    with trio.fail_after(10):
        async with running_server() as server:
            before = server.statistics()
            async with ws_client(server.urls[0]) as ws:
                await wait_until(lambda: server.clients == 1)
                await server.publish(["one", "two"])
                assert await ws.get_message() == "one"
                now = server.statistics()
            assert (before.clients, before.lines_read, before.handshakes["accepted"]) == (0, 0, 0)
            assert (now.clients, now.lines_read, now.handshakes["accepted"]) == (1, 2, 1)
            assert now.connections == 1
            assert now.input_open
            with pytest.raises(dataclasses.FrozenInstanceError):
                now.clients = 2  # type: ignore[misc]
            with pytest.raises(TypeError):
                now.handshakes["accepted"] = 2  # type: ignore[index]


async def test_a_connection_that_ends_is_freed_without_the_cyclic_collector() -> None:
    """Found by the resume storm: the server kept the memory of a reconnect storm.

    wsproto's frame parser and our events() wrapper each made a reference
    cycle, so the wsproto and h11 state of every ended connection waited for a
    full pass of the garbage collector. With the collector off, ended
    connections must leave no parser behind for it to find.
    """
    clients = 20
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(10):
            async with running_server() as server:
                port = server.port
                connected = [await RawClient.handshake(port) for _ in range(clients)]
                await wait_until(lambda: server.clients == clients)
                await server.publish(["a line"])
                for client in connected:
                    client.reset()
                    await client.aclose()
                await wait_until(lambda: server.statistics().connections == 0)
        # The server has stopped: whatever is left of the connections is unreachable.
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        parsers = [item for item in gc.garbage if isinstance(item, FrameProtocol)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert parsers == [], f"{len(parsers)} of {clients} parsers were left to the collector"


async def _end(client: RawClient, how: str) -> None:
    """End ``client``'s connection one way, as a client may."""
    if how == "reset":
        client.reset()
    elif how == "close":
        await client.send_frame(0x8, struct.pack("!H", 1000))
        await client.read_until_gone()
    else:  # a frame no server accepts (reserved opcode): the server closes with 1002
        await client.send_frame(0x3, b"")
        await client.read_until_gone()
    await client.aclose()


async def _garbage_left(clients: int, how: str, *, v1: bool) -> int:
    """Objects in reference cycles once ``clients`` connections ended ``how``, server running."""
    async with running_server() as server:
        gc.collect()  # what earlier servers left is not this one's
        port = server.port
        connected = []
        protocol = ("Sec-WebSocket-Protocol: trio-broadcast.v1",) if v1 else ()
        for _ in range(clients):
            connected.append(await RawClient.handshake(port, *protocol))
        await wait_until(lambda: server.clients == clients)
        await server.publish(["a line"])
        for client in connected:
            await _end(client, how)
        await wait_until(lambda: server.statistics().connections == 0)
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            return len(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()


@pytest.mark.parametrize("v1", [False, True], ids=["plain", "v1"])
@pytest.mark.parametrize("how", ["reset", "close", "protocol-error"])
async def test_no_way_of_ending_a_connection_leaves_garbage_in_cycles(how: str, v1: bool) -> None:
    """What the command's rarer full collections rely on (cli._collector_for_a_server).

    However a connection ends, its objects are freed by reference counting:
    the garbage in cycles does not grow with the number of connections that ended.
    """
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(20):
            few = await _garbage_left(2, how, v1=v1)
            many = await _garbage_left(12, how, v1=v1)
    finally:
        gc.enable()
    assert many == few, f"{many - few} more objects in cycles for 10 more connections"


def test_a_scope_registered_after_the_stop_is_cancelled_as_it_arrives() -> None:
    """A connection accepted during the stop does not slip through (shutdown.Shutdown)."""
    shutdown = Shutdown()
    shutdown.request()
    with shutdown.cancels(trio.CancelScope()) as scope:
        assert scope.cancel_called


def test_a_broadcast_is_open_until_its_feed_ends() -> None:
    broadcast = Broadcast(Config())
    assert not broadcast.closed
    broadcast.close()
    assert broadcast.closed
