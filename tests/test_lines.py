"""Unit and property tests for :mod:`trio_broadcast.lines`: the sans-I/O line splitter.

Covered: splitting on ``\\n`` with one trailing ``\\r`` stripped, empty lines kept,
the unterminated last line returned by :meth:`LineSplitter.end`, invalid UTF-8
replaced exactly as ``bytes.decode("utf-8", errors="replace")`` does, multibyte
characters cut across chunks, over-long lines skipped and counted once each (at,
just over and around the limit, with ``\\r``, spanning many chunks), the lines
after them still flowing, and the memory bound (``buffered <= max_line_size + 1``
after every ``feed()``). Hypothesis checks, for any input and any chunking, that
the result equals a whole-input oracle and an oracle built from known lines, that
every ``feed()`` returns exactly the lines completed so far, and that the buffer
stays within its bound after every read (see the properties section).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_broadcast.lines import LineSplitter, Split

from .conftest import budget


def reference(data: bytes, max_line_size: int) -> tuple[list[str], int]:
    """The oracle: the rules applied to the whole input at once."""
    pieces = data.split(b"\n")
    last = pieces.pop()
    if last:  # the piece after the last newline is a line only if non-empty
        pieces.append(last)
    lines: list[str] = []
    too_long = 0
    for piece in pieces:
        raw = piece[:-1] if piece.endswith(b"\r") else piece
        if len(raw) > max_line_size:
            too_long += 1
        else:
            lines.append(raw.decode("utf-8", errors="replace"))
    return lines, too_long


def run(max_line_size: int, chunks: Iterable[bytes]) -> tuple[list[str], int]:
    """Feed ``chunks`` then end; check the memory bound after every feed."""
    splitter = LineSplitter(max_line_size)
    lines: list[str] = []
    too_long = 0
    for chunk in chunks:
        split = splitter.feed(chunk)
        assert splitter.buffered <= max_line_size + 1
        lines += split.lines
        too_long += split.too_long
    final = splitter.end()
    assert splitter.buffered == 0
    return lines + final.lines, too_long + final.too_long


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (repeats give empty chunks)."""
    bounds = [0, *sorted(points), len(data)]
    return [data[start:stop] for start, stop in itertools.pairwise(bounds)]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ---------------------------------------------------------------- basic splitting


def test_splits_on_newline() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"one\ntwo\n") == Split(["one", "two"], 0)
    assert splitter.buffered == 0
    assert splitter.end() == Split([], 0)


def test_holds_partial_line_until_its_newline() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"hel") == Split([], 0)
    assert splitter.buffered == 3
    assert splitter.feed(b"lo") == Split([], 0)
    assert splitter.buffered == 5
    assert splitter.feed(b"\nwor") == Split(["hello"], 0)
    assert splitter.buffered == 3
    assert splitter.feed(b"ld\n") == Split(["world"], 0)
    assert splitter.buffered == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\r\n", ["a"]),
        (b"a\r\r\n", ["a\r"]),
        (b"\r\n", [""]),
        (b"a\rb\n", ["a\rb"]),
        (b"\ra\n", ["\ra"]),
        (b"a\r\nb\nc\r\n", ["a", "b", "c"]),
    ],
)
def test_strips_one_carriage_return(data: bytes, expected: list[str]) -> None:
    assert run(100, [data]) == (expected, 0)
    assert run(100, byte_by_byte(data)) == (expected, 0)


def test_keeps_empty_lines() -> None:
    assert run(10, [b"\n\n\r\na\n\n"]) == (["", "", "", "a", ""], 0)


def test_empty_feed_is_harmless() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"") == Split([], 0)
    assert splitter.feed(b"ab") == Split([], 0)
    assert splitter.feed(b"") == Split([], 0)
    assert splitter.buffered == 2
    assert splitter.feed(b"\n") == Split(["ab"], 0)


# ------------------------------------------------------------------ end of input


def test_end_returns_unterminated_last_line() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"x\ny") == Split(["x"], 0)
    assert splitter.end() == Split(["y"], 0)
    assert splitter.buffered == 0


def test_end_without_pending_bytes_returns_nothing() -> None:
    assert LineSplitter(5).end() == Split([], 0)
    splitter = LineSplitter(5)
    splitter.feed(b"line\n")
    assert splitter.end() == Split([], 0)


