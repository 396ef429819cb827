"""Fuzz what follows the handshake: WebSocket frames, well-formed or broken, over real sockets.

After a valid handshake by hand, the fuzz client sends one of:

* a *conversation*: text and binary messages (fragmented at random byte
  offsets, UTF-8 sequences included), pings and pongs between and inside
  them, masked with random keys, perhaps a message over the server's
  ``max_message_size`` (in UTF-8 bytes), perhaps a flood of empty
  continuation frames about as long as a message may span, perhaps a close
  frame with a valid code and reason;
* the same, broken: reserved opcodes, RSV bits, no mask, announced lengths
  that lie (or use the 16- and 64-bit forms, with the top bit set), oversized
  or fragmented control frames, a continuation with nothing to continue, a
  new message inside a fragmented one, invalid UTF-8 in text and close
  reasons, close frames of one byte or with codes that must not be sent,
  random bytes between frames, the stream cut short;
* random bytes.

Lines are published through the server at random points meanwhile, so that
broadcast frames go out to the fuzz client while it misbehaves. The bytes
are written in random pieces, and the connection then ends as in the
handshake fuzz (half-close, kept open, closed, reset).

Besides what :mod:`.harness` checks after every example, what the server sent
must be well-formed server frames: final, no RSV bits, not masked, known
opcodes, control frames of at most 125 bytes, valid UTF-8 in text, nothing
after a close frame, and a close code a server may send, never 1011 (internal
error). For a conversation the answer is known exactly: each complete message
echoed in order (the last ones may be missing once the connection ends, since
an echo is never written after the close has begun), a pong for each ping
with its payload, and the close code echoed, or 1009 for the oversized message,
1008 for one still unfinished after the most fragments a message may span.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_broadcast.protocol_errors import max_fragments

from ..conftest import wait_until
from ..wire import SAMPLE_KEY, ServerFrameParser, upgrade_request
from ..wire import Frame as ServerFrame
from .harness import (
    BATCH,
    BROADCAST_MARK,
    IGNORE_RANDOM_IN_OTHER_THREADS,
    MAX_MESSAGE_SIZE,
    SHRINK_ALLOWANCE,
    Chunk,
    Ending,
    Fuzzer,
    Received,
    fuzz_session,
)

pytestmark = [pytest.mark.fuzz, IGNORE_RANDOM_IN_OTHER_THREADS]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RESERVED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
# 1011 (internal error) is left out: the server must never send it, so
# seeing it means the server chose it.
CLOSE_CODES = (1000, 1001, 1003, 1007, 1008, 1010, 3000, 4000, 4999)
BAD_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
BAD_UTF8 = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80")
# What a server may send in a close frame: a code for its own reasons, or the
# peer's code echoed (CLOSE_CODES).
SERVER_CLOSE_CODES = {1000, 1001, 1002, 1007, 1008, 1009, *CLOSE_CODES}

UPGRADE = upgrade_request("/fuzz", key=SAMPLE_KEY)


@dataclass(frozen=True)
class Frame:
    """One client frame, able to lie about everything in its header."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    mask: bytes | None = b"\x00\x00\x00\x00"
    length: int | None = None
    """The announced payload length, when it is not the real one."""
    width: int = 0
    """Bytes of extended length: 0 for the shortest form, else 2 or 8 whatever the length."""

    def encode(self) -> bytes:
        length = len(self.payload) if self.length is None else self.length
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        masked = 0x80 if self.mask is not None else 0
        if self.width == 8 or (self.width == 0 and length > 0xFFFF):
            header = struct.pack("!BBQ", first, masked | 127, length % 2**64)
        elif self.width == 2 or length > 125:
            header = struct.pack("!BBH", first, masked | 126, length % 2**16)
        else:
            header = struct.pack("!BB", first, masked | length)
        if self.mask is None:
            return header + self.payload
        size = len(self.payload)
        key = (self.mask * (size // 4 + 1))[:size]
        hidden = (int.from_bytes(self.payload) ^ int.from_bytes(key)).to_bytes(size)
        return header + self.mask + hidden


@dataclass
class Expected:
    """What the server answers to a well-formed conversation."""

    echoes: list[str | bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    close: int | None = None
    """The code of the server's close frame; ``None``: it sends none."""


@dataclass(frozen=True)
class Script:
    """What the fuzz client sends after the handshake, and how it ends."""

    chunks: tuple[Chunk, ...]
    ending: Ending
    expected: Expected | None
    """Known for a well-formed conversation only."""


# --- well-formed conversations ----------------------------------------------------


def text_of_size(size: int, char: str) -> str:
    """``char`` repeated, then ASCII: ``size`` bytes of UTF-8, which the limit counts."""
    width = len(char.encode())
    return char * (size // width) + "a" * (size % width)


SMALL_TEXT = st.text(max_size=40)
LARGE_SIZES = st.integers(MAX_MESSAGE_SIZE - 8, MAX_MESSAGE_SIZE + 8)
TEXTS = st.one_of(SMALL_TEXT, st.builds(text_of_size, LARGE_SIZES, st.sampled_from("aé€😀")))
BINARIES = st.one_of(st.binary(max_size=40), LARGE_SIZES.map(lambda n: b"\x00" * n))
CONTROL_PAYLOADS = st.binary(max_size=125)
MASKS = st.one_of(st.just(b"\x00\x00\x00\x00"), st.binary(min_size=4, max_size=4))
ITEMS = st.sampled_from(["text", "binary", "ping", "pong"] * 4 + ["flood"])
"""A flood is one item in 17: it costs as much as many others."""
FRAGMENTS = max_fragments(MAX_MESSAGE_SIZE)
"""The most frames a message may span (1,024 here)."""
FLOOD_SIZES = st.integers(FRAGMENTS - 2, FRAGMENTS + 2)
REASONS = st.text(max_size=20)


@st.composite
def message_frames(draw: st.DrawFn, message: str | bytes) -> list[Frame]:
    """``message`` in fragments cut at random byte offsets, pings and pongs between them."""
    data = message.encode() if isinstance(message, str) else message
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=3))))
    bounds = [0, *(cut for cut in cuts if cut < len(data)), len(data)]
    pieces = [data[start:end] for start, end in itertools.pairwise(bounds)]
    frames: list[Frame] = []
    for i, piece in enumerate(pieces):
        if i and draw(st.booleans()):
            frames.append(Frame(draw(st.sampled_from([PING, PONG])), draw(CONTROL_PAYLOADS)))
        opcode = CONTINUATION if i else (TEXT if isinstance(message, str) else BINARY)
        frames.append(Frame(opcode, piece, fin=i == len(pieces) - 1, mask=draw(MASKS)))
    return frames


