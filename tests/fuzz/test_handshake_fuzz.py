"""Fuzz the first bytes of a connection: HTTP upgrade requests, mutated, over real sockets.

Requests start from a valid WebSocket upgrade and are mutated the way broken
clients, proxies and scanners do it: headers dropped, repeated, renamed or
given near-miss and random values, huge or numerous headers, other methods,
targets and HTTP versions, bare LF or CR line ends, a missing blank line,
bytes after the head; then the bytes themselves are cut short, flipped,
inserted or deleted, or replaced by random bytes altogether. Each request is
written in random pieces, and the connection is then half-closed, kept open,
closed or reset.

Besides what :mod:`.harness` checks after every example (the server counts
only the good client again, logged no error, and the good client still
receives), the answer itself must make sense: an HTTP/1.1 status line with a
status this server gives (101 for an accepted upgrade; 200, 404 or 405 for the
plain HTTP routes; 400 or 431 for a malformed request; never another 5xx than
h11's 501 for a Transfer-Encoding it does not implement), no traceback, and
the connection closed after any answer but a 101. A request ended by a
half-close must get an answer (unless the server reset the connection).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from ..wire import SAMPLE_KEY
from .harness import (
    BATCH,
    IGNORE_RANDOM_IN_OTHER_THREADS,
    MAX_REQUEST_HEAD,
    SHRINK_ALLOWANCE,
    Chunk,
    Ending,
    Fuzzer,
    Received,
    fuzz_session,
    split,
)

pytestmark = [pytest.mark.fuzz, IGNORE_RANDOM_IN_OTHER_THREADS]

KEY = SAMPLE_KEY.encode()

VALID_HEADERS = (
    (b"Host", b"127.0.0.1"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", KEY),
    (b"Sec-WebSocket-Version", b"13"),
)

NEAR_MISSES: dict[bytes, tuple[bytes, ...]] = {
    b"host": (b"", b"localhost:99999", b"[::1]", b"xn--a", b"a..b", b"\xff", b"h\xc3\xa9"),
    b"upgrade": (b"WebSocket", b"websocket, h2c", b"h2c", b"", b"web socket", b"websocket\xff"),
    b"connection": (b"upgrade", b"keep-alive, Upgrade", b"close", b"", b"Upgrade, \xff"),
    b"sec-websocket-key": (
        b"",
        b"short",
        b"!" * 22 + b"==",
        KEY[:-2],
        b"\xff" * 24,
        KEY * 2,
        b"A" * 20,  # 15 bytes
        b"A" * 23 + b"=",  # 17 bytes
    ),
    b"sec-websocket-version": (b"8", b"13, 8", b"", b"013", b"13\xff", b"9" * 30),
}

EXTRA_HEADERS = (
    (b"Origin", b"http://127.0.0.1"),
    (b"Origin", b"null"),
    (b"Origin", b"http://\xff"),
    (b"Sec-WebSocket-Protocol", b"chat, superchat"),
    (b"Sec-WebSocket-Protocol", b"\xff"),
    (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"),
    (b"Sec-WebSocket-Extensions", b"x; y=\xff"),
    (b"Content-Length", b"0"),
    (b"Content-Length", b"10"),
    (b"Content-Length", b"-1"),
    (b"Content-Length", b"1, 2"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Transfer-Encoding", b"gzip"),
    (b"Authorization", b"Bearer x"),
    (b"Expect", b"100-continue"),
    (b"Host", b"example.com"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"keep-alive"),
    (b"Connection", b"close"),
)

METHODS = st.one_of(
    st.sampled_from(
        [b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"CONNECT", b"PRI", b"get", b"GET\x00", b""]
    ),
    st.binary(min_size=1, max_size=8),
)
TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/",
            b"/feed?x=1",
            b"/healthz",
            b"/metrics",
            b"/?token=x",
            b"*",
            b"http://127.0.0.1/",
            b"127.0.0.1:80",
            b"//",
            b"/%00%ff",
            b"/\xff",
            b"",
            b"/a b",
        ]
    ),
    st.binary(max_size=16),
    st.integers(100, 2 * MAX_REQUEST_HEAD).map(lambda size: b"/" + b"t" * size),
)
ROUTES = st.sampled_from([b"/", b"/healthz", b"/metrics", b"/nowhere", b"//healthz"])
VERSIONS = st.one_of(
    st.sampled_from(
        [
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/2.0",
            b"HTTP/0.9",
            b"HTTP/1.2",
            b"http/1.1",
            b"HTTP/11",
            b"",
        ]
    ),
    st.binary(max_size=10),
)
LINE_END_MODES = st.sampled_from(["LF", "mixed"])
LINE_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n", b"\n\r"])
NAME_FORMS = st.sampled_from(["as is", "lower", "upper", "space before colon", "empty", "bad"])
SEPARATORS = st.sampled_from([b":", b":\t ", b": \xff", b" : "])
HEADER_EDITS = st.sampled_from(["drop", "value", "duplicate", "name", "move", "extra", "many"])
EXTRAS = st.sampled_from(EXTRA_HEADERS)
BYTE_EDITS = st.sampled_from(["truncate", "flip", "insert", "delete"])
PAUSES = st.lists(st.booleans(), max_size=6)
ENDINGS = st.sampled_from(Ending)
AFTER_HEAD = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=64),
    st.sampled_from(
        [
            b"\x81\x85\x00\x00\x00\x00hello",  # a masked text frame
            b"\x88\x80\x00\x00\x00\x00",  # a masked close frame
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a pipelined request
        ]
    ),
)


BIG_VALUES = st.integers(100, 2 * MAX_REQUEST_HEAD).map(lambda size: b"v" * size)
HEADER_VALUES = {
    name: st.one_of(st.sampled_from(values), st.binary(max_size=24), BIG_VALUES)
    for name, values in NEAR_MISSES.items()
}
OTHER_VALUES = st.one_of(st.just(b""), st.binary(max_size=24), BIG_VALUES)


def header_value(name: bytes) -> st.SearchStrategy[bytes]:
    return HEADER_VALUES.get(name.lower(), OTHER_VALUES)


def renamed(name: bytes, form: str) -> bytes:
    return {
        "as is": name,
        "lower": name.lower(),
        "upper": name.upper(),
        "space before colon": name + b" ",
        "empty": b"",
        "bad": name + b"\x00(",
    }[form]


@st.composite
def edited(draw: st.DrawFn, fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` after a few edits."""
    fields = list(fields)
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(HEADER_EDITS)
        if edit == "extra":
            fields.insert(draw(st.integers(0, len(fields))), draw(EXTRAS))
            continue
        if edit == "many":
            count = draw(st.integers(10, 300))
            fields += [(b"X-%d" % i, b"%d" % i) for i in range(count)]
            continue
        if not fields:
            continue
        i = draw(st.integers(0, len(fields) - 1))
        name, value = fields[i]
        if edit == "drop":
            del fields[i]
        elif edit == "value":
            fields[i] = (name, draw(header_value(name)))
        elif edit == "duplicate":
            fields.insert(draw(st.integers(0, len(fields))), (name, draw(header_value(name))))
        elif edit == "name":
            fields[i] = (renamed(name, draw(NAME_FORMS)), value)
        else:
            fields.insert(draw(st.integers(0, len(fields))), fields.pop(i))
    return fields