def test_end_strips_carriage_return() -> None:
    splitter = LineSplitter(3)
    splitter.feed(b"abc\r")
    assert splitter.buffered == 4  # max_line_size + 1: the \r may still be stripped
    assert splitter.end() == Split(["abc"], 0)


def test_end_with_lone_carriage_return_is_an_empty_line() -> None:
    splitter = LineSplitter(3)
    splitter.feed(b"a\n\r")
    assert splitter.end() == Split([""], 0)


def test_end_counts_a_pending_line_over_the_limit() -> None:
    splitter = LineSplitter(3)
    assert splitter.feed(b"abcd") == Split([], 0)
    assert splitter.end() == Split([], 1)


def test_end_does_not_recount_a_line_already_skipped() -> None:
    splitter = LineSplitter(3)
    assert splitter.feed(b"abcdefgh") == Split([], 1)
    assert splitter.buffered == 0
    assert splitter.feed(b"ijk") == Split([], 0)
    assert splitter.end() == Split([], 0)


# ---------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"\xfe\xff",
        b"a\xc3",  # truncated two-byte sequence
        b"\xe2\x82",  # truncated three-byte sequence
        b"\xf0\x9f\x98",  # truncated four-byte sequence
        b"\xc0\xaf",  # overlong encoding
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\x80\x80x\xbf",  # stray continuation bytes
        b"ok \xe2\x82\xac \xe2\x82 \xf0\x9f\x98\x80 \xff end",
        b"\xe2\x82\r",  # truncated sequence right before the stripped \r
    ],
)
def test_invalid_utf8_replaced_like_bytes_decode(raw: bytes) -> None:
    stripped = raw[:-1] if raw.endswith(b"\r") else raw
    expected = stripped.decode("utf-8", errors="replace")
    assert run(100, [raw + b"\n"]) == ([expected], 0)
    assert run(100, byte_by_byte(raw + b"\n")) == ([expected], 0)
    assert run(100, [raw]) == ([expected], 0)  # unterminated, through end()


def test_invalid_utf8_does_not_leak_into_the_next_line() -> None:
    # The replacement is per line: a truncated sequence ends at the newline.
    assert run(100, [b"\xe2\x82\n\xac\n"]) == (["\ufffd", "\ufffd"], 0)


def test_multibyte_characters_split_across_chunks() -> None:
    text = "é€😀 naïve ☃\n日本語\n"
    data = text.encode()
    expected = text.splitlines()
    for size in range(1, 6):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert run(100, chunks) == (expected, 0)


def test_multibyte_limit_is_in_bytes() -> None:
    euro = "€".encode()  # three bytes
    assert run(3, [euro + b"\n"]) == (["€"], 0)
    assert run(2, [euro + b"\n"]) == ([], 1)


# ------------------------------------------------------------- over-long lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"abc\n", (["abc"], 0)),  # exactly at the limit
        (b"abcd\n", ([], 1)),  # limit + 1
        (b"abc\r\n", (["abc"], 0)),  # at the limit once the \r is stripped
        (b"abcd\r\n", ([], 1)),  # over the limit even without the \r
        (b"abc\r\r\n", ([], 1)),  # only one \r is stripped
        (b"abc", (["abc"], 0)),  # unterminated, at the limit
        (b"abcd", ([], 1)),  # unterminated, limit + 1
        (b"abc\r", (["abc"], 0)),  # unterminated, with \r
        (b"abcd\r", ([], 1)),
    ],
)
def test_limit_boundaries(line: bytes, expected: tuple[list[str], int]) -> None:
    data = line + b"ok\n" if line.endswith(b"\n") else line
    if line.endswith(b"\n"):
        expected = ([*expected[0], "ok"], expected[1])
    assert reference(data, 3) == expected
    assert run(3, [data]) == expected
    assert run(3, byte_by_byte(data)) == expected
    for point in range(len(data) + 1):
        assert run(3, cut(data, [point])) == expected


def test_too_long_line_in_one_chunk_is_skipped_and_counted_once() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"x" * 1000 + b"\nok\n") == Split(["ok"], 1)
    assert splitter.buffered == 0


def test_several_too_long_lines_each_counted_once() -> None:
    data = b"short\n" + b"y" * 50 + b"\n" + b"z" * 9 + b"\r\n" + b"fine\n" + b"w" * 7
    assert run(5, [data]) == (["short", "fine"], 3)
    assert run(5, byte_by_byte(data)) == (["short", "fine"], 3)


