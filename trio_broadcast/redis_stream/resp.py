"""RESP2, the Redis protocol, without I/O: a command's bytes, and replies from bytes.

The hot path (an append's ``EVAL``, a reader's ``XREAD BLOCK``) speaks to Redis
on a connection of its own
(:mod:`~trio_broadcast.redis_stream.resp_connection`), and this module is
everything about that conversation that is not I/O, in the way h11 and
wsproto are built: :func:`encode_command` turns a command into bytes, and a
:class:`ReplyParser` is fed whatever bytes arrive and hands back each reply
once it is complete. Tested without Redis (``tests/test_resp.py``), including
replies split at every byte.

Replies are plain values: a bulk string is ``bytes``, a simple string ``str``,
an integer ``int``, a null (bulk or array) ``None``, an array a ``list``, and
an error reply an :class:`Error` value, which the caller raises (a
:class:`ReplyError`) if it is the answer to its command. Only RESP2's five
types are read: the connection never asks for RESP3 (``HELLO 3``).

A reply from a server gone wrong must not take unbounded memory: a parser
refuses (:class:`ProtocolError`) a reply larger than its ``max_size`` bytes as
soon as a length says so or that many bytes have arrived, arrays nested deeper
than :data:`MAX_DEPTH`, and anything that is not RESP2.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, TypeAlias


class RespError(Exception):
    """Base of what this module's users raise about a conversation with Redis."""


class ProtocolError(RespError):
    """The server sent something that is not a RESP2 reply, or one over the bounds."""


class ReplyError(RespError):
    """Redis answered a command with an error reply (``-WRONGTYPE …``, ``-NOPERM …``)."""

    def __init__(self, command: str, error: Error) -> None:
        super().__init__(f"Redis refused {command}: {error.message}")
        self.error = error

    @property
    def code(self) -> str:
        """The error's first word (``WRONGTYPE``, ``NOAUTH``, ``ERR``…), as Redis prefixes it."""
        return self.error.code


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply, as a value: the caller decides whether to raise it."""

    message: str

    @property
    def code(self) -> str:
        return self.message.split(" ", 1)[0]


Reply: TypeAlias = "bytes | str | int | Error | list[Reply] | None"
"""A parsed reply (see the module docstring for which RESP2 type becomes which)."""

Arg: TypeAlias = bytes | str | int
"""A command's argument: bytes as they are, text as UTF-8, an integer in decimal."""


class _NeedData(enum.Enum):
    NEED_DATA = enum.auto()


NEED_DATA: Final = _NeedData.NEED_DATA
"""What :meth:`ReplyParser.next_reply` returns until a whole reply has arrived."""

MAX_DEPTH = 16
"""Arrays nested deeper than this are refused (an ``XREAD`` reply nests 4 deep)."""
MAX_SIZE = 2 * 1024 * 1024 * 1024
"""Default cap on one reply's bytes. An ``XREAD`` of 1,000 entries of lines up to
``--max-line-size`` (1 MiB by default) is up to about 1 GiB, and a reply over the cap
is refused every time it is asked for again: a reader would never get past it."""
MAX_ITEMS = 1_000_000
"""Default cap on the array items of one reply (an ``XREAD`` of 1,000 entries of ours has
5,000)."""

CRLF: Final = b"\r\n"
_ENTRY_HEAD = re.compile(
    rb"\*2\r\n\$([0-9]{1,2})\r\n([0-9]{1,20}-[0-9]{1,20})\r\n"  # *2 $<n> <id>
    rb"\*2\r\n\$([0-9]{1,3})\r\n([^\r\n]{0,999})\r\n"  # *2 $<n> <name>
    rb"\$([0-9]{1,10})\r\n"  # $<n>, then the value
)
"""A stream entry with one field, up to its value (:meth:`ReplyParser._entries`)."""
ENTRY_START: Final = b"*2\r\n$"


