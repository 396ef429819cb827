"""The fuzz tests' machinery: one server, one well-behaved client, Hypothesis in a thread.

A fuzz test starts one in-process server and one well-behaved trio-websocket
client for its whole run (:func:`fuzz_session`), then hands a Hypothesis test
to :meth:`Fuzzer.drive`. That runs it in a worker thread, in batches of
:data:`BATCH` examples, until the time budget is spent; each example comes back
into the test's own Trio loop through ``trio.from_thread.run``, so the server,
the good client and the fuzz connection share one event loop, and the test's
``trio.fail_after`` cancels whatever example is running.

Every example is judged the same way, besides what the test itself asserts
about the bytes that came back (:meth:`Fuzzer.run`):

* the server is back to exactly one connection and one client (the good one)
  shortly after the fuzz connection closed;
* nothing was logged at ERROR level or with a traceback, by any logger: the
  server logs every exception that escapes a connection task that way;
* the good client receives a line published through the server, in order
  after any line the example published, and gets its own echo back.

"Shortly" never means a sleep: the fuzz side synchronises on
:func:`trio.testing.wait_all_tasks_blocked` (every task, the server's
included, has done all it can with the bytes it was given), and the checks
poll the server's counters within bounded waits.

The budget is :data:`BUDGET_VARIABLE` seconds for all the fuzz tests of a run
together, shared out by each test's ``share``. Once a test's part is spent,
the examples left in the current batch return at once; but once an example
has failed, none does, so that Hypothesis shrinks and replays the failure for
real, and the batch reports it. No example is made up outside Hypothesis.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_broadcast import Server

from ..conftest import running_server, wait_until, ws_client
from ..wire import reset

BUDGET_VARIABLE = "TRIO_BROADCAST_FUZZ_SECONDS"
DEFAULT_BUDGET = 10.0
"""Seconds for all fuzz tests together when :data:`BUDGET_VARIABLE` is not set."""
SHRINK_ALLOWANCE = 330.0
"""Seconds a test may run past its budget: Hypothesis stops shrinking after 300."""

EXAMPLE_SECONDS = 5.0
"""Bound on one example's own exchange (connect, send, read back, close)."""
SETTLE_SECONDS = 1.5
"""How long the server may take to forget a closed fuzz connection."""
IDLE_CUSHION = 0.002
"""Seconds every task must have been idle before the fuzz client stops reading."""
GOOD_CLIENT_SECONDS = 2.0
"""How long the good client may take to receive a line and an echo."""

# The server's settings: small enough that the fuzz can reach the limits, and a
# handshake timeout well above SETTLE_SECONDS, so that a connection the server
# keeps waiting on after the peer has gone shows up as a failure.
MAX_MESSAGE_SIZE = 4096
MAX_REQUEST_HEAD = 4096
HANDSHAKE_TIMEOUT = 4.0
CLOSE_TIMEOUT = 1.0
SERVER_SETTINGS: dict[str, Any] = {
    "max_message_size": MAX_MESSAGE_SIZE,
    "max_request_head": MAX_REQUEST_HEAD,
    "handshake_timeout": HANDSHAKE_TIMEOUT,
    "close_timeout": CLOSE_TIMEOUT,
}
PREPARE_SECONDS = HANDSHAKE_TIMEOUT + CLOSE_TIMEOUT + 5.0
"""After a failed example: time for leftovers to time out and the good client to reconnect."""

