"""The one-writer rule, as a state machine: whatever the writers do and the socket takes,
the bytes parse back into exactly the frames handed over, each whole, in order.

:class:`WriteOrder` is driven the way :class:`FrameStream` drives it: writers
hand over frames (the publisher's batches, queued batches and echoes as data;
pings, pongs and a close as control), and a transport takes a random number of
bytes of what :meth:`WriteOrder.next_frames` offers, zero included. A strict
parser reads the bytes as a client would.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trio_broadcast.frames import encode_lines, message_frame
from trio_broadcast.write_order import IOV_MAX, WriteOrder

from .conftest import budget
from .wire import CLOSE, PING, PONG, Frame, ServerFrameParser


def control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


class OneWriter(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.order = WriteOrder()
        self.parser = ServerFrameParser()
        self.received: list[Frame] = []
        self.data_sent: list[Frame] = []
        self.control_sent: list[Frame] = []
        self.n = 0
        self.control_due: list[tuple[Frame, int, bool]] = []
        """Control frames not yet received: the frame, data frames received and
        whether a frame was partly written, when it was handed over."""
        self.data_received = 0
        self.batch_ends: list[int] = []
        """For each batch of data frames handed over, the number of data frames up
        to its end: a batch counts as written once all its frames are."""

    def _name(self, writer: str) -> str:
        self.n += 1
        return f"{writer} {self.n}"

    @precondition(lambda self: not self.order.closing)
    @rule(writer=st.sampled_from(["publisher", "queued"]), lines=st.integers(1, 5))
    def data(self, writer: str, lines: int) -> None:
        texts = [self._name(writer) + " " + "x" * (self.n * 37 % 300) for _ in range(lines)]
        frames = encode_lines(texts)
        self.order.add_data(frames)
        self.data_sent.extend(Frame(0x1, text.encode()) for text in texts)
        self.batch_ends.append(len(self.data_sent))

    @precondition(lambda self: not self.order.closing)
    @rule(binary=st.booleans())
    def echo(self, binary: bool) -> None:
        name = self._name("echo")
        message: str | bytes = name.encode() if binary else name
        self.order.add_data([message_frame(message)])
        payload = message if isinstance(message, bytes) else message.encode()
        self.data_sent.append(Frame(0x2 if binary else 0x1, payload))
        self.batch_ends.append(len(self.data_sent))

    @precondition(lambda self: not self.order.closing)
    @rule(opcode=st.sampled_from([PING, PONG]))
    def control(self, opcode: int) -> None:
        self._control(Frame(opcode, self._name("control").encode()))

    @precondition(lambda self: not self.order.closing)
    @rule(code=st.sampled_from([1000, 1001, 1008]))
    def close(self, code: int) -> None:
        self._control(Frame(CLOSE, struct.pack("!H", code) + b"bye"))

    def _control(self, frame: Frame) -> None:
        self.order.add_control(control_frame(frame.opcode, frame.payload))
        self.control_sent.append(frame)
        partial = self.order.in_progress
        self.control_due.append((frame, self.data_received, partial))

    @rule(share=st.floats(0, 1), limit=st.sampled_from([IOV_MAX, 1, 2, 3]))
    def transport_takes(self, share: float, limit: int) -> None:
        frames, control = self.order.next_frames(limit)
        offered = b"".join(frames)
        taken = int(len(offered) * share)
        before = len(self.received)
        self.received.extend(self.parser.feed(offered[:taken]))
        self.order.consume(taken, control)
        self._check_control_was_not_held_back(self.received[before:])

    @rule(
        share=st.floats(0, 1),
        max_bytes=st.sampled_from([None, 1, 100, 1000]),
        meanwhile=st.sampled_from(["ping", "data", "close"]),
    )
    def transport_takes_while_others_hand_over(
        self, share: float, max_bytes: int | None, meanwhile: str
    ) -> None:
        """A TLS write in flight: frames handed over meanwhile are not part of it."""
        frames, control = self.order.next_frames(max_bytes=max_bytes)
        if max_bytes is not None and control == 0 and len(frames) > 1:
            assert sum(map(len, frames)) <= max_bytes
        due = len(self.control_due)
        if not self.order.closing:
            if meanwhile == "ping":
                self.control(PING)
            elif meanwhile == "data":
                self.data("queued", 2)
            else:
                self.close(1001)
        offered = b"".join(frames)
        taken = int(len(offered) * share)
        before = len(self.received)
        self.received.extend(self.parser.feed(offered[:taken]))
        self.order.consume(taken, control)
        meanwhile_frames = [entry[0] for entry in self.control_due[due:]]
        self._check_control_was_not_held_back(self.received[before:])
        self.control_due = [
            (frame, self.data_received, self.order.in_progress)
            if frame in meanwhile_frames
            else (frame, data_before, partial)
            for frame, data_before, partial in self.control_due
        ]

    @precondition(lambda self: not self.order.pending and not self.order.closing)
    @rule(lines=st.integers(1, 4), share=st.floats(0, 1))
    def publisher_writes_at_once(self, lines: int, share: float) -> None:
        """The fast path: an idle connection's socket took part of a batch at once."""
        texts = [self._name("fast") + " " + "f" * (self.n * 53 % 400) for _ in range(lines)]
        frames = encode_lines(texts)
        data = b"".join(frames)
        written = int(len(data) * share)
        new = self.parser.feed(data[:written])
        self.received.extend(new)
        self._check_control_was_not_held_back(new)
        self.data_sent.extend(Frame(0x1, text.encode()) for text in texts)
        if written < len(data):  # the rest is the order's, counted as a batch
            self.order.add_data(frames, data, written)
            self.batch_ends.append(len(self.data_sent))

    def _check_control_was_not_held_back(self, new: list[Frame]) -> None:
        """A control frame goes out right after the frame in progress when it came.

        So between its hand-over and its arrival, at most one data frame is
        completed, and only if a frame was partly written at hand-over.
        """
        for frame in new:
            if frame.opcode in (0x1, 0x2):
                self.data_received += 1
            elif self.control_due and frame == self.control_due[0][0]:
                _, data_before, partial = self.control_due.pop(0)
                assert self.data_received - data_before <= int(partial), frame

    @invariant()
    def frames_are_whole_and_in_order(self) -> None:
        data = [f for f in self.received if f.opcode in (0x1, 0x2)]
        control = [f for f in self.received if f.opcode not in (0x1, 0x2)]
        assert data == self.data_sent[: len(data)]
        assert control == self.control_sent[: len(control)]
        assert self.order.data_out == sum(end <= len(data) for end in self.batch_ends)
        assert self.order.control_out == len(control)

    def teardown(self) -> None:
        while True:
            frames, control = self.order.next_frames()
            if not frames:
                break
            offered = b"".join(frames)
            self.received.extend(self.parser.feed(offered))
            self.order.consume(len(offered), control)
        self.frames_are_whole_and_in_order()
        assert self.parser.incomplete == 0
        assert [f for f in self.received if f.opcode not in (0x1, 0x2)] == self.control_sent
        if self.order.closing:
            assert self.received[-1].opcode == CLOSE  # and nothing after it
        else:
            assert [f for f in self.received if f.opcode in (0x1, 0x2)] == self.data_sent


TestOneWriter = OneWriter.TestCase
TestOneWriter.settings = budget(300)


def test_more_written_than_offered_is_a_bug() -> None:
    order = WriteOrder()
    order.add_data(encode_lines(["a"]))
    frames, control = order.next_frames()
    with pytest.raises(ValueError, match="more were written"):
        order.consume(len(b"".join(frames)) + 1, control)
