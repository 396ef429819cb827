"""The Redis layer's pure parts, tested in the default session: no Redis, no coredis.

Entry IDs, a line and its entry, the cursor's arithmetic for entries trimmed
before they were read, the backoff schedule, and the one retry loop (on Trio's
autojump clock, so its backoff takes no real time). What talks to Redis is
tested against a real redis-server in ``tests/redis`` (nox session ``redis``).
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import sys

import pytest
import trio
import trio.testing

from trio_broadcast.redis_stream.entries import (
    FIELD,
    ORIGIN,
    SEQ_MAX,
    Cursor,
    EntryId,
    decode_entries,
    decode_entry,
    decode_fields,
    encode_line,
    encode_value,
    stream_key,
)
from trio_broadcast.redis_stream.retrying import Backoff, Link, retry, why


def test_entry_ids_parse_print_and_order_like_redis() -> None:
    assert EntryId.parse(b"1700000000000-5") == EntryId(1700000000000, 5)
    assert str(EntryId.parse("12-0")) == "12-0"
    assert ORIGIN < EntryId(0, 1) < EntryId(1, 0) < EntryId(1, 10) < EntryId(2, 0)
    for bad in (
        "",
        "12",
        "12-",
        "-1",
        "a-1",
        "1-2-3",
        "\u0661-1",
        "+1-2",
        "1-+2",
        "1 -2",
        "1_0-2",
    ):
        with pytest.raises(ValueError, match="not a stream entry ID"):
            EntryId.parse(bad)


def test_nothing_comes_between_an_entry_id_and_the_one_before_it() -> None:
    assert EntryId(7, 3).before() == EntryId(7, 2)
    assert EntryId(7, 0).before() == EntryId(6, SEQ_MAX) < EntryId(7, 0)
    assert EntryId(0, 1).before() == ORIGIN
    with pytest.raises(ValueError, match="before 0-0"):
        ORIGIN.before()


@pytest.mark.parametrize("line", ["hello", "", " spaced \r inside", "ünïcødé ✓", "\ufffd"])
def test_a_line_survives_its_entry(line: str) -> None:
    fields = encode_line(line)
    assert decode_entry(dict(fields)) == line
    assert decode_fields([FIELD, encode_value(line)]) == line  # as XREAD sends it


def test_entries_not_ours_are_recognised() -> None:
    assert decode_entry({b"other": b"x"}) is None
    assert decode_entry({"line": "as text"}) == "as text"
    assert decode_entry({b"line": b"bad \xff utf-8"}) == "bad \ufffd utf-8"
    assert decode_fields([b"other", b"x"]) is None
    assert decode_fields([b"other", b"x", b"line", b"y"]) == "y"
    assert decode_fields([b"other", b"line"]) is None
    assert decode_fields([b"line", b"bad \xff utf-8"]) == "bad \ufffd utf-8"


def test_a_read_keeps_the_ids_redis_sent_and_parses_only_the_last() -> None:
    read = decode_entries(
        [
            [b"1700000000000-0", [FIELD, b"a"]],
            [b"1700000000000-1", [b"other", b"x"]],  # not ours: counted, not published
            [b"1700000000001-0", [FIELD, "\u00e9".encode()]],
            [b"1700000000001-1", [FIELD, b"bad \xff"]],
            [b"1700000000001-2", [b"other", b"x", FIELD, b"b"]],  # another writer's, with ours
            [b"1700000000001-3", [FIELD]],  # a name without its value: not a line
        ]
    )
    assert read.lines == ["a", "\u00e9", "bad \ufffd", "b"]
    assert read.ids == ["1700000000000-0", "1700000000001-0", "1700000000001-1", "1700000000001-2"]
    assert read.last == EntryId(1700000000001, 3)
    assert read.count == 6
    # What Redis sends is what an EntryId prints: the same ID either way.
    assert all(str(EntryId.parse(i)) == i for i in read.ids)
    empty = decode_entries([])
    assert (empty.lines, empty.ids, empty.last, empty.count) == ([], [], None, 0)
    cursor = Cursor()
    cursor.advance(EntryId(5, 0), 3)
    assert (cursor.last, cursor.number) == (EntryId(5, 0), 3)


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(first=0.1, cap=2.0, factor=2.0)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    for attempt, ceiling in enumerate(ceilings):
        assert backoff.delay(attempt, 0.0) == pytest.approx(ceiling / 2)
        assert backoff.delay(attempt, 0.999) < ceiling
        assert backoff.delay(attempt, 0.5) == pytest.approx(ceiling * 0.75)
    assert backoff.delay(10_000, 0.999) < 2.0  # no overflow after a long outage
    for bad in ({"first": 0.0}, {"first": 3.0, "cap": 2.0}, {"factor": 0.5}):
        with pytest.raises(ValueError, match="bad backoff"):
            Backoff(**bad)


def test_cursor_counts_entries_trimmed_before_they_were_read() -> None:
    cursor = Cursor(EntryId(5, 0), 10)  # delivered entries 1..10
    gap = cursor.resync(entries_added=15, length=15)  # nothing trimmed
    assert (gap.skipped, gap.reset, cursor.number) == (0, False, 10)
    gap = cursor.resync(entries_added=30, length=25)  # 1..5 trimmed: all read already
    assert (gap.skipped, gap.reset, cursor.number) == (0, False, 10)
    gap = cursor.resync(entries_added=40, length=22)  # 1..18 trimmed: 11..18 never read
    assert (gap.skipped, gap.reset, cursor.number) == (8, False, 18)
    cursor.advance(EntryId(9, 0))
    assert (cursor.last, cursor.number) == (EntryId(9, 0), 19)


def test_cursor_notices_a_stream_that_started_again() -> None:
    cursor = Cursor(EntryId(5, 0), 100)
    gap = cursor.resync(entries_added=0, length=0)  # the key is gone
    assert (gap.skipped, gap.reset, cursor.number) == (0, True, 0)
    cursor = Cursor(EntryId(5, 0), 100)
    gap = cursor.resync(entries_added=50, length=20)  # new, and already trimmed
    assert (gap.skipped, gap.reset, cursor.number) == (30, True, 30)


def test_the_stream_key_names_the_channel() -> None:
    assert stream_key("news") == "trio-broadcast:news"


def test_the_package_imports_without_coredis() -> None:
    blocked = "import sys; sys.modules['coredis'] = None; import trio_broadcast.redis_stream"
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


# --- the retry loop ----------------------------------------------------------------------


async def test_retry_retries_the_given_errors_and_logs_an_outage_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[BaseException] = [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        TimeoutError(),
    ]
    seen: list[BaseException] = []

    async def call() -> int:
        await trio.lowlevel.checkpoint()
        if failures:
            raise failures.pop(0)
        return 7

    link = Link("reader", "redis:6379")
    caplog.set_level(logging.INFO, logger="trio_broadcast")
    with trio.fail_after(60):
        result = await retry(
            call,
            errors=(OSError, TimeoutError),
            link=link,
            backoff=Backoff(first=1.0, cap=4.0),
            consequence="clients stay connected",
            on_error=seen.append,
        )
    assert result == 7
    assert [type(exc) for exc in seen] == [ConnectionRefusedError, TimeoutError]
    assert not link.down
    lost, back = (record.getMessage() for record in caplog.records)
    assert lost == (
        "reader: Redis at redis:6379 unreachable (connection refused (is redis-server "
        "running there?)); clients stay connected, retrying with backoff"
    )
    assert back.startswith("reader: Redis at redis:6379 is back after ")
    assert 1.5 <= trio.current_time() <= 3.0  # half to all of 1 s, then of 2 s


async def test_retry_lets_other_errors_through_at_once() -> None:
    seen: list[BaseException] = []

    async def call() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("a bug, not an outage")

    link = Link("publisher", "redis:6379")
    with trio.fail_after(5), pytest.raises(ValueError, match="a bug"):
        await retry(
            call,
            errors=(OSError,),
            link=link,
            backoff=Backoff(),
            consequence="holding input in order",
            on_error=seen.append,
        )
    assert seen == []
    assert not link.down


def test_why_finds_the_useful_cause() -> None:
    assert why(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == (
        "cannot resolve the host (Name or service not known)"
    )
    group = ExceptionGroup("connect", [OSError(errno.EHOSTUNREACH, "No route to host")])
    assert why(group) == "no route to host"
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = trio.TooSlowError()
    assert why(wrapped) == "no answer in time"
    assert why(RuntimeError("something else")) == "something else"
    assert why(RuntimeError()) == "RuntimeError"
