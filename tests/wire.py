"""Speaking WebSocket by hand, for tests/, bench/ and conformance/: one copy of each piece.

* where the installed command is (:func:`command_beside_python`, :func:`trio_broadcast_command`);
* the opening handshake: the request (:func:`upgrade_request`) and the answer's
  accept key (:func:`accept_key`);
* client frames, masked (:func:`masked_header`, :func:`masked_frame`);
* a strict parser of what a server may send (:class:`ServerFrameParser`): sans-I/O,
  feed it bytes in any chunks, get whole frames back. It fails with
  :class:`ProtocolViolation` on anything RFC 6455 (section 5) forbids a server to
  send, and on what this server never sends (a fragmented message), so that a
  frame written inside another frame cannot pass unnoticed: its header lands
  where payload was expected, and the bytes after it are read as a header;
* :class:`RawClient`: a client on a raw socket, which can misbehave on purpose.

Standard library and Trio only, no pytest: bench/ and conformance/ are scripts
that run without the test dependencies. They put the repository root on
``sys.path`` and import ``tests.wire``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

COMMAND_NAME = "trio-broadcast"


def command_beside_python() -> Path:
    """Where the installed command is in the environment of this Python (a venv's bin)."""
    return Path(sys.executable).with_name(COMMAND_NAME)


def trio_broadcast_command() -> str | None:
    """The installed command: beside this Python, else on PATH; ``None`` if neither."""
    beside = command_beside_python()
    return str(beside) if beside.exists() else shutil.which(COMMAND_NAME)


# --- the opening handshake -------------------------------------------------------------

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
"""The key of RFC 6455's example (section 1.3), for requests that need not vary."""


def upgrade_request(
    target: str = "/",
    *headers: str | bytes,
    host: str | bytes | None = "127.0.0.1",
    key: str | bytes | None = None,
    version: str | bytes = "HTTP/1.1",
) -> bytes:
    """A WebSocket opening handshake request; ``headers`` (whole lines) come last.

    ``key=None`` draws a fresh random key; ``host=None`` leaves the Host header out.
    """
    key = base64.b64encode(os.urandom(16)) if key is None else key
    lines = [
        b"GET " + _bytes(target) + b" " + _bytes(version),
        *([b"Host: " + _bytes(host)] if host is not None else []),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + _bytes(key),
        b"Sec-WebSocket-Version: 13",
        *map(_bytes, headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def accept_key(key: str | bytes) -> bytes:
    """The Sec-WebSocket-Accept value that answers ``key``."""
    return base64.b64encode(hashlib.sha1(_bytes(key) + GUID.encode()).digest())


# --- client frames ---------------------------------------------------------------------

ZERO_MASK = bytes(4)
"""A masking key that leaves the payload as it is (any key is valid)."""


def masked_header(opcode: int, length: int, mask: bytes = ZERO_MASK, *, fin: bool = True) -> bytes:
    """The head of a masked client frame: ``length`` payload bytes, final if ``fin``."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask


def masked_frame(
    opcode: int, payload: bytes, mask: bytes | None = None, *, fin: bool = True
) -> bytes:
    """A whole client frame; ``mask=None`` draws a random masking key."""
    mask = os.urandom(4) if mask is None else mask
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    hidden = (int.from_bytes(payload) ^ int.from_bytes(key)).to_bytes(size)
    return masked_header(opcode, size, mask, fin=fin) + hidden


# --- what a server sends ---------------------------------------------------------------

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL = frozenset({CLOSE, PING, PONG})
_KNOWN = frozenset({TEXT, BINARY, *CONTROL})


class ProtocolViolation(AssertionError):
    """The server sent bytes that no conforming server sends."""


@dataclass(frozen=True, slots=True)
class Frame:
    opcode: int
    payload: bytes

    @property
    def text(self) -> str:
        assert self.opcode == TEXT, self
        return self.payload.decode()

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE, self
        return int(struct.unpack("!H", self.payload[:2])[0]) if self.payload else None


def line_messages(frames: Sequence[bytes]) -> list[tuple[str, str]]:
    """The ``(ID, line)`` of each ``trio-broadcast.v1`` ``line`` message in ``frames``."""
    parser = ServerFrameParser()
    messages = [json.loads(frame.text) for frame in parser.feed(b"".join(frames))]
    assert parser.incomplete == 0
    assert len(messages) == len(frames), messages
    assert all(message["type"] == "line" for message in messages), messages
    return [(message["id"], message["line"]) for message in messages]


class ServerFrameParser:
    """Incremental and strict: every byte must belong to a whole, valid server frame."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.offset = 0
        """Stream offset of the first byte not yet parsed into a frame (for messages)."""
        self.closed = False
        """A close frame was parsed: nothing may follow it."""

    @property
    def incomplete(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return the frames it completes. Raises :class:`ProtocolViolation`."""
        if data and self.closed:
            raise ProtocolViolation(f"{len(data)} bytes after the close frame: {data[:16]!r}")
        self._buffer += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _fail(self, why: str) -> ProtocolViolation:
        context = bytes(self._buffer[:24])
        return ProtocolViolation(f"at stream offset {self.offset}: {why}; bytes {context!r}")

    def _header(self) -> tuple[int, int, int] | None:
        """Opcode, payload length and header size of the next frame, once all there."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        opcode = first & 0x0F
        if first & 0x70:
            raise self._fail("reserved bits set (no extension was negotiated)")
        if opcode not in _KNOWN:
            kind = "continuation" if opcode == CONTINUATION else "reserved"
            raise self._fail(f"{kind} opcode {opcode:#x}")
        if not first & 0x80:
            raise self._fail("a fragmented frame (this server sends whole messages)")
        if second & 0x80:
            raise self._fail("a masked frame from the server")
        length, size = second & 0x7F, {126: 4, 127: 10}.get(second & 0x7F, 2)
        if len(buffer) < size:
            return None
        if size > 2:
            length = int.from_bytes(buffer[2:size], "big")
            smallest = 126 if size == 4 else 1 << 16
            if length < smallest or length >= 1 << 63:
                raise self._fail(f"length {length} in the {8 * (size - 2)}-bit form")
        if opcode in CONTROL and length > 125:
            raise self._fail(f"control frame of {length} bytes")
        return opcode, length, size

    def _next(self) -> Frame | None:
        header = self._header()
        if header is None:
            return None
        opcode, length, start = header
        buffer = self._buffer
        if len(buffer) < start + length:
            return None
        payload = bytes(buffer[start : start + length])
        del buffer[: start + length]
        frame = Frame(opcode, payload)
        self._check_payload(frame)
        self.offset += start + length
        if opcode == CLOSE:
            self.closed = True
            if buffer:
                raise self._fail("bytes after the close frame")
        return frame

    def _check_payload(self, frame: Frame) -> None:
        payload = frame.payload
        if frame.opcode == TEXT:
            try:
                payload.decode()
            except UnicodeDecodeError as exc:
                raise self._fail(f"a text frame that is not UTF-8 ({exc})") from None
        elif frame.opcode == CLOSE and payload:
            if len(payload) < 2:
                raise self._fail("a close frame with a 1-byte payload")
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                raise self._fail("a close reason that is not UTF-8") from None


# --- a client that can misbehave -------------------------------------------------------


class RawClient:
    """A client on a raw socket, written by hand so that it can misbehave on purpose.

    What the server sends after the handshake goes through a
    :class:`ServerFrameParser`: :meth:`read_frame` never returns a frame that a
    conforming server could not have sent.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        """Bytes received and not yet parsed: the answer to the handshake, or a frame's start."""
        self.parser = ServerFrameParser()
        self._frames: deque[Frame] = deque()
        self.port = int(stream.socket.getsockname()[1])
        """The local port: how the server's log names this client."""

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    @classmethod
    async def handshake(cls, port: int, *headers: str, rcvbuf: int | None = None) -> RawClient:
        """Connect and complete the WebSocket opening handshake by hand (``headers``:
        extra whole lines for the request, as for :func:`upgrade_request`)."""
        client = await cls.open(port, rcvbuf=rcvbuf)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            request = upgrade_request("/", *headers, host=f"127.0.0.1:{port}", key=key)
            await client.stream.send_all(request)
            while b"\r\n\r\n" not in client.buffer:
                assert await client.fill(), f"closed in the handshake: {client.buffer!r}"
            head, _, rest = bytes(client.buffer).partition(b"\r\n\r\n")
            client.buffer = bytearray(rest)
            assert head.startswith(b"HTTP/1.1 101 "), head
            answered = [line.partition(b":") for line in head.split(b"\r\n")[1:]]
            assert (b"sec-websocket-accept", accept_key(key)) in [
                (name.strip().lower(), value.strip()) for name, _, value in answered
            ], head
        except BaseException:
            await client.aclose()
            raise
        return client

    async def fill(self) -> bool:
        """Read more into the buffer; False at the end of the connection (or a reset)."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return False
        self.buffer += data
        return bool(data)

    async def read_to_end(self) -> bytes:
        while await self.fill():
            pass
        return bytes(self.buffer)

    async def read_frame(self) -> Frame | None:
        """The next whole frame from the server; ``None`` once the connection is gone."""
        while not self._frames:
            if self.buffer:
                self._frames.extend(self.parser.feed(bytes(self.buffer)))
                self.buffer.clear()
            elif not await self.fill():
                return None
        return self._frames.popleft()

    async def read_until_gone(self) -> list[Frame]:
        frames = []
        while (frame := await self.read_frame()) is not None:
            frames.append(frame)
        return frames

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        await self.stream.send_all(masked_frame(opcode, payload))

    def reset(self) -> None:
        """Vanish: close with SO_LINGER 0, so that the server gets a TCP reset."""
        reset(self.stream)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def reset(stream: trio.SocketStream) -> None:
    """Drop the connection with a TCP RST, as a vanished peer does (SO_LINGER 0)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()