@st.composite
def flood_frames(draw: st.DrawFn) -> list[Frame]:
    """A text message in about as many frames as one may span, all empty but the last."""
    count = draw(FLOOD_SIZES)
    empty = [Frame(CONTINUATION, fin=False)] * (count - 2)
    return [Frame(TEXT, fin=False), *empty, Frame(CONTINUATION, b"flood")]


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[Frame], Expected]:
    frames: list[Frame] = []
    for _ in range(draw(st.integers(0, 5))):
        item = draw(ITEMS)
        if item in ("text", "binary"):
            message: str | bytes = draw(TEXTS) if item == "text" else draw(BINARIES)
            frames += draw(message_frames(message))
        elif item == "flood":
            frames += draw(flood_frames())
        else:
            opcode = PING if item == "ping" else PONG
            frames.append(Frame(opcode, draw(CONTROL_PAYLOADS), mask=draw(MASKS)))
    if draw(st.booleans()):
        if draw(st.booleans()):
            code, reason = draw(st.sampled_from(CLOSE_CODES)), draw(REASONS)
            payload = struct.pack("!H", code) + reason.encode()[:123]
        else:
            payload = b""
        frames.append(Frame(CLOSE, payload, mask=draw(MASKS)))
    return frames, expect(frames)


def expect(frames: list[Frame]) -> Expected:
    """What the server answers to well-formed ``frames``."""
    expected = Expected()
    parts: list[bytes] = []
    is_text = False
    for frame in frames:
        if frame.opcode == PING:
            expected.pongs.append(frame.payload)
        elif frame.opcode == CLOSE:
            expected.close = struct.unpack("!H", frame.payload[:2])[0] if frame.payload else 1005
            break
        elif frame.opcode in (TEXT, BINARY, CONTINUATION):
            if frame.opcode != CONTINUATION:
                is_text = frame.opcode == TEXT
            parts.append(frame.payload)
            data = b"".join(parts)
            # Text counts the UTF-8 bytes of the characters decoded so far.
            size = len(data.decode(errors="ignore").encode()) if is_text else len(data)
            if size > MAX_MESSAGE_SIZE:
                expected.close = 1009
                break
            if frame.fin:
                expected.echoes.append(data.decode() if is_text else data)
                parts = []
            elif len(parts) == FRAGMENTS:
                expected.close = 1008  # the message goes on after its last allowed frame
                break
    return expected


