"""Bytes in, bounded and decoded lines out: the line splitter, without any I/O.

:class:`LineSplitter` is fed whatever chunks a reader happens to get and returns
the complete lines they contain. It is the sans-I/O core of the standard-input
reader (in the manner of h11 and wsproto): no file descriptors, no awaiting, so
every rule below is tested by feeding it bytes.

The rules:

* lines end at ``b"\\n"``; one ``b"\\r"`` before it is stripped; empty lines are kept;
* each line is decoded as UTF-8 with invalid bytes replaced by U+FFFD, exactly as
  ``raw.decode("utf-8", errors="replace")`` does;
* a line longer than ``max_line_size`` bytes is skipped and counted, and its bytes
  are discarded as they arrive, so the splitter never holds more than
  ``max_line_size + 1`` bytes between calls, plus the chunk being fed during one;
* the chunking never changes the result.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Split:
    """What one call to the splitter produced."""

    lines: list[str]
    """Complete lines, in input order."""
    too_long: int
    """Lines found to be over the limit during this call (each is counted once)."""


class LineSplitter:
    """Split a byte stream into lines, each at most ``max_line_size`` bytes."""

    def __init__(self, max_line_size: int) -> None:
        if max_line_size < 1:
            raise ValueError(f"max_line_size must be at least 1, not {max_line_size}")
        self._max = max_line_size
        self._partial = bytearray()
        # Inside a line already counted as too long: drop bytes up to the next b"\n".
        self._skipping = False

    @property
    def buffered(self) -> int:
        """Bytes held for a line that has not ended yet."""
        return len(self._partial)

    def feed(self, data: bytes) -> Split:
        """Take the next chunk of the stream; return the lines it completes."""
        lines: list[str] = []
        too_long = 0
        parts = data.split(b"\n")
        tail = parts.pop()  # the bytes after the last newline; may be b""
        for index, part in enumerate(parts):
            raw = part
            if index == 0:
                if self._skipping:
                    self._skipping = False
                    continue
                if self._partial:
                    raw = bytes(self._partial) + part
                    self._partial.clear()
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self._max:
                too_long += 1
            else:
                lines.append(raw.decode("utf-8", errors="replace"))
        if not self._skipping:
            self._partial += tail
            # One byte of slack: the line may still end with the b"\r" that is stripped.
            if len(self._partial) > self._max + 1:
                self._partial.clear()
                self._skipping = True
                too_long += 1
        return Split(lines, too_long)

    def end(self) -> Split:
        """The stream has ended: return its last line if it had no newline."""
        raw = bytes(self._partial)
        self._partial.clear()
        skipping, self._skipping = self._skipping, False
        if skipping or not raw:
            return Split([], 0)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > self._max:
            return Split([], 1)
        return Split([raw.decode("utf-8", errors="replace")], 0)