def test_too_long_line_spanning_many_chunks() -> None:
    splitter = LineSplitter(4)
    counts: list[int] = []
    for _ in range(20):
        split = splitter.feed(b"abc")
        assert split.lines == []
        counts.append(split.too_long)
        assert splitter.buffered <= 5
    split = splitter.feed(b"def\r\nnext\n")
    counts.append(split.too_long)
    assert split.lines == ["next"]
    assert sum(counts) == 1
    assert splitter.feed(b"more\n") == Split(["more"], 0)
    assert splitter.end() == Split([], 0)


def test_too_long_unterminated_line_is_dropped_as_it_arrives() -> None:
    splitter = LineSplitter(8)
    assert splitter.feed(b"q" * 9) == Split([], 0)  # may still end in \r
    assert splitter.buffered == 9
    assert splitter.feed(b"q") == Split([], 1)
    assert splitter.buffered == 0
    for _ in range(100):
        assert splitter.feed(b"q" * 100) == Split([], 0)
        assert splitter.buffered == 0
    assert splitter.feed(b"\nafter\n") == Split(["after"], 0)


def test_lines_after_a_skipped_line_still_flow() -> None:
    splitter = LineSplitter(3)
    assert splitter.feed(b"toolong") == Split([], 1)
    assert splitter.feed(b"er\na") == Split([], 0)
    assert splitter.feed(b"b\ncd\n\n") == Split(["ab", "cd", ""], 0)
    assert splitter.feed(b"e\r\nfff\r\n") == Split(["e", "fff"], 0)


def test_max_line_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line_size"):
        LineSplitter(0)
    with pytest.raises(ValueError, match="max_line_size"):
        LineSplitter(-5)


def test_max_line_size_one() -> None:
    assert run(1, [b"a\n\nbb\nc\r\nd"]) == (["a", "", "c", "d"], 1)


# ---------------------------------------------------------------- properties
#
# Each property states one rule of the module docstring for any input and any
# chunking. Two oracles are used, so that a mistake shared by the splitter and one
# oracle still shows: reference() splits the whole input at once, and
# test_lines_built_from_parts_come_back_decoded builds the input from known lines.

TOKENS = st.sampled_from(
    [
        b"\n",
        b"\r",
        b"\r\n",
        b"a",
        b"bc",
        b"\xc3\xa9",  # é
        b"\xe2\x82\xac",  # €
        b"\xf0\x9f\x98\x80",  # 😀
        b"\xff",
        b"\xe2",
        b"\x80",
    ]
)
STREAMS = st.one_of(
    st.lists(st.one_of(TOKENS, st.binary(max_size=6)), max_size=40).map(b"".join),
    st.binary(max_size=80),
)
LIMITS = st.integers(min_value=1, max_value=12)

CONTENT_TOKENS = st.sampled_from(
    [
        b"\r",
        b"a",
        b"bc",
        b"\xc3\xa9",  # é
        b"\xe2\x82\xac",  # €
        b"\xf0\x9f\x98\x80",  # 😀
        b"\xff",  # never valid
        b"\xe2\x82",  # truncated three-byte sequence
        b"\xf0\x9f",  # truncated four-byte sequence
        b"\x80",  # stray continuation byte
        b"\xc0\xaf",  # overlong encoding
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # above U+10FFFF
    ]
)
CONTENTS = st.lists(
    st.one_of(CONTENT_TOKENS, st.binary(max_size=5).map(lambda raw: raw.replace(b"\n", b""))),
    max_size=6,
).map(b"".join)
"""What goes between two newlines: anything but ``b"\\n"``, often invalid UTF-8."""

CHUNKS = st.lists(
    st.one_of(
        STREAMS,
        st.just(b""),
        st.binary(min_size=20, max_size=60),
        st.integers(1, 30).map(lambda n: b"x" * n),  # a line growing over many reads
    ),
    max_size=12,
)


