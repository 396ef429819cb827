"""Listening sockets: opening them (TLS included), naming them, accepting on them.

:func:`open_listeners` turns the settings into listening sockets, or a
:class:`~trio_broadcast.errors.StartupError` that says in one line why it
cannot (the port is taken, the certificate does not match its key, ...);
:func:`url` names each one for the user.

:func:`accept_forever` is the accept loop, with a plan for running out of file
descriptors. Every connection costs the process one file descriptor, and ``ulimit -n`` caps
them. When none is left, ``accept()`` fails with ``EMFILE`` (``ENFILE`` when
the whole system is out) *without taking the connection off the listen queue*.
``trio.serve_listeners`` then logs a traceback and retries every 100 ms, so
the excess clients hang in the kernel's queue until they time out, and the log
fills with tracebacks.

This loop does what servers such as nginx and libuv do instead: it keeps one
descriptor in reserve (``/dev/null`` opened at start). Out of descriptors, it
releases the reserve, accepts the waiting connection with it, and takes the
reserve back. If the reserve cannot be taken back, the process is still at its
limit: the connection is refused on the spot with a ``503`` ("out of file
descriptors"; a TLS listener just closes it) and the reserve is retaken from
the descriptor that frees. If it can, a client left in the meantime and the
connection is served as usual. Either way no client waits for nothing, and new
clients are served again as soon as old ones leave.

After each connection it accepts, the loop also takes every other connection
already waiting in the listen queue, without yielding in between (up to
:data:`ACCEPT_BURST`). Trio's ``accept()`` yields to the scheduler after each
connection, so a busy server would otherwise take one connection per round of
its runnable tasks: in a reconnect storm of 5,000 clients, each round takes
long, the kernel's queue (``net.core.somaxconn``) overflows, and the dropped
clients retry seconds later, which is when they give up. This burst needs the
listening socket's descriptor without Trio in between, so the loop reads a
duplicate of it (``os.dup``), for plain listeners; a TLS listener accepts one
connection at a time (its handshake costs far more than the accept).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress

import trio

from .config import Config
from .errors import StartupError
from .handshake import http_response

log = logging.getLogger("trio_broadcast")

Handler = Callable[[trio.abc.Stream], Awaitable[None]]

NO_DESCRIPTOR = (errno.EMFILE, errno.ENFILE)
"""``accept()`` found no file descriptor free, for the process or the system."""
NO_MEMORY = (errno.ENOBUFS, errno.ENOMEM)
"""The kernel is short of memory for a new socket: wait a little and retry."""
RETRY_DELAY = 0.1
"""Seconds to wait before accepting again after a shortage the reserve cannot help."""
ACCEPT_BURST = 16
"""Connections accepted at most in one go (see the module's docstring). Enough to
keep the queue from overflowing (5,000 clients at once: no attempt failed), and
few enough that the connections of a reconnect storm are not all set up before
the ones they replace are gone: with 256, the server kept 9 to 23 % more memory
after a storm of 1,000 resuming clients; with 16, 7 %, as with none."""

REFUSAL = http_response(
    503,
    "the server is out of file descriptors; try again later\n",
    (("Retry-After", "1"),),
)


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context for ``config``'s certificate and key; ``None`` without them."""
    if config.certfile is None or config.keyfile is None:
        return None
    # Open each file first: load_cert_chain's errors do not say which one failed.
    for what, path in (("certificate", config.certfile), ("key", config.keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"cannot read the TLS {what} {path!r}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except ssl.SSLError as exc:
        raise StartupError(
            f"cannot use the TLS certificate {config.certfile!r} with the key "
            f"{config.keyfile!r}: {exc.reason or exc}"
        ) from None
    return context


async def open_listeners(config: Config) -> list[trio.abc.Listener[trio.abc.Stream]]:
    """One listener per address of ``config.host``, wrapped in TLS if configured.

    Raises :class:`StartupError` with the reason when the server cannot listen.
    """
    context = ssl_context(config)
    where = f"{config.host}:{config.port}"
    try:
        sockets = await trio.open_tcp_listeners(config.port, host=config.host)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve host {config.host!r}: {exc.strerror}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "address already in use (is another server running on that port?)"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "that address does not belong to this machine"
        else:
            why = exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {where}: {why}") from None
    if context is None:
        return list(sockets)
    return [trio.SSLListener(s, context, https_compatible=True) for s in sockets]


def url(listener: trio.abc.Listener[trio.abc.Stream]) -> str:
    """The ``ws://`` or ``wss://`` URL that reaches ``listener``."""
    tls = isinstance(listener, trio.SSLListener)
    scheme = "wss" if tls else "ws"
    host, port = _listening_socket(listener).getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}/"


class DescriptorReserve:
    """One open descriptor held back, to be spent on refusing a connection.

    Shared by every listener of a server; :meth:`close` releases it for good.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self.lock = trio.Lock()
        """Held while the reserve is spent, so that one listener at a time spends it."""
        self.take()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> bool:
        """Open the reserve descriptor if it is not held; whether it now is."""
        if self._fd is None:
            with suppress(OSError):
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    close = release


async def accept_forever(
    listener: trio.abc.Listener[trio.abc.Stream],
    handler: Handler,
    nursery: trio.Nursery,
    reserve: DescriptorReserve,
    on_refused: Callable[[], None],
) -> None:
    """Accept connections on ``listener`` and run ``handler`` for each in ``nursery``.

    Runs until cancelled. ``on_refused`` is called for every connection refused
    for want of a descriptor (to count and log it). Other errors from
    ``accept`` propagate, as in ``trio.serve_listeners``.
    """
    with _waiting_queue(listener) as waiting:
        while True:
            stream: trio.abc.Stream | None
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in NO_DESCRIPTOR and reserve.held:
                    stream = await _accept_at_the_limit(listener, reserve, on_refused)
                    if stream is None:
                        continue
                elif exc.errno in NO_DESCRIPTOR + NO_MEMORY:
                    # No reserve to spend (another listener is spending it, or it
                    # was lost), or no memory: the connection waits in the listen
                    # queue a moment. The kernel has no event for "a descriptor
                    # is free again", so this is the one place that retries on a timer.
                    await trio.sleep(RETRY_DELAY)
                    if not reserve.lock.locked():
                        reserve.take()
                    continue
                else:
                    raise
            nursery.start_soon(handler, stream)
            for stream in _accept_waiting(waiting):
                nursery.start_soon(handler, stream)


@contextmanager
def _waiting_queue(listener: trio.abc.Listener[trio.abc.Stream]) -> Iterator[socket.socket | None]:
    """A non-blocking duplicate of a plain listener's socket, to take its queue in a burst.

    ``None`` for a TLS listener, or when no descriptor is left for the duplicate.
    Closed on the way out; the listener stays open.
    """
    fd = -1
    if isinstance(listener, trio.SocketListener):
        with suppress(OSError):  # out of descriptors already: one connection at a time
            fd = os.dup(listener.socket.fileno())
    if fd < 0:
        yield None
        return
    with socket.socket(fileno=fd) as duplicate:
        duplicate.setblocking(False)
        yield duplicate


def _accept_waiting(waiting: socket.socket | None) -> list[trio.abc.Stream]:
    """The connections waiting in the listen queue now, up to :data:`ACCEPT_BURST`.

    Stops at the first error: an empty queue, or a shortage (no descriptor, no
    memory) that the next ``await listener.accept()`` deals with.
    """
    streams: list[trio.abc.Stream] = []
    if waiting is None:
        return streams
    while len(streams) < ACCEPT_BURST:
        try:
            connection, _ = waiting.accept()
        except OSError:  # BlockingIOError included: the queue is empty
            break
        # What trio.SocketListener.accept() makes of an accepted socket.
        streams.append(trio.SocketStream(trio.socket.from_stdlib_socket(connection)))
    return streams


async def _accept_at_the_limit(
    listener: trio.abc.Listener[trio.abc.Stream],
    reserve: DescriptorReserve,
    on_refused: Callable[[], None],
) -> trio.abc.Stream | None:
    """Accept one connection with the reserve's descriptor; ``None`` if refused.

    ``accept()`` fails with ``EMFILE`` whether or not a client is waiting, so
    this first waits until one is. Only then is the reserve released, and only
    for one bounded ``accept()``: while it is released, another listener's
    ``accept()`` may take the descriptor, and the reserve must not be left
    given up while waiting for a client that may never come.
    """
    await trio.lowlevel.wait_readable(_listening_socket(listener))
    async with reserve.lock:
        reserve.release()
        stream: trio.abc.Stream | None = None
        try:
            with trio.move_on_after(RETRY_DELAY):
                stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in NO_DESCRIPTOR + NO_MEMORY:
                raise
            # Another listener took the descriptor just released: try again later.
        finally:
            # A client may have left meanwhile: then there is room again.
            room = reserve.take()
        if stream is None:
            await trio.sleep(RETRY_DELAY)
            return None
        if room:
            return stream
        _refuse(stream)
        on_refused()
        # Normally retaken from the descriptor just freed. If something else
        # took it first, the accept loop retries after a pause.
        reserve.take()
        return None


def _listening_socket(listener: trio.abc.Listener[trio.abc.Stream]) -> trio.socket.SocketType:
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    if not isinstance(listener, trio.SocketListener):
        raise TypeError(f"cannot wait for connections on {listener!r}")
    return listener.socket


def _refuse(stream: trio.abc.Stream) -> None:
    """Say 503 and close, without waiting: the socket's buffers are empty."""
    plain = isinstance(stream, trio.SocketStream)
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(transport, trio.SocketStream):
        fd = transport.socket.fileno()
        with suppress(OSError):
            # Read what the client sent so far: closing with unread data would
            # reset the connection and the client might never see the answer.
            os.read(fd, 65536)
        if plain:
            with suppress(OSError):
                os.write(fd, REFUSAL)
        transport.socket.close()
