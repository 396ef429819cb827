"""The message assembler, without sockets: wsproto's own parser feeds it real frames.

Hypothesis checks that for any messages, cut into any fragments (text cut
inside characters too, empty fragments included) and delivered in any
chunks, the assembler gives back each message whole, or refuses the first
that goes over the size limit (1009) or the fragment limit (1008) at the
frame where it does, and never holds more than the size limit meanwhile.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from trio_broadcast.protocol_errors import MessageAssembler, max_fragments

from .conftest import budget

MiB = 1024 * 1024


def test_the_fragment_bound_is_one_per_64_bytes_and_at_least_1024() -> None:
    assert max_fragments(1) == 1024
    assert max_fragments(1000) == 1024
    assert max_fragments(64 * 1024) == 1024
    assert max_fragments(64 * 1025) == 1025
    assert max_fragments(MiB) == 16384
    # The Autobahn run's limit; its case 9.3.1 sends 65,536 fragments.
    assert max_fragments(32 * MiB) == 524288


def test_a_message_in_one_event_comes_back_as_it_came() -> None:
    assembler = MessageAssembler(10)
    text, binary = TextMessage("0123456789"), BytesMessage(b"0123456789")
    assert assembler.feed(text) is text
    assert assembler.feed(binary) is binary


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    assembler = MessageAssembler(8)
    assert assembler.feed(TextMessage("😀😀")) == TextMessage("😀😀")  # 8 bytes
    refusal = assembler.feed(TextMessage("😀😀é"))  # 10 bytes, 3 characters
    assert refusal == CloseConnection(1009, "message over 8 bytes")
    assert assembler.feed(TextMessage("x")) is None  # refused: nothing more


def frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    """A client frame, masked with a random key."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + masked


@dataclass(frozen=True)
class Sent:
    message: str | bytes
    pieces: tuple[bytes, ...]


@st.composite
def sent_messages(draw: st.DrawFn) -> Sent:
    message: str | bytes = draw(st.one_of(st.text(max_size=30), st.binary(max_size=60)))
    data = message.encode() if isinstance(message, str) else message
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    bounds = [0, *cuts, len(data)]
    return Sent(message, tuple(data[a:b] for a, b in itertools.pairwise(bounds)))


def expected_outcome(sent: list[Sent], max_bytes: int, fragments: int) -> list[str | bytes | int]:
    """The messages given back, then the close code of a refusal, if any."""
    outcome: list[str | bytes | int] = []
    for one in sent:
        received = b""
        for k, piece in enumerate(one.pieces, start=1):
            received += piece
            # Text counts the characters decoded so far: a cut one waits for its end.
            size = (
                len(received.decode(errors="ignore").encode())
                if isinstance(one.message, str)
                else len(received)
            )
            if size > max_bytes:
                return [*outcome, 1009]
            if k == fragments and k < len(one.pieces):
                return [*outcome, 1008]
        outcome.append(one.message)
    return outcome


@budget(300)
@given(
    sent=st.lists(sent_messages(), min_size=1, max_size=3),
    max_bytes=st.integers(1, 64),
    fragments=st.integers(1, 8),
    chunk_cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_messages_come_back_whole_or_are_refused_within_the_limits(
    sent: list[Sent], max_bytes: int, fragments: int, chunk_cuts: list[int]
) -> None:
    wire = b"".join(
        frame(
            (0x1 if isinstance(one.message, str) else 0x2) if k == 0 else 0x0,
            piece,
            fin=k == len(one.pieces) - 1,
        )
        for one in sent
        for k, piece in enumerate(one.pieces)
    )
    server = Connection(ConnectionType.SERVER)
    assembler = MessageAssembler(max_bytes, fragments)
    outcome: list[str | bytes | bytearray | int] = []
    bounds = [0, *sorted(cut for cut in chunk_cuts if cut < len(wire)), len(wire)]
    for a, b in itertools.pairwise(bounds):
        server.receive_data(wire[a:b])
        for event in server.events():
            assert isinstance(event, (TextMessage, BytesMessage)), event
            given_back = assembler.feed(event)
            assert assembler.buffered <= max_bytes
            if isinstance(given_back, CloseConnection):
                outcome.append(given_back.code)
            elif given_back is not None:
                assert given_back.frame_finished
                assert given_back.message_finished
                outcome.append(given_back.data)
    assert outcome == expected_outcome(sent, max_bytes, fragments)
