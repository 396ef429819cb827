"""A line as a stream entry, and where a reader is in the stream: pure, no I/O.

Tested without Redis (``tests/test_redis_pure.py``): :class:`EntryId` (stream
ID arithmetic), :func:`encode_line`, :func:`decode_entry` and their raw forms
(a line and its entry), and :class:`Cursor` (where a reader is, and how many entries were
trimmed away before it read them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "trio-broadcast:"
"""A channel's stream lives at ``trio-broadcast:<channel>``."""
FIELD = b"line"
"""The one field of an entry: the line, UTF-8 encoded."""


def stream_key(channel: str) -> str:
    """The Redis key of the stream for ``channel``."""
    return KEY_PREFIX + channel


@dataclass(frozen=True, order=True, slots=True)
class EntryId:
    """A stream entry ID, ``<milliseconds>-<sequence>``, ordered as Redis orders them."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, raw: str | bytes) -> EntryId:
        text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else raw
        ms, dash, seq = text.partition("-")
        if not (dash and _digits(ms) and _digits(seq)):
            raise ValueError(f"not a stream entry ID: {text!r}")
        return cls(int(ms), int(seq))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    def before(self) -> EntryId:
        """The greatest ID below this one: no entry can come between the two."""
        if self.seq:
            return EntryId(self.ms, self.seq - 1)
        if self.ms:
            return EntryId(self.ms - 1, SEQ_MAX)
        raise ValueError("no entry ID comes before 0-0")


SEQ_MAX = 2**64 - 1
"""The largest sequence number of an entry ID (Redis counts it in 64 bits)."""


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


ORIGIN = EntryId(0, 0)
"""Before every entry: reading after it reads the whole stream."""


def encode_line(line: str) -> dict[bytes, bytes]:
    """The fields of the entry that carries ``line``."""
    return {FIELD: encode_value(line)}


def encode_value(line: str) -> bytes:
    """The value of :data:`FIELD` in the entry that carries ``line``."""
    return line.encode("utf-8", errors="surrogateescape")


def decode_entry(fields: Mapping[Any, str | bytes]) -> str | None:
    """The line an entry carries, or ``None`` if it is not one of ours.

    Field names and values are bytes, or text when a client decodes replies.

    Bytes that are not UTF-8 (an entry written by another program) become
    U+FFFD, as on standard input.
    """
    for name, value in fields.items():
        raw_name = name.encode() if isinstance(name, str) else name
        if raw_name == FIELD:
            raw = value.encode() if isinstance(value, str) else value
            return raw.decode("utf-8", errors="replace")
    return None


def decode_fields(fields: Sequence[bytes]) -> str | None:
    """:func:`decode_entry` for the fields as Redis sends them: ``[name, value, …]``."""
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == FIELD:
            return fields[index + 1].decode("utf-8", errors="replace")
    return None


@dataclass(slots=True)
class Entries:
    """What one ``XREAD`` returned, in stream order, ready to publish."""

    lines: list[str]
    """The lines of the entries that are ours (:func:`decode_fields`)."""
    ids: list[str]
    """Their entry IDs, as Redis wrote them."""
    last: EntryId | None
    """The last entry read, ours or not; ``None`` if none was."""
    count: int
    """Entries read, ours or not."""


def decode_entries(entries: Sequence[Sequence[Any]]) -> Entries:
    """The entries of an ``XREAD`` reply (``[[id, [name, value, …]], …]``, raw bytes).

    Only the last ID is parsed: a reader needs no more to move its cursor,
    and the IDs it publishes are kept as the text Redis sent, which is what
    :class:`EntryId` prints (Redis writes every ID as ``<ms>-<seq>`` in
    decimal). Parsing each one cost 4 of the 6 µs an entry took to read
    (measured for issue 15), for up to 1,000 entries a read. Our own entries
    (one field, :data:`FIELD`) are decoded inline, without the general
    :func:`decode_fields`: 0.7-0.9 → 0.28 µs an entry
    (``python bench/redis_cost.py --read-cost``, before and after).
    """
    lines: list[str] = []
    ids: list[str] = []
    for identifier, fields in entries:
        if len(fields) == 2 and fields[0] == FIELD:
            lines.append(fields[1].decode("utf-8", errors="replace"))
        else:
            line = decode_fields(fields)
            if line is None:
                continue
            lines.append(line)
        ids.append(identifier.decode("ascii"))
    last = EntryId.parse(entries[-1][0]) if entries else None
    return Entries(lines, ids, last, len(entries))


@dataclass(frozen=True, slots=True)
class Gap:
    """What :meth:`Cursor.resync` found."""

    skipped: int
    """Entries trimmed from the stream before this reader read them."""
    reset: bool
    """The stream is younger than the reader's position: it was deleted and started
    again (a Redis restart without persistence, say)."""


@dataclass(slots=True)
class Cursor:
    """Where a reader is: the last entry it delivered, and that entry's number.

    Entries are numbered from 1 in the order they were added, which is what
    Redis counts in ``XINFO STREAM``'s ``entries-added``. Trimming with
    ``MAXLEN`` removes the oldest entries, so ``entries-added - length`` entries
    are gone, the first ones; if that is more than :attr:`number`, some were
    trimmed before this reader got to them.
    """

    last: EntryId = ORIGIN
    number: int = 0

    def advance(self, entry: EntryId, count: int = 1) -> None:
        """The ``count`` entries after :attr:`last`, up to ``entry``, have been delivered."""
        self.last = entry
        self.number += count

    def resync(self, entries_added: int, length: int) -> Gap:
        """Compare with the stream's counters (0, 0 when it does not exist); move past a gap."""
        trimmed = entries_added - length
        if entries_added < self.number:
            self.number = trimmed
            return Gap(trimmed, reset=True)
        skipped = max(0, trimmed - self.number)
        self.number += skipped
        return Gap(skipped, reset=False)