BATCH = settings(
    max_examples=40,
    deadline=None,
    # Explicit, so that Hypothesis's "ci" profile (derandomize) cannot make
    # every batch run the same examples.
    derandomize=False,
    report_multiple_bugs=False,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
"""Settings of one batch: :meth:`Fuzzer.drive` runs batches until the budget is spent."""


IGNORE_RANDOM_IN_OTHER_THREADS = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
"""For every fuzz test: Hypothesis warns when the global ``random`` changes
while it draws an example, and the server's keep-alive ping draws its payload
from it (trio-websocket) in the Trio thread meanwhile."""

BROADCAST_MARK = "\x00fuzz-broadcast"
"""Starts every line the fuzz tests publish; no generated message does."""


def budget(share: float) -> float:
    """This test's part of the run's budget, in seconds."""
    value = os.environ.get(BUDGET_VARIABLE, "")
    try:
        seconds = float(value) if value else DEFAULT_BUDGET
    except ValueError:
        raise ValueError(f"{BUDGET_VARIABLE} must be a number of seconds, not {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"{BUDGET_VARIABLE} must be above 0, not {value!r}")
    return seconds * share


@dataclass
class FuzzResult:
    """What one fuzz test did: shown in the run's summary."""

    name: str
    budget: float
    examples: int = 0
    batches: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.examples / self.seconds if self.seconds else 0.0
        return (
            f"{self.name}: {self.examples} examples in {self.batches} Hypothesis runs, "
            f"{self.seconds:.1f} s of a {self.budget:g} s budget ({rate:.0f} examples/s; "
            f"{BUDGET_VARIABLE} sets the budget of all fuzz tests)"
        )


RESULTS: list[FuzzResult] = []
"""Every fuzz test's result in this run, for the terminal summary (conftest.py)."""


class Ending(enum.Enum):
    """What the fuzz client does once it has sent everything."""

    EOF = "half-close, then read until the server is idle"
    KEEP = "keep the connection open, read until the server is idle, then close"
    CLOSE = "close at once without reading"
    RESET = "drop the connection with a TCP RST at once"


@dataclass(frozen=True)
class Chunk:
    """One write of the fuzz client."""

    data: bytes
    pause: bool = False
    """Then wait until the server has done all it can with what it has."""
    publish: bool = False
    """Then publish a line through the server (to every client, the fuzz one too)."""


@dataclass(frozen=True)
class Received:
    """What came back before the server went idle (or closed)."""

    data: bytes
    closed: bool
    """The server closed (or reset) the connection."""
    reset: bool = False
    """The server reset the connection: what it sent last may be lost."""


def split(data: bytes, cuts: Sequence[int], pauses: Sequence[bool] = ()) -> tuple[Chunk, ...]:
    """``data`` cut at ``cuts`` (offsets, any order); chunk ``i`` pauses if ``pauses[i]``."""
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    return tuple(
        Chunk(data[start:end], pause=i < len(pauses) and pauses[i])
        for i, (start, end) in enumerate(itertools.pairwise(bounds))
    )


class _ErrorLog(logging.Handler):
    """Every record at ERROR or above, or carrying a traceback, from any logger."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def check(self) -> None:
        records, self.records = self.records, []
        if records:
            logged = "\n".join(self.format(record) for record in records)
            raise AssertionError(f"the server logged an error:\n{logged}")


class _GoodClient:
    """The well-behaved client, in a task of its own so that it can be replaced."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = trio.CancelScope()
        self._done = trio.Event()

    async def hold(
        self, *, task_status: trio.TaskStatus[WebSocketConnection] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Stopping cancels the close too: trio-websocket's client cannot close
        # while its message queue is full (lines it was sent and never read).
        try:
            with self._stop:
                async with ws_client(self._url) as ws:
                    task_status.started(ws)
                    await trio.sleep_forever()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # replaced after a failed example, which reported the failure
        finally:
            self._done.set()

    async def stop(self) -> None:
        self._stop.cancel()
        await self._done.wait()


class Fuzzer:
    """The running server, the good client, and the steps every example shares."""

    def __init__(self, server: Server, nursery: trio.Nursery, result: FuzzResult) -> None:
        self.server = server
        self.result = result
        self._nursery = nursery
        self._errors = _ErrorLog()
        self._good: _GoodClient | None = None
        self._good_ws: WebSocketConnection | None = None
        self._published: list[str] = []
        self._lines = itertools.count()
        self._deadline: float | None = None
        self._failing = False
        self._dirty = False

    # --- the session, on the Trio side ------------------------------------------

    async def _connect_good_client(self) -> None:
        if self._good is not None:
            await self._good.stop()
        self._good = _GoodClient(self.server.urls[0])
        self._good_ws = await self._nursery.start(self._good.hold)
        await wait_until(
            lambda: self.server.clients == 1 and self.server.statistics().connections == 1
        )

    async def drive(self, test: Callable[..., None]) -> None:
        """Run the Hypothesis ``test`` (taking ``fuzz=self``) until the budget is spent.

        The clock starts with the first example, so that Hypothesis's one-off
        set-up (its Unicode tables, on a fresh checkout) is not counted.
        """

        def batches() -> None:
            while not self._spent():
                self.result.batches += 1
                test(fuzz=self)

        try:
            await trio.to_thread.run_sync(batches)
        finally:
            if self._deadline is not None:
                started = self._deadline - self.result.budget
                self.result.seconds = time.monotonic() - started

    def _spent(self, *, start: bool = False) -> bool:
        """Whether the budget is spent; ``start`` starts the clock if it has not started."""
        if self._deadline is None:
            if not start:
                return False
            self._deadline = time.monotonic() + self.result.budget
        return time.monotonic() >= self._deadline

    # --- one example: called by Hypothesis in its thread -----------------------

    def run(self, example: Callable[[Fuzzer], Awaitable[None]]) -> None:
        """Run ``example`` in the Trio loop, then check the server as every example must."""
        if not self._failing and self._spent(start=True):
            return  # the budget is spent: let the batch finish at once
        self.result.examples += 1
        try:
            trio.from_thread.run(self._example, example)
        except Exception:
            self._failing = True  # from now on, shrink and replay for real
            self._dirty = True
            raise

    async def _example(self, example: Callable[[Fuzzer], Awaitable[None]]) -> None:
        """Run one example and judge it."""
        if self._dirty:
            # The last example failed and may have left anything behind: wait
            # for the server to be back to one client, and start afresh.
            with trio.fail_after(PREPARE_SECONDS):
                await self._connect_good_client()
            self._errors.records.clear()
            self._published.clear()
            self._dirty = False
        try:
            with trio.fail_after(EXAMPLE_SECONDS):
                await example(self)
            await self._settled()
        except Exception:
            self._errors.check()  # an error the server logged explains more
            raise
        self._errors.check()
        await self._good_client_receives()

    async def _settled(self) -> None:
        server = self.server
        with trio.move_on_after(SETTLE_SECONDS) as waiting:
            await trio.testing.wait_all_tasks_blocked()  # usually enough
            await wait_until(lambda: server.statistics().connections == 1 and server.clients == 1)
        if waiting.cancelled_caught:
            raise AssertionError(
                f"{SETTLE_SECONDS} s after the fuzz connection closed, the server still "
                f"counts {server.statistics().connections} connections and "
                f"{server.clients} clients "
                "(the well-behaved client only: 1 and 1)"
            )

    async def _good_client_receives(self) -> None:
        ws = self._good_ws
        assert ws is not None
        await self.publish()
        echo = f"echo {self.result.examples}"
        try:
            with trio.fail_after(GOOD_CLIENT_SECONDS):
                for line in self._published:
                    received = await ws.get_message()
                    assert received == line, f"the good client got {received!r}, not {line!r}"
                await ws.send_message(echo)
                received = await ws.get_message()
                assert received == echo, f"the good client got {received!r}, not its echo"
        except ConnectionClosed as exc:
            raise AssertionError(f"the good client was disconnected: {exc.reason}") from None
        except trio.TooSlowError:
            raise AssertionError(
                f"the good client did not receive its lines within {GOOD_CLIENT_SECONDS} s"
            ) from None
        self._published.clear()

    # --- steps for the examples -------------------------------------------------

    async def publish(self) -> None:
        """Publish one new line through the server; the good client must receive it."""
        line = f"{BROADCAST_MARK} {next(self._lines)}"
        self._published.append(line)
        await self.server.publish([line])

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.server.port)

    async def send(self, stream: trio.SocketStream, chunks: Sequence[Chunk]) -> bool:
        """Write ``chunks``; ``False`` if the server closed the connection first."""
        for chunk in chunks:
            try:
                await stream.send_all(chunk.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if chunk.pause:
                await trio.testing.wait_all_tasks_blocked()
            if chunk.publish:
                await self.publish()
        return True

    async def finish(self, stream: trio.SocketStream, ending: Ending) -> Received | None:
        """End the exchange as ``ending`` says; what came back, when it reads."""
        if ending is Ending.RESET:
            reset(stream)
            return None
        if ending is Ending.CLOSE:
            await stream.aclose()
            return None
        if ending is Ending.EOF:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_eof()
        return await drain(stream)


async def drain(stream: trio.SocketStream) -> Received:
    """Read until the server closes, or until every task is idle (nothing more is coming)."""
    received = bytearray()
    closed = reset = False

    async def read(cancel_scope: trio.CancelScope) -> None:
        nonlocal closed, reset
        try:
            while chunk := await stream.receive_some(65536):
                received.extend(chunk)
        except trio.BrokenResourceError:
            # The server closed with some of our bytes unread: the kernel then
            # resets the connection, and what the server wrote last may be lost.
            reset = True
        closed = True
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, nursery.cancel_scope)
        # Idle for a little while, not just for a moment: on a loaded machine
        # the kernel may take that long to pass bytes over the loopback.
        await trio.testing.wait_all_tasks_blocked(IDLE_CUSHION)
        nursery.cancel_scope.cancel()
    return Received(bytes(received), closed, reset)


@asynccontextmanager
async def fuzz_session(name: str, share: float) -> AsyncIterator[Fuzzer]:
    """A server on 127.0.0.1 with the good client connected; errors logged are collected."""
    result = FuzzResult(name, budget(share))
    async with running_server(**SERVER_SETTINGS) as server, trio.open_nursery() as nursery:
        fuzzer = Fuzzer(server, nursery, result)
        root = logging.getLogger()
        root.addHandler(fuzzer._errors)
        try:
            with trio.fail_after(10):
                await fuzzer._connect_good_client()
            yield fuzzer
            fuzzer._errors.check()
        finally:
            root.removeHandler(fuzzer._errors)
            RESULTS.append(result)
            print(f"\n{result}")
            if fuzzer._good is not None:
                with trio.move_on_after(5):
                    await fuzzer._good.stop()
