"""A strict parser of what a WebSocket server may send, for tests that read raw bytes.

Sans-I/O: feed it bytes in any chunks, get whole frames back. It fails with
:class:`ProtocolViolation` on anything RFC 6455 (section 5) forbids a server to
send, and on what this server never sends (a fragmented message), so that a
frame written inside another frame cannot pass unnoticed: its header lands
where payload was expected, and the bytes after it are read as a header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
