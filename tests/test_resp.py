"""RESP2 without I/O (``redis_stream.resp``): commands to bytes, bytes to replies, in the default
session.

Every reply is read the same however its bytes are split (at every byte
boundary, one byte at a time, several replies in one chunk), and a server gone
wrong (lengths that are absurd, a reply over the cap, bytes that are not RESP2)
is a :class:`ProtocolError`, not unbounded memory. The connection that uses it
is tested against a real redis-server in ``tests/redis``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_broadcast.redis_stream.resp import (
    MAX_DEPTH,
    NEED_DATA,
    Error,
    ProtocolError,
    Reply,
    ReplyError,
    ReplyParser,
    encode_command,
    encode_reply,
)

from .conftest import budget

utf8 = st.text(st.characters(codec="utf-8"))
one_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
scalars = st.one_of(
    st.binary(max_size=40),
    one_line,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    st.builds(Error, one_line),
)
replies: st.SearchStrategy[Reply] = st.recursive(
    scalars, lambda items: st.lists(items, max_size=5), max_leaves=30
)


def parse_all(parser: ReplyParser) -> list[Reply]:
    found: list[Reply] = []
    while (reply := parser.next_reply()) is not NEED_DATA:
        found.append(reply)
    return found


def parse(data: bytes, **bounds: int) -> list[Reply]:
    parser = ReplyParser(**bounds)
    parser.feed(data)
    return parse_all(parser)


def assert_read_split_at_every_byte(reply: Reply) -> None:
    """``reply``'s bytes, fed in two parts cut at every byte, read back as ``reply``,
    with nothing left over."""
    data = encode_reply(reply)
    for cut in range(len(data) + 1):
        parser = ReplyParser()
        parser.feed(data[:cut])
        before = parse_all(parser)
        parser.feed(data[cut:])
        assert [*before, *parse_all(parser)] == [reply]
        assert parser.buffered == 0


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert encode_command(b"XREAD", "COUNT", 10, b"") == (
        b"*4\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$2\r\n10\r\n$0\r\n\r\n"
    )
    assert encode_command("SET", "k\u00e9", -1) == (
        b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n-1\r\n"
    )


@pytest.mark.parametrize("arg", [1.5, True, None, ["list"]])
def test_a_command_argument_of_another_type_is_refused(arg: object) -> None:
    with pytest.raises(TypeError):
        encode_command(b"SET", arg)  # type: ignore[arg-type]


@budget(300)
@given(st.lists(st.one_of(st.binary(), utf8, st.integers()), min_size=1, max_size=8))
def test_a_command_reads_back_as_its_arguments(args: list[bytes | str | int]) -> None:
    expected = [arg if isinstance(arg, bytes) else str(arg).encode() for arg in args]
    assert parse(encode_command(*args)) == [expected]


def test_each_resp2_type() -> None:
    assert parse(b"+OK\r\n") == ["OK"]
    assert parse(b"-WRONGTYPE Operation against a key\r\n") == [
        Error("WRONGTYPE Operation against a key")
    ]
    assert parse(b":-42\r\n:0\r\n") == [-42, 0]
    assert parse(b"$5\r\nhe\r\no\r\n$0\r\n\r\n$-1\r\n") == [b"he\r\no", b"", None]
    assert parse(b"*-1\r\n*0\r\n") == [None, []]
    assert parse(b"*2\r\n*1\r\n$3\r\n1-0\r\n*2\r\n$4\r\nline\r\n$2\r\nhi\r\n") == [
        [[b"1-0"], [b"line", b"hi"]]
    ]


def test_an_error_reply_is_a_value_that_says_what_redis_said() -> None:
    (error,) = parse(b"-NOPERM this user has no permissions to run the 'eval' command\r\n")
    assert isinstance(error, Error)
    assert error.code == "NOPERM"
    raised = ReplyError("EVAL", error)
    assert raised.code == "NOPERM"
    assert str(raised) == (
        "Redis refused EVAL: NOPERM this user has no permissions to run the 'eval' command"
    )


@budget(300)
@given(replies)
def test_a_reply_reads_back_whole_and_split_at_every_byte(reply: Reply) -> None:
    assert parse(encode_reply(reply)) == [reply]
    assert_read_split_at_every_byte(reply)


@budget(100)
@given(st.lists(replies, min_size=1, max_size=4))
def test_replies_read_back_in_order_one_byte_at_a_time(sent: list[Reply]) -> None:
    data = b"".join(encode_reply(reply) for reply in sent)
    parser = ReplyParser()
    found: list[Reply] = []
    for index in range(len(data)):
        parser.feed(data[index : index + 1])
        found += parse_all(parser)
    assert found == sent
    assert parser.buffered == 0


def test_a_long_bulk_string_in_many_pieces() -> None:
    value = bytes(range(256)) * 4000
    data = encode_reply([value, b"end"])
    parser = ReplyParser()
    for start in range(0, len(data), 1000):
        parser.feed(data[start : start + 1000])
        if start + 1000 < len(data):
            assert parser.next_reply() is NEED_DATA
    assert parser.next_reply() == [value, b"end"]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"$99999999999\r\n", "a reply larger than 1000 bytes"),
        (b"*1\r\n$995\r\n", "a reply larger than 1000 bytes"),
        (b"*2000000\r\n", "a reply of more than 100 items"),
        (b"*60\r\n" + b"*60\r\n:1\r\n" * 2, "a reply of more than 100 items"),
        (b"*1\r\n" * (MAX_DEPTH + 1), f"arrays nested more than {MAX_DEPTH} deep"),
        (b"$-2\r\n", "a length of -2"),
        (b"*-5\r\n", "a length of -5"),
        # Not an empty array that takes a value:
        (b"*00\r\n:1\r\n", "a length written with a leading zero: b'00'"),
        (b"*01\r\n:1\r\n", "a length written with a leading zero: b'01'"),
        (b":1_000\r\n", "not an integer: b'1_000'"),
        (b": 12\r\n", "not an integer: b' 12'"),
        (b":+1\r\n", "not an integer: b'+1'"),
        (b":\r\n", "not an integer: b''"),
        (b"$\r\n", "not an integer: b''"),
        (b":99999999999999999999\r\n", "not an integer"),
        (b"$3\r\nabcd\r\n", "a bulk string not followed by CRLF"),
        (b"_\r\n", "not a RESP2 reply: starts with b'_'"),  # RESP3's null
        (b"%1\r\n", "not a RESP2 reply: starts with b'%'"),  # RESP3's map
        (b"GET x\r\n", "not a RESP2 reply: starts with b'G'"),
    ],
)
def test_what_is_not_a_reply_within_bounds_is_a_protocol_error(data: bytes, says: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(data, max_size=1000, max_items=100)
    assert str(raised.value).startswith(says), raised.value


def test_bytes_past_the_cap_are_refused_as_they_arrive() -> None:
    parser = ReplyParser(max_size=100)
    parser.feed(b"+" + b"x" * 90)  # no end of line yet
    assert parser.next_reply() is NEED_DATA
    with pytest.raises(ProtocolError, match="larger than 100 bytes"):
        parser.feed(b"x" * 20)


def test_the_cap_is_per_reply() -> None:
    parser = ReplyParser(max_size=20, max_items=3)
    for _ in range(10):
        parser.feed(b"*2\r\n$3\r\nabc\r\n:1\r\n")
        assert parser.next_reply() == [b"abc", 1]


entry_ids = st.builds(
    lambda ms, seq: b"%d-%d" % (ms, seq), st.integers(0, 2**48), st.integers(0, 2**64 - 1)
)
stream_entries = st.lists(
    st.tuples(entry_ids, st.binary(max_size=12), st.binary(max_size=40)).map(
        lambda entry: [entry[0], [entry[1], entry[2]]]
    ),
    max_size=4,
)


@budget(200)
@given(stream_entries)
def test_stream_entries_read_in_one_step_read_as_the_loop_reads_them(entries: list[Reply]) -> None:
    """An ``XREAD`` reply's entries take a shortcut (``ReplyParser._entries``): same values,
    whatever the split."""
    assert_read_split_at_every_byte([[b"trio-broadcast:test", entries]])


def test_entries_mixed_with_other_items_read_as_the_loop_reads_them() -> None:
    """The shortcut stops at the first item that is not a one-field entry, and takes up
    again after it, whatever the split."""
    entry: Reply = [b"1-1", [b"line", b"one"]]
    reply: Reply = [
        entry,
        b"1-2",
        entry,
        [b"1-3", [b"a", b"b", b"c", b"d"]],
        [b"1-4", [b"line", b"\r\n"]],
        entry,
        [],
        entry,
    ]
    assert_read_split_at_every_byte(reply)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        # An entry whose lengths do not match its bytes is not taken by the shortcut.
        (b"*2\r\n$5\r\n1-0\r\n*2\r\n$4\r\nline\r\n$2\r\nhi\r\n", "a bulk string not followed"),
        (b"*2\r\n$3\r\n1-0\r\n*2\r\n$3\r\nline\r\n$2\r\nhi\r\n", "a bulk string not followed"),
        (b"*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\nline\r\n$1\r\nhi\r\n", "a bulk string not followed"),
        (
            b"*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\nline\r\n$900\r\n" + b"x" * 900 + b"\r\n",
            "a reply larger",
        ),
    ],
)
def test_a_malformed_stream_entry_is_refused_as_the_loop_refuses_it(
    data: bytes, says: str
) -> None:
    good = encode_reply([b"1-1", [b"line", b"ok"]])
    with pytest.raises(ProtocolError) as raised:
        # In an array, after a good entry, as in an XREAD reply.
        parse(b"*2\r\n" + good + data, max_size=800, max_items=100)
    assert str(raised.value).startswith(says), raised.value


def test_too_many_items_in_entries_is_refused() -> None:
    entry = encode_reply([b"1-0", [b"line", b"x"]])
    with pytest.raises(ProtocolError, match="more than 10 items"):
        parse(b"*3\r\n" + entry * 3, max_items=10)