@st.composite
def byte_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short, flipped, inserted into or deleted from."""
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(BYTE_EDITS)
        at = draw(st.integers(0, len(data)))
        if edit == "truncate":
            data = data[:at]
        elif edit == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif edit == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
        else:
            data = data[:at] + data[at + draw(st.integers(1, 16)) :]
    return data


FLAWS = st.sets(
    st.sampled_from(
        [
            "method",
            "target",
            "version",
            "separator",
            "line ends",
            "headers",
            "plain",  # no upgrade: a plain HTTP request
            "incomplete",
            "after head",
            "bytes",
        ]
    ),
    max_size=3,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A valid upgrade request with up to three flaws; or, one time in eight, random bytes."""
    if draw(st.integers(0, 7)) == 7:
        return draw(st.binary(max_size=512))
    flaws = draw(FLAWS)
    method = draw(METHODS) if "method" in flaws else b"GET"
    plain_target = draw(ROUTES) if "plain" in flaws else b"/feed"
    target = draw(TARGETS) if "target" in flaws else plain_target
    version = draw(VERSIONS) if "version" in flaws else b"HTTP/1.1"
    separator = draw(SEPARATORS) if "separator" in flaws else b": "
    ends = draw(LINE_END_MODES) if "line ends" in flaws else "CRLF"
    lines = itertools.count()

    def line_end() -> bytes:
        # Each line its own end, in the mixed mode: for the first few lines only.
        if ends == "mixed" and next(lines) < 12:
            return draw(LINE_ENDS)
        return b"\n" if ends == "LF" else b"\r\n"

    fields = list(VALID_HEADERS[:1] if "plain" in flaws else VALID_HEADERS)
    if "headers" in flaws:
        fields = draw(edited(fields))
    data = b" ".join(part for part in (method, target, version) if part) + line_end()
    for name, value in fields:
        data += name + separator + value + line_end()
    if "incomplete" not in flaws:
        data += line_end()
    if "after head" in flaws:
        data += draw(AFTER_HEAD)
    if "bytes" in flaws:
        data = draw(byte_edits(data))
    return data


