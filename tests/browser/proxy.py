"""A TCP proxy between the browser and the server, run by Trio in a thread.

The browser tests drive Playwright's synchronous API from the main thread, so
the proxy lives in a thread of its own, and the test controls it through
:mod:`trio.from_thread`. It forwards every connection to ``upstream`` (which
the test may change between connections) and can

* :meth:`Proxy.reset` every connection it carries: each side is closed with
  ``SO_LINGER`` 0, so the browser sees a TCP reset from its server, not a close;
* :meth:`Proxy.hold` the bytes from the browser (a reconnection's handshake,
  a typed message) until :meth:`Proxy.release`, reporting when some arrived;
* :meth:`Proxy.inject` bytes towards the browser, between the server's (a
  message of a kind the server does not send yet).

It records the request line of every connection, so that a test can check
what the page asked for when it reconnected.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

TIMEOUT = 10.0
"""Seconds the proxy may take to start or stop."""


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream``. Use as a context manager."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        """The server's port; read by each new connection as it is accepted."""
        self.port = 0
        self.held = threading.Event()
        """Set once bytes from the browser arrived while held."""
        self._requests: list[str] = []
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._main: trio.CancelScope | None = None
        self._connections: set[trio.CancelScope] = set()
        self._to_browsers: dict[trio.SocketStream, trio.Lock] = {}
        self._flowing = trio.Event()
        self._flowing.set()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        if not self._started.wait(TIMEOUT):
            raise AssertionError("the proxy did not start in time")
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._main is not None:
            self._call(self._main.cancel)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the proxy did not stop in time"
        if self._failure is not None:
            raise self._failure

    @property
    def requests(self) -> list[str]:
        """The request line of every connection so far (``GET /?since=… HTTP/1.1``)."""
        return self._call(lambda: list(self._requests))

    def reset(self) -> None:
        """Reset every connection now open, on both sides."""
        self._call(lambda: [scope.cancel() for scope in self._connections])

    def hold(self) -> None:
        """Keep what the browser sends, from now on, until :meth:`release`."""
        self.held.clear()
        self._call(self._hold)

    def release(self) -> None:
        """Forward what was held, and everything after it."""
        self._call(self._flowing.set)

    def inject(self, data: bytes) -> None:
        """Send ``data`` to every browser connected, after what the server sent so far."""
        trio.from_thread.run(self._inject, data, trio_token=self._token)

    async def _inject(self, data: bytes) -> None:
        for browser, lock in list(self._to_browsers.items()):
            async with lock:
                await browser.send_all(data)

    def _hold(self) -> None:
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def _call(self, function: Callable[[], T]) -> T:
        return trio.from_thread.run_sync(function, trio_token=self._token)

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the test's thread
            self._failure = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._main:
            self._started.set()
            await trio.serve_listeners(self._forward, listeners)

    async def _forward(self, browser: trio.SocketStream) -> None:
        server: trio.SocketStream | None = None
        ended = False
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            self._to_browsers[browser] = trio.Lock()
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.upstream)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._pump, browser, server, pumps.cancel_scope, True)
                    pumps.start_soon(self._pump, server, browser, pumps.cancel_scope, False)
                ended = not pumps.cancel_scope.cancel_called
            except OSError:
                pass  # the server is not there: the browser gets a reset
            finally:
                self._connections.discard(scope)
                del self._to_browsers[browser]
                for stream in (browser, server):
                    if stream is not None:
                        _close(stream, reset=not ended)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        broken: trio.CancelScope,
        from_browser: bool,
    ) -> None:
        """Copy ``source`` to ``sink`` up to its end; cancel ``broken`` on an error."""
        first = from_browser
        try:
            while data := await source.receive_some():
                if first:
                    self._requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    first = False
                if from_browser:
                    if not self._flowing.is_set():
                        self.held.set()
                        await self._flowing.wait()
                    await sink.send_all(data)
                else:
                    async with self._to_browsers[sink]:
                        await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            broken.cancel()


def _close(stream: trio.SocketStream, *, reset: bool) -> None:
    """Close at once; with ``reset``, with a TCP reset (``SO_LINGER`` 0) instead of a FIN."""
    if reset:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()