# --- broken ones ------------------------------------------------------------------

LIES = st.one_of(
    st.integers(0, 300),
    st.sampled_from([2**16 - 1, 2**16, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
)
WIDTHS = st.sampled_from([0, 2, 8])
CONTROL_OPCODES = st.sampled_from([PING, PONG, CLOSE])


def _bad_utf8(draw: st.DrawFn, frame: Frame) -> Frame:
    bad = draw(st.sampled_from(BAD_UTF8))
    if frame.opcode == CLOSE:
        return replace(frame, payload=b"\x03\xe8" + bad)
    return replace(frame, opcode=TEXT, payload=frame.payload + bad)


def _bad_close(draw: st.DrawFn, frame: Frame) -> Frame:
    code = struct.pack("!H", draw(st.sampled_from(BAD_CLOSE_CODES)))
    return Frame(CLOSE, draw(st.sampled_from([b"\x03", code])), mask=frame.mask)


FRAME_MUTATIONS: dict[str, Callable[[st.DrawFn, Frame], Frame]] = {
    "reserved opcode": lambda draw, f: replace(f, opcode=draw(st.sampled_from(RESERVED_OPCODES))),
    "rsv": lambda draw, f: replace(f, rsv=draw(st.integers(1, 7))),
    "unmasked": lambda draw, f: replace(f, mask=None),
    "length lie": lambda draw, f: replace(f, length=draw(LIES), width=draw(WIDTHS)),
    "long length form": lambda draw, f: replace(f, width=draw(st.sampled_from([2, 8]))),
    "long control": lambda draw, f: Frame(draw(CONTROL_OPCODES), b"\x03\xe8" + b"c" * 200),
    "fragmented control": lambda draw, f: replace(f, opcode=draw(CONTROL_OPCODES), fin=False),
    "bad utf-8": _bad_utf8,
    "bad close": _bad_close,
}
INSERTIONS: dict[str, Callable[[st.DrawFn], list[Frame | bytes]]] = {
    "garbage": lambda draw: [draw(st.binary(min_size=1, max_size=32))],
    "stray continuation": lambda draw: [Frame(CONTINUATION, draw(st.binary(max_size=8)))],
    "message inside message": lambda draw: [Frame(TEXT, b"a", fin=False), Frame(BINARY, b"b")],
}
MUTATIONS = st.sampled_from([*FRAME_MUTATIONS, *INSERTIONS])


@st.composite
def broken(draw: st.DrawFn, frames: list[Frame]) -> list[Frame | bytes]:
    """``frames`` with 1 to 3 things wrong; bytes are inserted as they are."""
    out: list[Frame | bytes] = list(frames) or [Frame(TEXT, b"x")]
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(MUTATIONS)
        i = draw(st.integers(0, len(out) - 1))
        item = out[i]
        if mutation in INSERTIONS:
            out[i:i] = INSERTIONS[mutation](draw)
        elif isinstance(item, Frame):
            out[i] = FRAME_MUTATIONS[mutation](draw, item)
    return out


def encode(items: list[Frame] | list[Frame | bytes]) -> bytes:
    return b"".join(item if isinstance(item, bytes) else item.encode() for item in items)


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    kind = draw(st.sampled_from(["conversation", "broken", "random"]))
    expected: Expected | None = None
    if kind == "random":
        data = draw(st.binary(min_size=1, max_size=512))
    else:
        frames, expected = draw(conversations())
        if kind == "broken":
            data = encode(draw(broken(frames)))
            expected = None
            if draw(st.booleans()):
                data = data[: draw(st.integers(0, len(data)))]
        else:
            data = encode(frames)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4))))
    bounds = [0, *(cut for cut in cuts if cut < len(data)), len(data)]
    chunks = tuple(
        Chunk(data[start:end], pause=draw(st.booleans()), publish=draw(st.booleans()))
        for start, end in itertools.pairwise(bounds)
    )
    return Script(chunks, draw(st.sampled_from(Ending)), expected)


