"""A broadcast line as WebSocket wire bytes, encoded once for every client.

A server's frames are not masked (RFC 6455 section 5.1) and this server
negotiates no extension such as permessage-deflate, so the bytes of a text
frame depend only on its payload: the same ``bytes`` object can be written to
every client. Encoding here, once per line, instead of once per line per client
in wsproto, is what lets fan-out cost a memory copy rather than a protocol
encoder call per delivery.

Pure functions, no I/O; tests check them byte for byte against wsproto.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_FIN_TEXT = 0x81  # FIN bit set, opcode 0x1 (text)
_FIN_BINARY = 0x82  # FIN bit set, opcode 0x2 (binary)
_SHORT_LIMIT = 126  # payloads below this length fit in the 7-bit length field
_MEDIUM_LIMIT = 1 << 16  # payloads below this use a 16-bit extended length


def _frame(first_byte: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < _SHORT_LIMIT:
        header = bytes((first_byte, size))
    elif size < _MEDIUM_LIMIT:
        header = struct.pack("!BBH", first_byte, 126, size)
    else:
        header = struct.pack("!BBQ", first_byte, 127, size)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame carrying ``payload`` (UTF-8)."""
    return _frame(_FIN_TEXT, payload)


def message_frame(message: str | bytes) -> bytes:
    """A whole message as one frame: text for ``str``, binary for ``bytes`` (an echo)."""
    if isinstance(message, str):
        return _frame(_FIN_TEXT, message.encode())
    return _frame(_FIN_BINARY, message)


def encode_lines(lines: Sequence[str]) -> list[bytes]:
    """Each line as one text frame, ready to be written to any client."""
    return [text_frame(line.encode()) for line in lines]