def encode_command(*args: Arg) -> bytes:
    """The bytes of one command: a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            raw = arg
        elif isinstance(arg, str):
            raw = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            raw = b"%d" % arg
        else:
            raise TypeError(f"a Redis command argument is bytes, str or int, not {arg!r}")
        parts.append(b"$%d\r\n" % len(raw))
        parts.append(raw)
        parts.append(CRLF)
    return b"".join(parts)


def encode_reply(reply: Reply) -> bytes:
    """The bytes a server sends for ``reply`` (for tests and fakes; ``None`` as a null bulk)."""
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, str):
        _one_line(reply)
        return b"+%s\r\n" % reply.encode()
    if isinstance(reply, Error):
        _one_line(reply.message)
        return b"-%s\r\n" % reply.message.encode()
    if isinstance(reply, bool):
        raise TypeError("a reply is not a bool")
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if reply is None:
        return b"$-1\r\n"
    return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)


def _one_line(text: str) -> None:
    if "\r" in text or "\n" in text:
        raise ValueError(f"a simple string or error is one line: {text!r}")


class ReplyParser:
    """Turns the bytes from a Redis connection into replies, in order, however they are split.

    :meth:`feed` what arrives, then call :meth:`next_reply` until it returns
    :data:`NEED_DATA`. An array that has only partly arrived is kept as far
    as it got (its items so far, and how many more it needs), so bytes are
    read once whatever the split, and a long bulk string is not looked at
    until all of it is there. A reply over ``max_size`` bytes, or with more
    than ``max_items`` array items in all, is a :class:`ProtocolError` as soon
    as a length announces it or the bytes arrive, whichever is first. After a
    :class:`ProtocolError` the parser (and its connection) is of no further use.
    """

    def __init__(self, max_size: int = MAX_SIZE, max_items: int = MAX_ITEMS) -> None:
        self.max_size = max_size
        self.max_items = max_items
        self._buffer = b""
        self._chunks: list[bytes | bytearray] = []
        self._chunked = 0
        """Bytes in ``_chunks``, not yet joined to ``_buffer``."""
        self._need = 1
        """Bytes ``_buffer`` must hold before parsing can get any further."""
        self._stack: list[tuple[list[Reply], int]] = []
        """The arrays being filled, outermost first, each with the length it will have."""
        self._size = 0
        """Bytes of the current reply consumed so far."""
        self._items = 0
        """Array items the current reply has announced so far."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a reply."""
        return len(self._buffer) + self._chunked + self._size

    def feed(self, data: bytes | bytearray) -> None:
        """Add bytes from the connection."""
        if not data:
            return
        self._chunks.append(data)
        self._chunked += len(data)
        if self.buffered > self.max_size:
            raise ProtocolError(f"a reply larger than {self.max_size} bytes")

    def next_reply(self) -> Reply | _NeedData:
        """The next complete reply, or :data:`NEED_DATA`.

        One loop, with what each type needs written out in it: a read of
        1,000 entries is 5,000 values, and a function call or two per value
        took a third of the time. A stream entry is read in one step when it
        can be (:meth:`_entries`).
        """
        if len(self._buffer) + self._chunked < self._need:
            return NEED_DATA
        buffer = self._join()
        size = len(buffer)
        find = buffer.find
        stack = self._stack
        pos = 0
        while True:
            value: Reply
            if (
                stack
                and buffer.startswith(ENTRY_START, pos)
                and (after := self._entries(buffer, pos)) > pos
            ):
                pos = after
                items, length = stack[-1]
                if len(items) < length:
                    continue  # the next item is not such an entry, or not all there
                stack.pop()
                value = items
            else:
                end = find(CRLF, pos)
                if end < 0:
                    return self._wait(buffer, pos, size + 1)
                kind = buffer[pos]
                raw = buffer[pos + 1 : end]
                if kind == 0x24 and raw.isdigit() and len(raw) < 19:  # $ bulk string
                    stop = end + 2 + int(raw)
                    if self._size + stop > self.max_size:
                        raise ProtocolError(f"a reply larger than {self.max_size} bytes")
                    if size < stop + 2:
                        return self._wait(buffer, pos, stop + 2)
                    if not buffer.startswith(CRLF, stop):
                        raise ProtocolError("a bulk string not followed by CRLF")
                    value = buffer[end + 2 : stop]
                    pos = stop + 2
                elif kind == 0x2A and raw.isdigit() and raw[0] != 0x30:  # * array, not *0 or *01
                    self._open(int(raw))
                    pos = end + 2
                    continue
                else:
                    value = _line(kind, raw)
                    pos = end + 2
            # One value complete: it fills arrays, or it is the reply.
            while stack:
                items, length = stack[-1]
                items.append(value)
                if len(items) < length:
                    break
                stack.pop()
                value = items
            else:
                self._buffer = buffer[pos:]
                self._need = 1
                self._size = 0
                self._items = 0
                return value

    def _entries(self, buffer: bytes, pos: int) -> int:
        """Stream entries with one field, from ``pos`` into the innermost array: where they end.

        ``[id, [name, value]]``: an ``XREAD`` of ours returns up to 1,000 of
        them, and parsing them is about a quarter of an instance's CPU in R2.
        Each is one regular expression's match, with no pass of the loop per
        value and no function call per entry: 4.2-4.8 µs an entry when each
        entry was a call of its own, 2.9-3.2 µs this way, against 3.9-4.2 µs
        for coredis's compiled parser in the same runs
        (``python bench/redis_cost.py --read-cost``). It stops at the first
        item that is not such an entry, or not all there, or would go over
        the bounds, or when the array is full, and leaves the rest to the
        loop, which reads it, or refuses it, as it would have.
        """
        if len(self._stack) + 2 > MAX_DEPTH:
            return pos
        items, length = self._stack[-1]
        room = min(length - len(items), (self.max_items - self._items) // 4)
        limit = self.max_size - self._size
        match = _ENTRY_HEAD.match
        first = len(items)
        while room and (head := match(buffer, pos)) is not None:
            id_length, entry_id, name_length, name, value_length = head.groups()
            start = head.end()
            stop = start + int(value_length)
            if (
                len(entry_id) != int(id_length)
                or len(name) != int(name_length)
                or buffer[stop : stop + 2] != CRLF
                or stop + 2 > limit
            ):
                break
            items.append([entry_id, [name, buffer[start:stop]]])
            pos = stop + 2
            room -= 1
        self._items += 4 * (len(items) - first)
        return pos

    def _join(self) -> bytes:
        """The bytes not parsed yet, in one piece."""
        if self._chunks:
            self._buffer = b"".join([self._buffer, *self._chunks])
            self._chunks.clear()
            self._chunked = 0
        return self._buffer

    def _open(self, length: int) -> None:
        """An array of ``length`` items starts."""
        self._items += length
        if self._items > self.max_items:
            raise ProtocolError(f"a reply of more than {self.max_items} items")
        if len(self._stack) >= MAX_DEPTH:
            raise ProtocolError(f"arrays nested more than {MAX_DEPTH} deep")
        self._stack.append(([], length))

    def _wait(self, buffer: bytes, pos: int, need: int) -> _NeedData:
        """Keep ``buffer`` from ``pos`` on, until it holds ``need`` bytes (counted from 0)."""
        if pos:
            self._buffer = buffer[pos:]
            self._size += pos
        self._need = need - pos
        return NEED_DATA


def _line(kind: int, raw: bytes) -> Reply:
    """A one-line value: a simple string, an integer, an error, a null, an empty array."""
    if kind in (0x24, 0x2A):  # $ or * with no count of bytes or items
        if raw == b"0" and kind == 0x2A:
            return []
        _check_null(raw)
        return None
    if kind == 0x2B:  # +
        return raw.decode("utf-8", errors="replace")
    if kind == 0x3A:  # :
        return _integer(raw)
    if kind == 0x2D:  # -
        return Error(raw.decode("utf-8", errors="replace"))
    raise ProtocolError(f"not a RESP2 reply: starts with {bytes([kind])!r}")


def _check_null(raw: bytes) -> None:
    """A bulk string's or an array's length that is not a count: -1 (null), nothing else."""
    if raw.isdigit() and raw[:1] == b"0":  # the loop takes an array's count without them
        raise ProtocolError(f"a length written with a leading zero: {raw[:32]!r}")
    if raw != b"-1":
        raise ProtocolError(f"a length of {_integer(raw)}")


def _integer(raw: bytes) -> int:
    """The decimal integer ``raw``, strictly (no sign but ``-``, no spaces, no ``_``)."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not (digits.isdigit() and len(digits) <= 19):
        raise ProtocolError(f"not an integer: {raw[:32]!r}")
    return int(raw)
