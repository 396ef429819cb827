"""Line IDs, retention and where a resume starts, without sockets.

What :mod:`trio_broadcast.retention` and :mod:`trio_broadcast.subprotocol` promise.

The state machine at the end plays a server and its clients: lines are
published in batches, clients connect (resuming from their last ID), read their
backlog in chunks while more lines arrive, and drop at any moment. Whatever the
interleaving, each client receives every line at most once, in order, and
every line it missed is announced by a gap notice, with the exact count when
the resume was from this run.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trio_broadcast import subprotocol
from trio_broadcast.retention import Evicted, Gap, Retention, Start

from .conftest import budget
from .wire import line_messages

T = TypeVar("T")


def now(awaitable: Awaitable[T]) -> T:
    """The result of a Retention coroutine: they answer at once, without a checkpoint."""
    coroutine = awaitable.__await__()
    try:
        next(coroutine)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("a Retention method waited")


def read(retention: Retention, after: str, until: str, limit: int) -> list[tuple[str, str]]:
    """What :meth:`Retention.read` returns, as ``(ID, line)`` pairs."""
    return line_messages(now(retention.read(after, until, limit)).frames)


def retained(max_lines: int = 100, max_bytes: int = 1 << 20, lines: int = 0) -> Retention:
    retention = Retention(max_lines, max_bytes, epoch="e")
    batch = [f"line {n}" for n in range(1, lines + 1)]
    retention.extend(batch, [len(line) for line in batch])
    return retention


# ------------------------------------------------------------------------ IDs


def test_ids_name_the_run_and_the_line() -> None:
    retention = retained(lines=3)
    assert retention.position() == "e:3"
    assert [retention.number(f"e:{n}") for n in range(4)] == [0, 1, 2, 3]
    assert retained(lines=10).number("e:007") == 7
    for foreign in ("f:1", "e:", "e:x", "e:-1", "e:4", "e:\u0661", "e1", "", "e:1:2"):
        assert retention.number(foreign) is None, foreign


def test_each_run_draws_its_own_epoch() -> None:
    epochs = {Retention(1, 1).epoch for _ in range(20)}
    assert len(epochs) == 20
    assert all(":" not in epoch for epoch in epochs)


# ------------------------------------------------------------------ bounds


def test_retention_keeps_the_last_lines_by_count() -> None:
    retention = retained(max_lines=3, lines=10)
    assert (retention.lines, retention.first, retention.last) == (3, 8, 10)
    assert read(retention, "e:7", "e:10", 100) == [
        ("e:8", "line 8"),
        ("e:9", "line 9"),
        ("e:10", "line 10"),
    ]


def test_retention_keeps_the_last_lines_by_bytes() -> None:
    retention = Retention(100, 10, epoch="e")
    retention.extend(["aaaa", "bbbb", "cccc"], [4, 4, 4])
    assert (retention.lines, retention.bytes) == (2, 8)
    retention.extend(["a line larger than the bound"], [28])
    assert (retention.lines, retention.bytes, retention.first) == (0, 0, 5)


def test_nothing_retained_still_resumes_exactly_from_the_end() -> None:
    retention = retained(max_lines=0, lines=5)
    assert now(retention.start("e:5", 0, "e:5")) == Start("e:5")
    assert now(retention.start("e:4", 0, "e:5")) == Start("e:5", Gap("e:4", 1))


# -------------------------------------------------------------------- start


def test_without_since_the_start_is_history_lines_back() -> None:
    retention = retained(lines=10)
    assert now(retention.start(None, 0, "e:10")) == Start("e:10")
    assert now(retention.start(None, 3, "e:10")) == Start("e:7")
    assert now(retention.start(None, 3, "e:8")) == Start("e:5")  # lines came since
    assert now(retention.start(None, 50, "e:10")) == Start("e:0")
    assert now(retained().start(None, 5, "e:0")) == Start("e:0")  # before any line


def test_a_resume_within_what_is_retained_is_exact() -> None:
    retention = retained(max_lines=5, lines=10)
    for since in ("e:5", "e:8", "e:10", "e:0010"):
        start = now(retention.start(since, 99, "e:10"))
        assert start.gap is None
        assert retention.number(start.position) == retention.number(since)


def test_a_resume_from_before_what_is_retained_says_how_many_were_missed() -> None:
    retention = retained(max_lines=5, lines=10)  # lines 6 to 10 are retained
    assert now(retention.start("e:2", 0, "e:10")) == Start("e:5", Gap("e:2", 3))
    assert now(retention.start("e:0", 0, "e:10")) == Start("e:5", Gap("e:0", 5))


@pytest.mark.parametrize("since", ["other:3", "e:11", "garbage", "", "e:3x", "1700000000000-0"])
def test_an_id_from_another_run_or_no_id_is_a_gap_of_unknown_size(since: str) -> None:
    retention = retained(max_lines=5, lines=10)
    assert now(retention.start(since, 0, "e:10")) == Start("e:5", Gap(since, None))


def test_an_id_after_the_backlog_end_is_not_trusted() -> None:
    retention = retained(lines=10)
    assert now(retention.start("e:10", 0, "e:8")) == Start("e:0", Gap("e:10", None))


# --------------------------------------------------------------------- read


def test_read_returns_chunks_up_to_the_end_then_nothing() -> None:
    retention = retained(lines=10)
    assert [id for id, _ in read(retention, "e:2", "e:7", 3)] == ["e:3", "e:4", "e:5"]
    assert [id for id, _ in read(retention, "e:5", "e:7", 3)] == ["e:6", "e:7"]
    assert read(retention, "e:7", "e:7", 3) == []


def test_read_after_an_evicted_position_raises() -> None:
    retention = retained(max_lines=3, lines=10)
    now(retention.read("e:7", "e:10", 1))  # the line before the first retained: still fine
    with pytest.raises(Evicted):
        now(retention.read("e:6", "e:10", 1))


def test_read_of_a_position_from_elsewhere_is_a_bug() -> None:
    with pytest.raises(ValueError, match="not a position of this run"):
        now(retained(lines=1).read("x:0", "e:1", 1))


# ------------------------------------------------------------- the messages


def test_the_messages_are_json_objects_with_a_type() -> None:
    def parse(payload: bytes) -> object:
        return json.loads(payload.decode())

    assert parse(subprotocol.hello("e:0")) == {"type": "hello", "id": "e:0"}
    assert parse(subprotocol.line("e:1", 'a "quoted"\n\u2603 line')) == {
        "type": "line",
        "id": "e:1",
        "line": 'a "quoted"\n\u2603 line',
    }
    assert parse(subprotocol.echo("\x00</script>")) == {"type": "echo", "data": "\x00</script>"}
    assert parse(subprotocol.gap('"x', None)) == {"type": "gap", "since": '"x', "missed": None}
    assert parse(subprotocol.gap("e:1", 4)) == {"type": "gap", "since": "e:1", "missed": 4}
    assert b"\\u2603" not in subprotocol.line("e:1", "\u2603")  # UTF-8, not escapes


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([], None),
        (["chat"], None),
        (["chat", subprotocol.NAME], subprotocol.NAME),
        ([subprotocol.NAME.upper()], None),  # subprotocol names are case-sensitive
    ],
)
def test_the_subprotocol_is_chosen_only_when_offered(
    offered: list[str], chosen: str | None
) -> None:
    assert subprotocol.chosen(offered) == chosen


# ---------------------------------------------------- the whole story, any order


@dataclass
class Client:
    """One client as the server sees it, and what it received."""

    received: list[int] = field(default_factory=list)
    """Line numbers, in the order they arrived."""
    gaps: list[Gap] = field(default_factory=list)
    resume_from: str | None = None
    """The last line's ID, or the hello's: what it sends back as ``since``."""
    connected: bool = False
    after: str | None = None
    """While catching up: the last position sent (``None`` once it is live)."""
    expected_next: int | None = None
    """The line that must come next, when known."""


class Resumes(RuleBasedStateMachine):
    """The server's side, as client._Opening and the fan-out do it."""

    @initialize(max_lines=st.integers(0, 12), max_bytes=st.integers(0, 120))
    def setup(self, max_lines: int, max_bytes: int) -> None:
        self.retention = Retention(max_lines, max_bytes, epoch="run")
        self.published = 0
        self.clients = [Client() for _ in range(3)]

    @rule(count=st.integers(1, 6), v1=st.booleans())
    def publish(self, count: int, v1: bool) -> None:
        """With ``v1`` (a v1 client is connected), the batch is encoded as it is retained."""
        lines = [f"line {self.published + n}" for n in range(1, count + 1)]
        first = self.published + 1
        frames = self.retention.extend(lines, [len(line) for line in lines], v1=v1)
        expected = [(f"run:{first + n}", line) for n, line in enumerate(lines)]
        assert line_messages(frames) == (expected if v1 else [])
        self.published += count
        for client in self.clients:
            if client.connected and client.after is None:  # joined: live
                self._deliver(client, list(range(first, first + count)))

    @precondition(lambda self: any(not client.connected for client in self.clients))
    @rule(data=st.data(), history=st.integers(0, 5))
    def connect(self, data: st.DataObject, history: int) -> None:
        client = data.draw(st.sampled_from([c for c in self.clients if not c.connected]))
        start = now(self.retention.start(client.resume_from, history, self.retention.position()))
        client.connected = True
        client.resume_from = start.position
        number = self.retention.number(start.position)
        assert number is not None
        if start.gap is not None:
            client.gaps.append(start.gap)
            if start.gap.missed is not None:
                assert client.expected_next is not None
                assert number + 1 - client.expected_next == start.gap.missed
        elif client.expected_next is not None:
            assert number + 1 == client.expected_next, "an exact resume starts right after"
        client.expected_next = number + 1
        client.after = start.position
        # A start is never already evicted.
        now(self.retention.read(start.position, self.retention.position(), 1))

    @precondition(lambda self: any(c.connected and c.after is not None for c in self.clients))
    @rule(data=st.data(), limit=st.integers(1, 4))
    def catch_up(self, data: st.DataObject, limit: int) -> None:
        catching_up = [c for c in self.clients if c.connected and c.after is not None]
        client = data.draw(st.sampled_from(catching_up))
        assert client.after is not None
        until = self.retention.position()
        if client.after == until:
            client.after = None  # joins the fan-out: live from the next line
            return
        try:
            chunk = now(self.retention.read(client.after, until, limit))
        except Evicted:
            self._drop(client)  # closed: it resumes from what it got
            return
        entries = line_messages(chunk.frames)
        assert entries, "nothing to read, yet not at the position"
        assert chunk.last == entries[-1][0]
        numbers = [self.retention.number(id) for id, _ in entries]
        assert all(line == f"line {n}" for (_, line), n in zip(entries, numbers, strict=True))
        self._deliver(client, [n for n in numbers if n is not None])
        client.after = entries[-1][0]

    @precondition(lambda self: any(client.connected for client in self.clients))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self._drop(data.draw(st.sampled_from([c for c in self.clients if c.connected])))

    def _deliver(self, client: Client, numbers: list[int]) -> None:
        for number in numbers:
            assert number == client.expected_next, (client.received[-3:], number)
            client.received.append(number)
            client.expected_next = number + 1
            client.resume_from = self.retention.id(number)

    def _drop(self, client: Client) -> None:
        client.connected = False
        client.after = None

    @invariant()
    def the_bounds_hold(self) -> None:
        retention: Retention | None = getattr(self, "retention", None)
        if retention is not None:
            assert retention.lines <= retention.max_lines
            assert retention.bytes <= retention.max_bytes
            assert (retention.bytes == 0) == (retention.lines == 0)

    @invariant()
    def every_client_saw_each_line_once_in_order_with_gaps_announced(self) -> None:
        for client in getattr(self, "clients", []):
            assert client.received == sorted(set(client.received))
            pairs = zip(client.received, client.received[1:], strict=False)
            jumps = sum(b - a - 1 for a, b in pairs)
            announced = [gap.missed for gap in client.gaps]
            assert None not in announced  # every ID came from this run
            assert jumps <= sum(missed or 0 for missed in announced)


Resumes.TestCase.settings = budget(200)
test_any_interleaving_of_publish_drop_and_resume = Resumes.TestCase
