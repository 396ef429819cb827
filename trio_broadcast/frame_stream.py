"""The one writer of a connection: every byte to the client goes through here, frame by frame.

A WebSocket connection has several tasks with something to send: the
publisher (broadcast frames, written without waking anyone), the client's own
task (queued frames, echoes), and trio-websocket's tasks (the handshake
response, pongs, pings, close frames). A frame is a header that announces a
length, then that many bytes; if another writer's bytes land before the last
of them, the client parses them as payload and the rest of the stream as
garbage. :class:`FrameStream` is the stream handed to trio-websocket and the
only object that writes to the socket, and it keeps one rule:

    **Once the first byte of a frame is written, every byte of that frame is
    written before any other byte.**

Everything else follows from who may go next, once the frame in progress
(if any) is finished:

1. control frames and the handshake response (what trio-websocket sends
   through :meth:`send_all`), in the order they came: a pong or a close
   reply waits for one frame at most, never for a backlog of broadcast lines;
2. data frames (:meth:`offer` and :meth:`write`), in the order they came;
3. nothing after a close frame: data still waiting is dropped, and later
   writes fail with :class:`trio.ClosedResourceError`.

That order is decided by :class:`~trio_broadcast.write_order.WriteOrder`,
a pure queue tested without sockets; this module does the writing and the
waiting.

Bytes handed over belong to the stream: a writer that is cancelled while it
waits (for the socket, or for another writer) leaves them queued, and
whichever task writes next finishes them first. So cancelling a writer never
cuts a frame, and no write needs a shield on a plain socket. A write that
cannot finish within ``send_timeout`` breaks the stream
(:class:`WriteTimeout`): it may end mid-frame, so nothing more may be sent on
it, not even a close frame, and the connection must be dropped.

On a plain TCP socket, writes never block: a batch handed to an idle
connection goes out with one ``os.write`` and no bookkeeping (the publisher's
:meth:`offer`: one system call and no task switch per client); whatever waits
goes out with one ``os.writev`` of the batches, each joined once, and a wait
for the socket to become writable in between, so a control frame can slip in
at the very next frame boundary. Over TLS, the same order is kept with
``send_all`` of whole frames, about :data:`TLS_WRITE_SIZE` bytes at a time, shielded
from cancellation (a cancelled TLS write breaks the TLS stream) and bounded by
the same deadline, which :meth:`finish_by` can shorten when the connection is
being closed.

The receiving side reads the transport: the request head was read before the
hand-over, and trio-websocket gets it parsed
(:mod:`trio_broadcast.request_handoff`), not as bytes to read again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import trio

from .error_cycles import forget_cause_tracebacks, suppress_broken
from .write_order import WriteOrder

TLS_WRITE_SIZE = 64 * 1024
"""Bytes of whole frames joined for one TLS ``send_all``: at most this, or one frame."""


LINGER_SECONDS = 1.0
"""How long a closing connection reads what the client still sends, at most."""
LINGER_BYTES = 16 * 1024 * 1024
"""How much of it, at most, after a close frame: the rest of a refused message,
which a client may send whole before it reads again (a second at loopback speed)."""


async def linger(stream: trio.abc.Stream, max_bytes: int) -> None:
    """Half-close ``stream``, then read and discard what the peer still sends, bounded.

    A TCP socket closed with received bytes still unread sends a reset
    instead of a close, and a peer that gets the reset may lose what was sent
    just before it: an HTTP answer, a close frame. So, as RFC 9112 9.6 asks,
    close in two steps: the peer reads what was sent, then the end of the
    stream; meanwhile read what it still sends until it closes, at most
    ``max_bytes`` for at most :data:`LINGER_SECONDS`. The caller closes the
    stream afterwards. (TLS has no half-close: then only the reading.)
    """
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    left = max_bytes
    with trio.move_on_after(LINGER_SECONDS):
        while left > 0:
            data = await stream.receive_some(min(left, 65536))
            if not data:
                return
            left -= len(data)


class WriteTimeout(trio.BrokenResourceError):
    """A write did not finish within ``send_timeout``; the stream may end mid-frame."""


class FrameStream(trio.abc.Stream):
    """A connection's transport, as trio-websocket sees it, and its only writer."""

    __slots__ = (
        "_closed",
        "_fd",
        "_finish_by",
        "_order",
        "_progress",
        "_send_timeout",
        "_tls_write",
        "_writing",
        "broken",
        "stuck",
        "transport",
    )

    def __init__(self, transport: trio.abc.Stream, *, send_timeout: float) -> None:
        self.transport = transport
        # The socket's number, on a plain TCP socket (-1 over TLS). Kept, not asked
        # for each time: the transport is closed only through this object
        # (close, abort), which first marks it closed, so the number is never
        # written to once it may belong to another socket.
        self._fd = transport.socket.fileno() if isinstance(transport, trio.SocketStream) else -1
        self._send_timeout = send_timeout
        self._order = WriteOrder()
        self._writing = False
        """A task is in the write loop; the others wait in :attr:`_progress`."""
        self._progress = trio.lowlevel.ParkingLot()
        self._closed = False
        self.broken = False
        """A write did not finish (the connection broke, or :attr:`stuck`): the
        peer may have part of a frame, so nothing more may be written; the
        connection must be dropped."""
        self.stuck = False
        """A write did not finish within ``send_timeout``: the peer stopped reading."""
        self._finish_by = math.inf
        self._tls_write: trio.CancelScope | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The transport's own ``receive_some()``: receiving is not the writer's business.

        With one addition: when the connection breaks (a reset, most often),
        the error lets go of its causes' tracebacks before it goes on to
        trio-websocket's reader, which drops it: from Python 3.12 they hold a
        reference cycle that reaches the reader and the whole connection
        (:mod:`~trio_broadcast.error_cycles`).
        """
        try:
            return await self.transport.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            forget_cause_tracebacks(exc)
            raise

    def offer(self, frames: Sequence[bytes]) -> bool | None:
        """The fast path: if the stream is idle, write ``frames`` now, with one ``write``.

        Never yields and never raises. Returns ``None``, having taken nothing,
        unless the transport is a plain socket, nothing is waiting or being
        written, and the connection is usable: the caller keeps the frames and
        uses :meth:`write` later. Otherwise the frames are the stream's:
        ``True``, all written; ``False``, the socket took only part of them and
        the rest is pending, to be finished by the next write (of anyone)
        before anything else: call :meth:`write` soon, with nothing more if
        need be. Nothing is counted when all is written at once: the counts
        are for writers that wait.
        """
        order = self._order
        if (
            self._writing
            or self._fd < 0
            or order.data_in != order.data_out  # anything pending
            or order.control_in != order.control_out
            or self.broken
            or self._closed
            or order.closing
        ):
            return None
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self.broken = True  # the next write says so
            return None
        if written == len(data):
            return True
        self._order.add_data(frames, data, written)
        return False

    async def write(self, frames: Sequence[bytes] = ()) -> None:
        """Write data frames after everything handed over before them.

        Returns once they are written: at once, without yielding, when the
        socket takes them. With no frames, finishes the data that is pending
        (what :meth:`offer` left). Raises :class:`trio.ClosedResourceError`
        once a close frame was handed over (its frames will never be written)
        or the stream closed, :class:`WriteTimeout`
        if they are not written within ``send_timeout``, and
        :class:`trio.BrokenResourceError` if the connection broke. Cancelling
        it leaves the frames to be finished by the next writer.
        """
        self._raise_if_unusable(data=True)
        if frames:
            taken = self.offer(frames)
            if taken is True:
                return
            last = self._order.data_in if taken is False else self._order.add_data(frames)
        else:
            last = self._order.data_in
        await self._write_until(lambda: self._order.data_out >= last, data=True)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """trio-websocket's writes: one control frame, or the handshake response, per call.

        They go before any data frame still waiting (after the frame in
        progress). A close frame is the last thing written: data frames still
        waiting are dropped, and their writers get
        :class:`trio.ClosedResourceError`. Raises like :meth:`write`.
        """
        self._raise_if_unusable(data=True)
        last = self._order.add_control(bytes(data))
        if not self._writing and self._fd >= 0:
            # No one is writing: one writev now, as the write loop would, but
            # without its timer; done once the socket takes it all (the 101, a pong).
            self._write_nowait()
            if self._order.control_out >= last:
                return
        await self._write_until(lambda: self._order.control_out >= last, data=False)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    def finish_by(self, deadline: float) -> float:
        """Writes from now on, including a TLS write in flight, must end by ``deadline``.

        Used when the connection is being closed: the close frame waits behind
        the frame in progress, and both must fit in the time closing has.
        Returns the deadline in force (the earliest one given). On a plain
        socket there is nothing in flight to shorten: a waiting writer can
        simply be cancelled.
        """
        self._finish_by = min(self._finish_by, deadline)
        if self._tls_write is not None:
            self._tls_write.deadline = min(self._tls_write.deadline, self._finish_by)
        return self._finish_by

    async def aclose(self) -> None:
        """trio-websocket's close: nothing more is written, and the peer gets the end of
        the stream; the socket itself stays open for its owner to :meth:`close`.

        Closing a socket at once, with bytes from the client still unread, sends
        a reset, and a client that is still sending (the rest of a message
        refused with 1009: many clients finish sending before they read again)
        could lose the close frame with it. The owner, once everything that
        reads is gone, lets it drain first (:meth:`close`).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._progress.unpark_all()
        if not self.broken and isinstance(self.transport, trio.abc.HalfCloseableStream):
            with suppress_broken():
                await self.transport.send_eof()

    async def close(self) -> None:
        """The owner's close, once nothing else reads: after a close frame was sent,
        read and discard what the client still sends (:func:`linger`, bounded),
        then close the socket."""
        self._closed = True
        try:
            if self._order.closing and not self.broken:
                with suppress_broken():
                    await linger(self.transport, LINGER_BYTES)
        finally:
            await trio.aclose_forcefully(self.transport)

    async def abort(self) -> None:
        """Drop the connection now: no close frame, no waiting for the peer."""
        self._closed = self.broken = True
        self._progress.unpark_all()
        await trio.aclose_forcefully(self.transport)

    def _unusable(self, *, data: bool) -> str | None:
        """Why nothing (``data``: no data frame) may be written now, or ``None``."""
        if self.stuck:
            return "a write did not finish in time: the stream may end mid-frame"
        if self.broken:
            return "the connection broke"
        if self._closed:
            return "the stream is closed"
        if data and self._order.closing:
            return "a close frame was sent: nothing may follow it"
        return None

    def _raise_if_unusable(self, *, data: bool) -> None:
        why = self._unusable(data=data)
        if why is not None:
            error = trio.BrokenResourceError if self.broken else trio.ClosedResourceError
            raise error(why)

    async def _write_until(self, done: Callable[[], bool], *, data: bool) -> None:
        """Write, or wait for the task that is writing, until ``done()``."""
        deadline = min(trio.current_time() + self._send_timeout, self._finish_by)
        with trio.move_on_at(deadline) as timer:
            while not done():
                self._raise_if_unusable(data=data)
                if self._writing:
                    await self._progress.park()
                    continue
                self._writing = True
                try:
                    await self._write_while(done, deadline, data=data)
                finally:
                    self._writing = False
                    self._progress.unpark_all()  # one of them writes next
        if timer.cancelled_caught:
            self.broken = self.stuck = True
            self._progress.unpark_all()
            raise WriteTimeout(f"a write did not finish within {self._send_timeout:g} s")

    async def _write_while(self, done: Callable[[], bool], deadline: float, *, data: bool) -> None:
        while not done():
            # Another task may have broken or closed the stream, or handed over a
            # close frame, after which this writer's data will never go out.
            self._raise_if_unusable(data=data)
            if self._fd < 0:
                await trio.lowlevel.checkpoint_if_cancelled()  # nothing is cut: see _send_tls
                progress = await self._send_tls(deadline)
            else:
                progress = self._write_nowait()
                if not progress:
                    await trio.lowlevel.wait_writable(self._fd)
            if progress and len(self._progress):
                self._progress.unpark_all()  # those whose frames are out may go on

    def _next_frames(self, max_bytes: int | None = None) -> tuple[list[bytes | memoryview], int]:
        frames, control = self._order.next_frames(max_bytes=max_bytes)
        if not frames:  # a waiting writer's frames are all behind a close frame
            raise trio.ClosedResourceError("a close frame was sent: nothing may follow it")
        return frames, control

    def _write_nowait(self) -> bool:
        """One non-blocking ``writev``; whether it wrote anything."""
        assert self._fd >= 0
        if self._closed:  # the number may already belong to another socket
            raise trio.ClosedResourceError("the stream is closed")
        frames, control = self._next_frames()
        try:
            written = os.writev(self._fd, frames)
        except BlockingIOError:
            return False
        except OSError as exc:
            self.broken = True
            raise trio.BrokenResourceError(f"the connection broke: {exc}") from None
        self._order.consume(written, control)
        return written > 0

    async def _send_tls(self, deadline: float) -> bool:
        """One ``send_all`` of whole frames, at most about :data:`TLS_WRITE_SIZE` bytes.

        Shielded: a TLS stream whose ``send_all`` is cancelled is broken, and
        this one would end mid-frame. Bounded by ``deadline`` instead, which
        :meth:`finish_by` can bring forward. Cut at a frame boundary, so that
        a control frame waits for at most that much, and a cancelled writer
        stops between two writes without leaving a frame unfinished.
        """
        frames, control = self._next_frames(max_bytes=TLS_WRITE_SIZE)
        chunk = b"".join(frames)
        with trio.CancelScope(shield=True, deadline=min(deadline, self._finish_by)) as scope:
            self._tls_write = scope
            try:
                await self.transport.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.broken = True
                forget_cause_tracebacks(exc)
                raise
            finally:
                self._tls_write = None
        if scope.cancelled_caught:
            self.broken = self.stuck = True
            raise WriteTimeout(f"a TLS write did not finish within {self._send_timeout:g} s")
        self._order.consume(len(chunk), control)
        return True
