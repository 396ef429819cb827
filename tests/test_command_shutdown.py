"""Stopping, end to end: SIGINT or SIGTERM closes every client with 1001 within
the close budget, even with a client that stopped reading; a second signal
exits at once.
"""

from __future__ import annotations

import signal

import pytest
import trio
from websockets.exceptions import ConnectionClosedOK

from .conftest import running_command
from .e2e import (
    CLOSE_TIMEOUT,
    assert_clean,
    feed_in_chunks,
    local_port,
    seen_connected,
    url_port,
    ws,
)
from .wire import RawClient

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_signal_closes_every_client_with_1001(signum: signal.Signals) -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as first, ws(process.url) as second:
                # A third client never reads and never answers the close frame:
                # the server waits its close budget for it, then drops it. A TCP
                # connection still in the handshake must not delay the exit.
                silent = await RawClient.handshake(url_port(process.url))
                idle = await RawClient.open(url_port(process.url))
                try:
                    for port in (local_port(first), local_port(second), silent.port):
                        await seen_connected(process, port)
                    started = trio.current_time()
                    process.process.send_signal(signum)
                    for client in (first, second):
                        with pytest.raises(ConnectionClosedOK):
                            await client.recv()
                        assert client.close_code == 1001
                    code = await process.process.wait()
                    took = trio.current_time() - started
                    frames = await silent.read_until_gone()
                    assert await idle.read_to_end() == b""
                finally:
                    await silent.aclose()
                    await idle.aclose()
            stderr = await process.read_all_stderr()
            assert code == 0, stderr
            # The silent client's close budget was honoured, and the exit came within 2 s.
            assert CLOSE_TIMEOUT - 0.05 <= took < 2, took
            assert [frame.close_code for frame in frames] == [1001]
            assert f"{signum.name}: closing 3 clients" in stderr
            assert_clean(stderr)


async def test_signal_with_a_client_that_stopped_reading_still_exits_within_2_s() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as good:
                await seen_connected(process, local_port(good))
                stalled = await RawClient.handshake(url_port(process.url), rcvbuf=4096)
                try:
                    await seen_connected(process, stalled.port)
                    # Enough to leave a write stuck, not enough to overflow its queue.
                    await feed_in_chunks(process, good, chunks=8)
                    started = trio.current_time()
                    process.process.send_signal(signal.SIGTERM)
                    with pytest.raises(ConnectionClosedOK):
                        await good.recv()
                    assert good.close_code == 1001
                    code = await process.process.wait()
                    took = trio.current_time() - started
                finally:
                    await stalled.aclose()
            stderr = await process.read_all_stderr()
            assert code == 0, stderr
            assert took < 2, took
            assert "SIGTERM: closing 2 clients" in stderr
            assert_clean(stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_second_signal_exits_at_once(signum: signal.Signals) -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            silent = await RawClient.handshake(url_port(process.url))
            try:
                await seen_connected(process, silent.port)
                started = trio.current_time()
                process.process.send_signal(signum)
                # Two signals sent back to back may be merged into one: wait until
                # the first was taken.
                await process.read_stderr_until(rf"{signum.name}: closing 1 clients")
                process.process.send_signal(signum)
                code = await process.process.wait()
                took = trio.current_time() - started
            finally:
                await silent.aclose()
            stderr = await process.read_all_stderr()
            assert code == 128 + signum, stderr
            # The graceful path cannot end before the silent client's close budget.
            assert took < CLOSE_TIMEOUT - 0.05, took
            assert f"second {signum.name}: exiting at once" in stderr
            assert_clean(stderr)