@budget(300)
@given(data=STREAMS, max_line_size=LIMITS, draw=st.data())
def test_any_chunking_matches_the_oracle(
    data: bytes, max_line_size: int, draw: st.DataObject
) -> None:
    """Any input, cut anywhere (empty chunks included), splits like the whole-input oracle.

    The reader hands the splitter whatever a read returned; where the cuts fall
    must not change a line, a decoding or a count.
    """
    points = draw.draw(st.lists(st.integers(0, len(data)), max_size=12), label="cuts")
    expected = reference(data, max_line_size)
    assert run(max_line_size, cut(data, points)) == expected


@budget(100)
@given(data=STREAMS, max_line_size=LIMITS)
def test_result_is_independent_of_chunking(data: bytes, max_line_size: int) -> None:
    """Whole, byte by byte and in fixed-size chunks, the result is the same (no oracle needed)."""
    whole = run(max_line_size, [data])
    assert run(max_line_size, byte_by_byte(data)) == whole
    for size in (2, 3, 7):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert run(max_line_size, chunks) == whole


@budget(200)
@given(
    lines=st.lists(st.tuples(CONTENTS, st.sampled_from([b"\n", b"\r\n"])), max_size=6),
    last=CONTENTS,
    max_line_size=LIMITS,
    draw=st.data(),
)
def test_lines_built_from_parts_come_back_decoded(
    lines: list[tuple[bytes, bytes]], last: bytes, max_line_size: int, draw: st.DataObject
) -> None:
    """Known lines, joined and cut anywhere, come back as ``line.decode("utf-8", "replace")``.

    The oracle here does not split anything: each line is built from its bytes and
    its ending (``\\n`` or ``\\r\\n``), so the expected result follows from the
    rules directly. The bytes are often invalid UTF-8 and the cuts often fall
    inside a multibyte sequence; decoding must still be per line, exactly like
    ``bytes.decode``, with one ``\\r`` stripped, over-long lines counted, and a
    last line without a newline returned by ``end()`` (a lone ``\\r`` there is an
    empty line; nothing at all is no line).
    """
    expected: list[str] = []
    too_long = 0
    raws = [
        content if ending == b"\r\n" else content.removesuffix(b"\r") for content, ending in lines
    ]
    if last:
        raws.append(last.removesuffix(b"\r"))
    for raw in raws:
        if len(raw) > max_line_size:
            too_long += 1
        else:
            expected.append(raw.decode("utf-8", errors="replace"))
    data = b"".join(content + ending for content, ending in lines) + last
    points = draw.draw(st.lists(st.integers(0, len(data)), max_size=10), label="cuts")
    assert run(max_line_size, cut(data, points)) == (expected, too_long)
    assert run(max_line_size, byte_by_byte(data)) == (expected, too_long)


@budget(200)
@given(chunks=CHUNKS, max_line_size=LIMITS)
def test_every_feed_returns_what_it_completes_and_holds_at_most_one_line(
    chunks: list[bytes], max_line_size: int
) -> None:
    """After every ``feed()``: exactly the lines completed so far, and a bounded buffer.

    * the lines returned so far are those of the input up to its last newline:
      nothing is held back once its newline has arrived, nothing is returned early;
    * ``buffered`` (the only bytes the splitter keeps between calls) never exceeds
      ``max_line_size + 1``, whatever the size of the reads: a line that cannot
      fit any more is discarded as it arrives. Below the limit, all of the
      unfinished line is kept, since it may still become a line;
    * an over-long line is counted once, and at the latest when its bytes are
      discarded (never for a line that may still fit).
    """
    splitter = LineSplitter(max_line_size)
    seen = b""
    lines: list[str] = []
    too_long = 0
    for chunk in chunks:
        split = splitter.feed(chunk)
        seen += chunk
        lines += split.lines
        too_long += split.too_long
        head = seen[: seen.rfind(b"\n") + 1]  # the complete lines so far
        pending = len(seen) - len(head)  # bytes of the line not ended yet
        done_lines, done_too_long = reference(head, max_line_size)
        assert lines == done_lines
        assert splitter.buffered <= max_line_size + 1
        if pending <= max_line_size:
            assert splitter.buffered == pending
            assert too_long == done_too_long
        elif pending > max_line_size + 1:
            assert splitter.buffered == 0
            assert too_long == done_too_long + 1
        else:  # max_line_size + 1: over unless it ends in the \r that is stripped
            assert too_long in (done_too_long, done_too_long + 1)
    final = splitter.end()
    assert splitter.buffered == 0
    assert (lines + final.lines, too_long + final.too_long) == reference(seen, max_line_size)