# --- the oracle -------------------------------------------------------------------


@dataclass
class ServerFrames:
    """What the server sent, less the broadcast lines."""

    echoes: list[str | bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    close: int | None = None


def _sort_out(seen: ServerFrames, frame: ServerFrame) -> None:
    if frame.opcode == TEXT:
        if not frame.text.startswith(BROADCAST_MARK):
            seen.echoes.append(frame.text)
    elif frame.opcode == BINARY:
        seen.echoes.append(frame.payload)
    elif frame.opcode == PONG:
        seen.pongs.append(frame.payload)
    elif frame.opcode == CLOSE:
        seen.close = 1005 if frame.close_code is None else frame.close_code
        assert seen.close in SERVER_CLOSE_CODES | {1005}, f"close code {seen.close}"


def parse_server_frames(data: bytes, complete: bool) -> ServerFrames:
    """Check that ``data`` is a sequence of frames a server may send; sort them out.

    The strict parser (:class:`~tests.wire.ServerFrameParser`) checks each
    frame, and that nothing follows the close frame. ``complete``: the last
    frame may not be cut short (it may when the connection was reset).
    """
    seen = ServerFrames()
    parser = ServerFrameParser()
    for frame in parser.feed(data):
        _sort_out(seen, frame)
    assert not (complete and parser.incomplete), (
        f"the server's last frame is cut short: {data[parser.offset :][:40]!r}"
    )
    return seen


def check_answer(script: Script, received: Received | None) -> None:
    if received is None:
        return
    seen = parse_server_frames(received.data, complete=not received.reset)
    expected = script.expected
    if expected is None or received.reset:
        return
    assert seen.pongs == expected.pongs, "pongs are not the pings' payloads"
    ended = received.closed or expected.close is not None
    if ended:
        count = len(seen.echoes)
        assert seen.echoes == expected.echoes[:count], "echoes are not the messages sent"
    else:
        assert seen.echoes == expected.echoes, "echoes are not the messages sent"
    # Whatever came before the half-close is read first: the close is answered.
    assert seen.close == expected.close, f"closed with {seen.close}, not {expected.close}"


async def converse(fuzz: Fuzzer, script: Script) -> None:
    stream = await fuzz.connect()
    try:
        await stream.send_all(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some()
            assert chunk, "the server closed during a valid handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        await wait_until(lambda: fuzz.server.clients == 2)
        rest = head.partition(b"\r\n\r\n")[2]
        await fuzz.send(stream, script.chunks)
        received = await fuzz.finish(stream, script.ending)
    finally:
        await stream.aclose()
    if received is not None:
        received = Received(rest + received.data, received.closed, received.reset)
    check_answer(script, received)


@BATCH
@given(script=scripts())
def check_script(fuzz: Fuzzer, script: Script) -> None:
    fuzz.run(lambda fuzz: converse(fuzz, script))


async def test_fuzz_the_frames() -> None:
    async with fuzz_session("frames", share=0.5) as fuzz:
        with trio.fail_after(fuzz.result.budget + SHRINK_ALLOWANCE):
            await fuzz.drive(check_script)
