"""The accept loop: a burst of waiting connections, and the file-descriptor limit.

The server's own end-to-end test (``test_command``) has one listener; a host
name that resolves to several addresses gives several, which then compete for
the one reserve descriptor. The loop runs in a subprocess with a low
``ulimit -n``, so that this test process keeps its own limit.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import trio

from trio_broadcast.listeners import ACCEPT_BURST, DescriptorReserve, accept_forever

WAITING = 3 * (ACCEPT_BURST + 1)


async def test_the_connections_waiting_in_the_queue_are_accepted_in_one_go() -> None:
    """Found by the resume storm with 5,000 clients: the listen queue overflowed.

    Trio's ``accept()`` yields after each connection, so a loop of awaited
    accepts takes one connection per round of the scheduler; on a busy server
    a round is long. Here a task that checkpoints in a loop counts the rounds:
    the waiting connections must reach their handlers ``ACCEPT_BURST + 1`` a round
    (one awaited accept and a burst), not one a round.
    """
    with trio.fail_after(10):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        # Blocking connects: the kernel completes each, then it waits in the queue.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(WAITING)]
        rounds = 0
        started_in: list[int] = []
        all_started = trio.Event()

        async def count_rounds() -> None:
            nonlocal rounds
            while True:
                rounds += 1
                await trio.lowlevel.checkpoint()

        async def handler(stream: trio.abc.Stream) -> None:
            started_in.append(rounds)
            await stream.aclose()
            if len(started_in) == WAITING:
                all_started.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_rounds)
            nursery.start_soon(
                accept_forever, listener, handler, nursery, DescriptorReserve(), lambda: None
            )
            await all_started.wait()
            nursery.cancel_scope.cancel()
        for client in clients:
            client.close()
        await listener.aclose()
    rounds_taken = max(started_in) - min(started_in) + 1
    assert rounds_taken <= 2 * WAITING // (ACCEPT_BURST + 1), started_in


# The server side: two listeners, one accept loop each, one shared reserve.
# Each accepted connection is told "in", and closed once its client has spoken.
SERVER = """
import resource, sys, trio
from trio_broadcast.listeners import DescriptorReserve, accept_forever

async def handler(stream):
    async with stream:
        await stream.send_all(b"in\\n")
        await stream.receive_some()

async def main():
    listeners = [(await trio.open_tcp_listeners(0, host="127.0.0.1"))[0] for _ in range(2)]
    print(*(listener.socket.getsockname()[1] for listener in listeners), flush=True)
    reserve = DescriptorReserve()
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(
                accept_forever, listener, handler, nursery, reserve, lambda: None
            )

resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(
    resource.RLIMIT_NOFILE)[1]))
trio.run(main)
"""
LIMIT = 40
ATTEMPTS = 60


async def answer(port: int) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    while b"\n" not in received:
        chunk = await stream.receive_some()
        if not chunk:
            break
        received += chunk
    return stream, received


async def test_two_listeners_at_the_limit_answer_every_client_and_recover() -> None:
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", SERVER, str(LIMIT)], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the accept loop did not start"
                line += chunk
            ports = [int(port) for port in line.split()]
            admitted: list[trio.SocketStream] = []
            refused = dict.fromkeys(ports, 0)
            for attempt in range(ATTEMPTS):
                port = ports[attempt % 2]
                # Every client gets an answer at once, in or 503: none hangs.
                with trio.fail_after(2):
                    stream, received = await answer(port)
                if received == b"in\n":
                    admitted.append(stream)
                else:
                    assert received.startswith(b"HTTP/1.1 503 "), received
                    refused[port] += 1
                    await stream.aclose()
            assert 0 < len(admitted) < LIMIT
            assert all(refused.values()), refused  # both listeners reached the limit
            # Two clients leave; once the loop has closed their sockets, two get in.
            for stream in admitted[:2]:
                await stream.send_all(b"bye")
                assert await stream.receive_some() == b""
                await stream.aclose()
            for port in ports:
                with trio.fail_after(2):
                    stream, received = await answer(port)
                assert received == b"in\n"
                admitted.append(stream)
            for stream in admitted[2:]:
                await stream.aclose()
        finally:
            process.kill()
            await process.wait()