@dataclass(frozen=True)
class Attempt:
    """A request, the pieces it is written in, and how the connection ends."""

    chunks: tuple[Chunk, ...]
    ending: Ending

    @property
    def data(self) -> bytes:
        return b"".join(chunk.data for chunk in self.chunks)


@st.composite
def attempts(draw: st.DrawFn) -> Attempt:
    data = draw(requests())
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=5))
    pauses = draw(PAUSES)
    return Attempt(split(data, cuts, pauses), draw(ENDINGS))


STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3})(?: [^\r\n]*)?\r\n")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)\r\n", re.IGNORECASE)
STATUSES = {101, 200, 400, 404, 405, 431}


def check_answer(attempt: Attempt, all_sent: bool, received: Received | None) -> None:
    """The answer (if the example read one) is one this server may give."""
    if received is None:
        return
    answer = received.data
    if not answer:
        assert received.reset or not (
            attempt.ending is Ending.EOF and all_sent and attempt.data
        ), "a request ended by a half-close got no answer"
        return
    assert b"Traceback" not in answer
    head, blank, body = answer.partition(b"\r\n\r\n")
    assert blank, f"an incomplete response head: {answer[:200]!r}"
    status_line = STATUS_LINE.match(head + b"\r\n")
    assert status_line, f"not an HTTP/1.1 status line: {head[:100]!r}"
    status = int(status_line[1])
    allowed = STATUSES | ({501} if b"transfer-encoding" in attempt.data.lower() else set())
    assert status in allowed, f"status {status}: {head!r}"
    if status == 101:
        return
    assert received.closed, f"the server did not close the connection after a {status}"
    length = CONTENT_LENGTH.search(head + b"\r\n")
    assert length, f"a {status} without Content-Length: {head!r}"
    assert len(body) in (0, int(length[1])), f"a body of {len(body)} bytes for {head!r}"


async def exchange(fuzz: Fuzzer, attempt: Attempt) -> None:
    stream = await fuzz.connect()
    try:
        all_sent = await fuzz.send(stream, attempt.chunks)
        received = await fuzz.finish(stream, attempt.ending)
    finally:
        await stream.aclose()
    check_answer(attempt, all_sent, received)


@BATCH
@given(attempt=attempts())
def check_attempt(fuzz: Fuzzer, attempt: Attempt) -> None:
    fuzz.run(lambda fuzz: exchange(fuzz, attempt))


async def test_fuzz_the_handshake() -> None:
    async with fuzz_session("handshake", share=0.5) as fuzz:
        with trio.fail_after(fuzz.result.budget + SHRINK_ALLOWANCE):
            await fuzz.drive(check_attempt)
